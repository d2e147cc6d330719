"""Checkpoint writes coalesced by CHECKPOINT_INTERVAL: fewer commits than batches with a fast
engine, the newest state written whenever a run stops, and a kill -9 re-sending at most the
batches of one interval. Real SQLite files, the fake engine on loopback, real gateway processes."""
import sqlite3
import time

from app.jobs.execute import CheckpointWriter
from app.pipeline.checkpoint import partial_lines
from tests.manifest_factory import flavor, manifest
from tests.processes import FakeEngineProcess, Gateway, wait_until

SERVICES = {"roll": manifest(name="roll", flavors=[flavor("f", maxNewTurns=3)]),
            "par": manifest(name="par", fields=1, flavors=[flavor("f", maxNewTurns=3)]),
            # fields 1 one batch at a time: its writes come at known batches
            "one": manifest(name="one", fields=1, flavors=[flavor("f", maxNewTurns=3, maxConcurrentRequests=1)])}
TEXT = "\n".join(f"Orateur {i % 3} : intervention {i}" for i in range(30))     # 10 batches of 3 turns
EXPECTED = [f"intervention {i}" for i in range(30)]
NEVER = 3600.0          # an interval no test run reaches: only the writes made when a run stops remain


def said(lines):
    return [line.split(" : ", 1)[1] for line in lines]


def parts_of(db_path, job_id):
    """The job_parts rows of a job, read from the SQLite file: one per checkpoint written (each
    appends what it adds), as (seq, number of items)."""
    import json
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT seq, data FROM job_parts WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
    return [(seq, len(json.loads(data))) for seq, data in rows]


def drain(runner, store, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        job = store.get(job_id)
        if job.status.finished:
            return job
        time.sleep(0.02)
    raise AssertionError(store.get(job_id).status)


def calls(fake_engine):
    return len(fake_engine.chat_requests())


def wait_for_calls(fake_engine, count, timeout=20):
    wait_until(lambda: calls(fake_engine) >= count, timeout, what=f"{count} engine calls")


def test_a_fast_engine_gets_fewer_checkpoint_writes_than_batches_and_the_last_is_whole(fake_engine, make_runner):
    every = make_runner(SERVICES, api_base=fake_engine.base_url, engine_retries=0, checkpoint_interval=0)
    each_batch = drain(every, every.store, every.store.create_job(service="roll", flavor="f", input_text=TEXT))
    # Interval 0 (the behaviour before coalescing): one write, so one appended part, per batch.
    assert len(parts_of(make_runner.db_path, each_batch.id)) == 10

    throttled = make_runner.another(every, checkpoint_interval=NEVER)
    for service in ("roll", "par"):            # the summary so far (a list), the finished batches (a dict)
        job = drain(throttled, throttled.store, throttled.store.create_job(service=service, flavor="f",
                                                                           input_text=TEXT))
        assert job.status == "complete"
        assert said(job.result.splitlines()) == EXPECTED
        # Only the write made when the run ended; it holds every line, in order.
        assert len(parts_of(make_runner.db_path, job.id)) == 1
        assert said(partial_lines(job.checkpoint)) == EXPECTED


def test_a_write_after_skipped_ones_appends_everything_since_the_last_written(fake_engine, make_runner):
    """The clock of the job's writer counts engine calls (one per batch): with an interval of 3 a
    checkpoint is written after batches 3, 6 and 9, and when the run ends (10). Each write must
    append the lines of every batch since the last *written* one: the parts start at 0, 9, 18
    and 27 lines. (Appending only since the last state handed over would leave holes the store
    has to mend by rewriting the whole checkpoint: one part.)"""
    runner = make_runner(SERVICES, api_base=fake_engine.base_url, engine_retries=0)
    runner.executor.writer = lambda job: CheckpointWriter(runner.store, job, 3, clock=lambda: calls(fake_engine))
    job = drain(runner, runner.store, runner.store.create_job(service="roll", flavor="f", input_text=TEXT))
    assert job.status == "complete" and said(job.result.splitlines()) == EXPECTED
    assert parts_of(make_runner.db_path, job.id) == [(0, 9), (9, 9), (18, 9), (27, 3)]
    assert said(partial_lines(job.checkpoint)) == EXPECTED

    # fields 1: the finished batches by their first turn (a dict), written after the same batches.
    start = calls(fake_engine)
    runner.executor.writer = lambda job: CheckpointWriter(runner.store, job, 3,
                                                          clock=lambda: calls(fake_engine) - start)
    job = drain(runner, runner.store, runner.store.create_job(service="one", flavor="f", input_text=TEXT))
    assert job.status == "complete" and said(partial_lines(job.checkpoint)) == EXPECTED
    assert parts_of(make_runner.db_path, job.id) == [(0, 3), (3, 3), (6, 3), (9, 1)]


def test_a_shutdown_writes_the_waiting_checkpoint_so_the_resumed_job_resends_no_finished_batch(fake_engine,
                                                                                             make_runner):
    runner = make_runner(SERVICES, api_base=fake_engine.base_url, engine_retries=0, checkpoint_interval=NEVER)
    fake_engine.delay = 0.05
    job_id = runner.store.create_job(service="roll", flavor="f", input_text=TEXT)
    runner.tick()
    wait_for_calls(fake_engine, 4)
    answered = calls(fake_engine) - 1               # the last one may still be in flight
    runner.shutdown(timeout=5)
    job = runner.store.get(job_id)
    assert job.status == "queued"
    # Nothing was written while it ran (the interval is never reached): this is the shutdown's write.
    done = job.checkpoint["done"]
    assert done >= 3 * answered and said(partial_lines(job.checkpoint)) == EXPECTED[:done]
    before = calls(fake_engine)
    fresh = make_runner.another(runner)
    resumed = drain(fresh, fresh.store, job_id)
    assert resumed.status == "complete" and said(resumed.result.splitlines()) == EXPECTED
    assert calls(fake_engine) - before == (30 - done) // 3          # only the batches not finished


def test_a_cancel_writes_the_waiting_checkpoint(fake_engine, make_runner):
    runner = make_runner(SERVICES, api_base=fake_engine.base_url, engine_retries=0, checkpoint_interval=NEVER)
    fake_engine.delay = 0.05
    job_id = runner.store.create_job(service="roll", flavor="f", input_text=TEXT)
    runner.tick()
    wait_for_calls(fake_engine, 4)
    answered = calls(fake_engine) - 1
    assert runner.store.cancel(job_id) == "cancelling"
    job = drain(runner, runner.store, job_id)
    assert job.status == "cancelled"
    # The report so far of the cancelled job holds every batch it finished.
    done = job.checkpoint["done"]
    assert done >= 3 * answered and said(partial_lines(job.checkpoint)) == EXPECTED[:done]


def test_kill_9_resends_at_most_the_batches_of_one_interval(tmp_path):
    """Engine calls of at least 0.1 s, CHECKPOINT_INTERVAL 0.35 s: after a write, at most 3 batches
    finish before the next write is due (a 4th takes the clock past the interval), so a kill -9 loses
    at most those and the one in flight: 4 calls sent again. Every batch is still answered once more
    at most; the report is whole."""
    engine = FakeEngineProcess("--delay", "0.1")
    try:
        gw = Gateway(tmp_path, engine.base_url, env={"CHECKPOINT_INTERVAL": "0.35"}).start()
        text = "\n".join(f"Orateur {i % 4} : intervention numéro {i}" for i in range(160))   # 20 batches of 8
        job_id = gw.submit("cra", text=text, flavor="smollm2-135m")
        wait_until(lambda: len(engine.chat_requests()) >= 8, 60, what="8 engine calls")
        gw.kill9()
        gw2 = Gateway(tmp_path, engine.base_url, port=gw.port, db_path=gw.db_path,
                      env={"CHECKPOINT_INTERVAL": "0.35"}).start()
        try:
            result = gw2.wait_finished(job_id, timeout=90)
        finally:
            gw2.stop()
        total = len(engine.chat_requests())
        print(f"kill -9 with CHECKPOINT_INTERVAL 0.35 s, calls of 0.1 s: {total} calls for 20 batches,"
              f" resent: {total - 20}")
        assert result["status"] == "complete"
        assert [l.split(" : ", 1)[1] for l in result["summarization"].splitlines()] == \
            [f"intervention numéro {i}" for i in range(160)]
        assert total <= 20 + 4
    finally:
        engine.stop()
