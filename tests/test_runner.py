"""The runner, driven one tick at a time, against the fake engine on loopback."""
import dataclasses
import threading
import time

import pytest

from app.pipeline import summarize as summarize_module
from app.pipeline.summarize import summarize
from app.pipeline.tokenizers import default_tokenizer
from tests.tokenizer_probe import WatchedTokenizer
from tests.manifest_factory import flavor, manifest, write_service

FR_SMALL = open("tests/data/fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt", encoding="utf-8").read()
FR_MEDIUM = open("tests/data/fr/fr_medium_an_qag_2013-02-12.txt", encoding="utf-8").read()


@pytest.fixture
def setup(fake_engine, store_backend, make_runner):
    """A runner on each job store: SQLite, then PostgreSQL (skipped, saying why, without RESULT_DB_URL_TEST)."""
    runner = make_runner({"roll": manifest(name="roll", flavors=[flavor("f", maxNewTurns=3)]),
                          "par": manifest(name="par", fields=1, flavors=[flavor("f", maxNewTurns=3)])},
                         backend=store_backend, api_base=fake_engine.base_url, max_concurrent_jobs=2, engine_retries=0)
    return runner, runner.store, runner.registry, make_runner.folder


def drain(runner, store, ids, timeout=30):
    """Tick until every job in ids is finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        if all(store.get(i).status in ("complete", "failed", "cancelled") for i in ids):
            return [store.get(i) for i in ids]
        time.sleep(0.02)
    raise AssertionError([store.get(i).status for i in ids])


def test_jobs_complete_with_usage(setup, fake_engine):
    runner, store, _, _ = setup
    ids = [store.create_job(service=s, flavor="f", input_text=FR_SMALL) for s in ("roll", "par")]
    jobs = drain(runner, store, ids)
    assert [j.status for j in jobs] == ["complete", "complete"]
    for job in jobs:
        assert job.progress == 100 and job.result
        assert job.usage["calls"] >= 2 and job.usage["prompt_tokens"] > 0 and job.usage["completion_tokens"] > 0
    assert len(fake_engine.chat_requests()) == sum(j.usage["calls"] for j in jobs)


def test_a_failing_job_never_stops_the_runner(setup, fake_engine):
    runner, store, _, folder = setup
    fake_engine.add_fault("404")  # the first call: unknown model, a permanent error
    bad = store.create_job(service="roll", flavor="f", input_text="A : bonjour")
    jobs = drain(runner, store, [bad])
    print("failed job error:", jobs[0].error)
    assert jobs[0].status == "failed"
    assert "model" in jobs[0].error.lower()
    gone = store.create_job(service="nope", flavor="f", input_text="A : b")
    no_flavor = store.create_job(service="roll", flavor="zzz", input_text="A : b")
    good = store.create_job(service="roll", flavor="f", input_text="A : bonjour")
    jobs = drain(runner, store, [gone, no_flavor, good])
    assert jobs[0].status == "failed" and "no longer loaded" in jobs[0].error
    assert jobs[1].status == "failed" and "no longer has a flavor 'zzz'" in jobs[1].error
    assert jobs[2].status == "complete"


def test_template_is_read_at_each_job_start(setup, fake_engine):
    runner, store, _, folder = setup
    (folder / "par.txt").write_text("VERSION TWO\n{}\n")
    job = store.create_job(service="par", flavor="f", input_text="A : bonjour")
    drain(runner, store, [job])              # read at the job's start, before the registry reloads
    assert fake_engine.chat_requests()[-1]["prompt"].startswith("VERSION TWO\n")


def test_a_broken_template_leaves_the_last_valid_version_serving(setup, fake_engine):
    """Like a broken manifest, a broken or deleted template does not take the service down: jobs run
    with the last template the registry validated, and say so."""
    runner, store, registry, folder = setup
    (folder / "par.txt").write_text("VERSION TWO\n{}\n")
    registry.reload()
    for breakage in ("broken {} {}", None):
        if breakage is None:
            (folder / "par.txt").unlink()
        else:
            (folder / "par.txt").write_text(breakage)
        registry.reload()
        assert registry.get("par").template == "VERSION TWO\n{}\n"     # kept, and the error is listed
        assert any("par" in error["file"] for error in registry.snapshot.errors)
        job = drain(runner, store, [store.create_job(service="par", flavor="f", input_text="A : bonjour")])[0]
        assert job.status == "complete", job.error
        assert fake_engine.chat_requests()[-1]["prompt"] == "VERSION TWO\nA : bonjour\n"
        assert "the last valid version was used" in job.warnings[0]


def test_a_reduce_template_is_read_at_each_job_start_and_a_broken_one_is_replaced(setup, fake_engine):
    """The reduce template is resolved with the job like the main one: read at its start, the last
    valid version serving (and the job saying so) when the file is broken."""
    runner, store, registry, folder = setup
    (folder / "reduce.txt").write_text("Condense, v1:\n{}\n")
    write_service(str(folder), "red", manifest(name="red", fields=1, flavors=[
        flavor("f", maxNewTurns=3, reduceSummary=True, reduce_prompt="reduce.txt")]))
    registry.reload()
    for text, expected in (("Condense, v2:\n{}\n", "Condense, v2:"), ("broken {} {}", "Condense, v1:")):
        (folder / "reduce.txt").write_text(text)
        job = drain(runner, store, [store.create_job(service="red", flavor="f", input_text="A : bonjour")])[0]
        assert job.status == "complete", job.error
        assert fake_engine.chat_requests()[-1]["prompt"].startswith(expected)
    assert len(job.warnings) == 1 and "the last valid version was used" in job.warnings[0]


def test_runs_up_to_max_concurrent_jobs(setup, fake_engine):
    runner, store, _, _ = setup
    fake_engine.delay = 0.3
    ids = [store.create_job(service="roll", flavor="f", input_text="A : un\nB : deux") for _ in range(3)]
    assert runner.tick() == 2  # max_concurrent_jobs = 2
    assert runner.tick() == 0
    assert sorted(store.get(i).status for i in ids) == ["processing", "processing", "queued"]
    assert [j.status for j in drain(runner, store, ids)] == ["complete"] * 3


def test_cancel_stops_a_running_job_before_its_next_batch(setup, fake_engine):
    runner, store, _, _ = setup
    fake_engine.delay = 0.2
    text = "\n".join(f"Orateur {i % 3} : intervention {i}" for i in range(30))  # 10 batches of 3
    job_id = store.create_job(service="roll", flavor="f", input_text=text)
    runner.tick()
    deadline = time.monotonic() + 10
    while store.get(job_id).progress == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.cancel(job_id) == "cancelling"
    job = drain(runner, store, [job_id])[0]
    assert job.status == "cancelled"
    assert len(fake_engine.chat_requests()) < 10


def test_shutdown_requeues_the_running_job_with_its_checkpoint(setup, fake_engine, make_runner):
    runner, store, _, _ = setup
    fake_engine.delay = 0.2
    text = "\n".join(f"Orateur {i % 3} : intervention {i}" for i in range(30))
    job_id = store.create_job(service="roll", flavor="f", input_text=text)
    runner.tick()
    deadline = time.monotonic() + 10
    while store.get(job_id).progress == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.shutdown(timeout=5)
    job = store.get(job_id)
    assert job.status == "queued" and job.checkpoint and "resume" in job.message
    calls_before = len(fake_engine.chat_requests())
    fresh = make_runner.another(runner)
    done = drain(fresh, store, [job_id])[0]
    fresh.shutdown()
    assert done.status == "complete"
    lines = done.result.splitlines()
    assert [l.split(" : ", 1)[1] for l in lines] == [f"intervention {i}" for i in range(30)]
    # Resumed: the 10 batches were sent once each, plus at most the one in flight at the shutdown.
    assert len(fake_engine.chat_requests()) <= 11
    assert len(fake_engine.chat_requests()) - calls_before < 10


def finished_long_ago(store) -> str:
    """A job that finished at the epoch's second second: older than any RESULT_TTL_DAYS."""
    old = store.create_job(service="roll", flavor="f", input_text="A : b", now=0)
    store.claim_next(now=1)
    store.complete(old, "x", {}, now=2)
    return old


def test_purge_of_old_finished_jobs(setup):
    runner, store, _, _ = setup
    old = finished_long_ago(store)
    recent = store.create_job(service="roll", flavor="f", input_text="A : b")
    runner.tick()
    assert store.get(old) is None and store.get(recent) is not None


def test_result_ttl_days_0_keeps_finished_jobs_forever(setup, make_runner):
    runner, store, _, _ = setup
    old = finished_long_ago(store)
    make_runner.another(runner, result_ttl_days=0).tick()
    assert store.get(old).status == "complete"



def test_a_silent_runner_loses_its_job_to_another_that_resumes_it(setup, fake_engine, make_runner):
    """Runner A freezes after two batches (no lease renewal); B takes the job over once the lease has run
    out and resumes at A's last checkpoint; when A wakes up its writes are refused and it lets go."""
    runner, store, _, _ = setup
    frozen, release = threading.Event(), threading.Event()

    def freezing_summarize(*args, hooks, **kwargs):
        def checkpoint(progress, state):
            hooks.on_checkpoint(progress, state)
            if progress >= 20 and not frozen.is_set():     # two batches of ten done: the process freezes
                frozen.set()
                release.wait(30)
        return summarize(*args, hooks=dataclasses.replace(hooks, on_checkpoint=checkpoint), **kwargs)

    text = "\n".join(f"Orateur {i % 3} : intervention {i}" for i in range(30))  # 10 batches of 3
    job_id = store.create_job(service="roll", flavor="f", input_text=text)
    # Every batch written (interval 0): the freeze must find A's two batches stored, as a checkpoint
    # throttled for a fast engine would still hold them back (the subject here is the takeover).
    frozen_runner = make_runner.another(runner, summarize_fn=freezing_summarize, checkpoint_interval=0)
    taker = make_runner.another(runner, max_concurrent_jobs=1)
    try:
        assert frozen_runner.tick() == 1
        assert frozen.wait(20)
        assert runner.tick(now=time.time() - 1) == 0             # its lease is alive: not claimable
        # B (taker) has one slot: the test moves B's clock a lease ahead, and B's own progress writes carry the
        # real time, so with a second free slot B would find the job it just took "silent" again.
        assert taker.tick(now=time.time() + runner.settings.job_lease + 1) == 1   # silent past the lease
        job = drain(taker, store, [job_id])[0]
        release.set()
        wait_for = time.monotonic() + 10
        while frozen_runner.running and time.monotonic() < wait_for:
            frozen_runner.tick()
            time.sleep(0.05)
    finally:
        release.set()
        frozen_runner.shutdown(timeout=5)
        taker.shutdown(timeout=5)
    assert job.status == "complete" and job.attempts == 2
    assert [l.split(" : ", 1)[1] for l in job.result.splitlines()] == [f"intervention {i}" for i in range(30)]
    assert len(fake_engine.chat_requests()) == 10              # B resumed after A's two batches: none sent twice
    after = store.get(job_id)
    assert (after.status, after.result) == ("complete", job.result)   # A's wake-up changed nothing


# --- stopping while planning -----------------------------------------------------------------

# One speaker, then a 1,000,000-character line without a space: cutting it takes seconds of counts.
SPACELESS = "".join(FR_MEDIUM.split())
HUGE_LINE = (SPACELESS * (1_000_000 // len(SPACELESS) + 1))[:1_000_000]


class HeldTokenizer(WatchedTokenizer):
    """The default tokenizer, adding up the characters it is given. The first long text (planning
    counting the transcript's sentences) sets `planning` and is held until `go`: the test acts
    while the job is planning."""

    def __init__(self):
        super().__init__(default_tokenizer())
        self.planning, self.go = threading.Event(), threading.Event()

    def seen(self, chars: int) -> None:
        super().seen(chars)
        if chars >= 100_000 and not self.planning.is_set():
            self.planning.set()
            self.go.wait(30)


def planning_runner(make_runner, runner, tokenizer, ended: threading.Event):
    """A runner beside `runner` whose jobs count with `tokenizer`; `ended` is set when a job's summarize returns."""
    def summarize_with(*args, **kwargs):
        try:
            return summarize(*args, **{**kwargs, "tokenizer": tokenizer})
        finally:
            ended.set()
    return make_runner.another(runner, summarize_fn=summarize_with)


def cancelled_while_planning(setup, make_runner):
    """A job of one HUGE_LINE claimed by a planning_runner, cancelled while it is planning (held
    there by the tokenizer until `tokenizer.go`): (planner, tokenizer, ended, job id)."""
    runner, store, _, _ = setup
    tokenizer, ended = HeldTokenizer(), threading.Event()
    planner = planning_runner(make_runner, runner, tokenizer, ended)
    job_id = store.create_job(service="roll", flavor="f", input_text=f"Orateur : {HUGE_LINE}")
    assert planner.tick() == 1
    assert tokenizer.planning.wait(30)
    assert store.cancel(job_id) == "cancelling"
    return planner, tokenizer, ended, job_id


def test_cancel_is_honoured_while_planning(setup, make_runner, fake_engine, monkeypatch):
    """Issue 15: DELETE said "cancelling" but a huge input was planned to its end first. Planning
    now asks should_stop between pieces: the job stops within a piece of the cancel."""
    store = setup[1]
    monkeypatch.setattr(summarize_module, "_PLAN_CHECK_SECONDS", 0)   # ask at every piece: no timing here
    planner, tokenizer, ended, job_id = cancelled_while_planning(setup, make_runner)
    try:
        at_cancel = tokenizer.chars
        started = time.monotonic()
        tokenizer.go.set()
        job = drain(planner, store, [job_id])[0]
        seconds = time.monotonic() - started
        assert ended.wait(30)
    finally:
        tokenizer.go.set()
        planner.shutdown(timeout=5)
    after = tokenizer.chars - at_cancel
    print(f"cancelled while planning a {len(HUGE_LINE):,}-character line: ended {job.status} {seconds:.2f} s after "
          f"the cancel, {after:,} more characters tokenized")
    assert job.status == "cancelled"
    assert fake_engine.chat_requests() == []
    # The whole plan tokenizes about 8 times the line; it stopped before counting it once more.
    assert after < len(HUGE_LINE)


def test_a_job_cancelled_while_planning_ends_cancelled_at_shutdown_not_queued(setup, make_runner, fake_engine):
    """Issue 15: after SIGTERM a job cancelled while planning came back `queued` (and, asked to
    cancel, was never claimed again). A job still running when the shutdown gives up on it ends
    cancelled if that was asked, and planning itself stops at the shutdown."""
    store = setup[1]
    planner, tokenizer, ended, job_id = cancelled_while_planning(setup, make_runner)
    try:
        # Planning is held past the shutdown's patience, as a huge input would be.
        threading.Timer(1.0, tokenizer.go.set).start()
        planner.shutdown(timeout=0.5)
        job = store.get(job_id)
        assert job.status == "cancelled", (job.status, job.message)
        # Let go, the job's thread stops at its next look at should_stop, not after the whole plan.
        assert ended.wait(30)
        at_end = tokenizer.chars
    finally:
        tokenizer.go.set()
    assert at_end < 3 * len(HUGE_LINE)
    assert store.get(job_id).status == "cancelled" and fake_engine.chat_requests() == []

