"""The job store on SQLite and on PostgreSQL: life cycle, atomic claims across processes, leases, recovery."""
import json
import multiprocessing
import sqlite3
import time

import pytest

from sqlalchemy import func, select

from app.jobs.model import FINISHED_STATUSES, JobStatus
from app.jobs.store import JobStore


@pytest.fixture
def store(store_backend):
    store = JobStore(store_backend.location)
    store.init_schema()
    yield store
    store.close()


def test_life_cycle_and_wal(store):
    job_id = store.create_job(service="cra", flavor="mixtral", input_text="A : b", params={"temperature": 0.2})
    job = store.get(job_id)
    assert job.status is JobStatus.QUEUED and job.params == {"temperature": 0.2} and job.progress == 0
    assert store.get_state(job_id)[0] is JobStatus.QUEUED and not job.status.finished
    claimed = store.claim_next()
    assert claimed.id == job_id and claimed.status == "processing" and claimed.attempts == 1
    assert store.claim_next() is None
    store.save_progress(job_id, 40, {"turns_done": 3})
    store.save_progress(job_id, 20, None)  # progress never goes down
    job = store.get(job_id)
    assert job.progress == 40 and job.checkpoint == {"turns_done": 3}
    store.complete(job_id, "summary", {"calls": 2})
    job = store.get(job_id)
    assert (job.status, job.progress, job.result, job.usage) == ("complete", 100, "summary", {"calls": 2})
    assert job.finished_at is not None and job.status.finished
    assert FINISHED_STATUSES == {s for s in JobStatus if s.finished} == {"complete", "failed", "cancelled"}
    if store.is_sqlite:
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_claims_follow_creation_order(store):
    ids = [store.create_job(service="s", flavor="f", input_text=str(i), now=100 + i) for i in range(3)]
    assert [store.claim_next().id for _ in range(3)] == ids


def test_finished_jobs_are_not_overwritten_by_a_late_runner(store):
    job_id = store.create_job(service="s", flavor="f", input_text="x")
    store.claim_next()
    store.requeue(job_id)
    store.complete(job_id, "late", {})  # the job is queued again: a late writer must not finish it
    assert store.get(job_id).status == "queued"


def test_requeue_processing_recovers_jobs_of_a_dead_runner(store):
    a = store.create_job(service="s", flavor="f", input_text="a")
    b = store.create_job(service="s", flavor="f", input_text="b")
    store.claim_next()
    store.save_progress(a, 50, {"turns_done": 10})
    assert store.requeue_processing() == 1
    job = store.get(a)
    assert job.status == "queued" and job.checkpoint == {"turns_done": 10} and job.progress == 50
    assert store.get(b).status == "queued"


def test_a_job_whose_cancel_was_asked_ends_cancelled_when_its_runner_died(store):
    """Queued again, it would never be claimed (a cancel is pending) nor end: it ends cancelled."""
    job_id = store.create_job(service="s", flavor="f", input_text="a", now=100)
    store.claim_next(now=100)
    assert store.cancel(job_id, now=101) == "cancelling"
    assert store.requeue_processing(now=102) == 0
    assert store.get(job_id).status == "cancelled"
    other = store.create_job(service="s", flavor="f", input_text="b", now=200)
    store.claim_next(now=200, lease_s=10)
    store.cancel(other, now=201)
    assert store.take_stalled(quiet_s=30, lease_s=10, now=300) == []      # a lost worker's job
    assert store.get(other).status == "cancelled"


def _claim_all(path, out):
    store = JobStore(path)
    got = []
    while True:
        job = store.claim_next()
        if job is None:
            break
        got.append(job.id)
    out.put(got)


def test_several_processes_never_claim_the_same_job(store):
    ids = {store.create_job(service="s", flavor="f", input_text=str(i)) for i in range(200)}
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_claim_all, args=(store.path, out)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [job_id for _ in procs for job_id in out.get(timeout=60)]
    for p in procs:
        p.join()
    print(f"claims per process: {len(claimed)} total, {len(set(claimed))} distinct")
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == ids


def test_heartbeat(store):
    assert store.last_beat("runner") is None
    store.beat("runner", {"pid": 1}, now=10.0)
    store.beat("runner", {"pid": 2}, now=12.0)
    assert store.last_beat("runner") == (12.0, {"pid": 2})


def test_claim_by_id_takes_a_queued_job_once(store):
    job_id = store.create_job(service="s", flavor="f", input_text="x", manifest={"name": "s"})
    job = store.claim(job_id, lease_s=30)
    assert job.status == "processing" and job.attempts == 1 and job.owner
    assert job.manifest == {"name": "s"}
    assert store.claim(job_id, lease_s=30) is None          # held, lease alive
    assert store.claim("no-such-job", lease_s=30) is None


def test_a_job_whose_holder_went_silent_is_taken_over_and_the_old_holder_is_fenced_off(store):
    job_id = store.create_job(service="s", flavor="f", input_text="x", now=100)
    first = store.claim(job_id, lease_s=30, now=100)
    store.save_progress(job_id, 40, {"turns_done": 8}, owner=first.owner, now=110)
    assert store.renew({job_id: first.owner}, now=120) == 1
    assert store.claim(job_id, lease_s=30, now=140) is None    # renewed at 120: alive until 150
    assert store.claim_next(lease_s=30, now=140) is None
    second = store.claim(job_id, lease_s=30, now=151)          # silent for 31 s: taken over
    assert second.owner != first.owner and second.attempts == 2
    assert second.checkpoint == {"turns_done": 8} and second.progress == 40   # resumes from there
    # The first holder wakes up: every write of its own is refused.
    assert store.renew({job_id: first.owner}, now=152) == 0
    assert not store.save_progress(job_id, 90, {"turns_done": 99}, owner=first.owner)
    assert not store.complete(job_id, "stale", {}, owner=first.owner)
    assert not store.holds(job_id, first.owner) and store.holds(job_id, second.owner)
    assert store.complete(job_id, "fresh", {"calls": 1}, owner=second.owner)
    job = store.get(job_id)
    assert (job.status, job.result, job.checkpoint) == ("complete", "fresh", {"turns_done": 8})


def test_claim_next_with_a_lease_takes_over_silent_jobs_in_creation_order(store):
    old = store.create_job(service="s", flavor="f", input_text="a", now=10)
    new = store.create_job(service="s", flavor="f", input_text="b", now=20)
    assert store.claim_next(now=30).id == old
    assert store.claim_next(now=31).id == new
    assert store.claim_next(now=200) is None                   # without a lease: queued jobs only
    assert store.claim_next(lease_s=60, now=200).id == old


def test_cancel_of_a_processing_job_does_not_renew_its_lease(store):
    job_id = store.create_job(service="s", flavor="f", input_text="x", now=1)
    store.claim(job_id, lease_s=30, now=1)
    assert store.cancel(job_id, now=50) == "cancelling"
    assert store.get(job_id).updated_at == 1
    assert store.claim(job_id, lease_s=30, now=60) is None     # a job asked to stop is not taken over


def test_listing_orders_ties_by_insertion(store):
    ids = [store.create_job(service="s", flavor="f", input_text=str(i), now=5) for i in range(5)]
    jobs, total = store.list_jobs()
    assert [j.id for j in jobs] == ids[::-1] and total == 5
    assert {j.input_text for j in jobs} == {""}
    assert [store.claim_next(now=6).id for _ in ids] == ids
    assert store.count_by_status() == {"processing": 5}


def test_an_old_sqlite_database_gets_the_new_columns(tmp_path):
    path = str(tmp_path / "old.sqlite")
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, service TEXT NOT NULL, flavor TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}', input_text TEXT NOT NULL, input_name TEXT, status TEXT NOT NULL,
            progress INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', result TEXT, error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, checkpoint TEXT, usage TEXT, warnings TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
            finished_at REAL, updated_at REAL NOT NULL);
        INSERT INTO jobs (id, service, flavor, input_text, status, created_at, updated_at)
            VALUES ('old-1', 's', 'f', 'A : b', 'queued', 1, 1);
    """)
    old.close()
    store = JobStore(path)
    store.init_schema()
    store.init_schema()  # twice: nothing to add the second time
    job = store.claim_next()
    assert job.id == "old-1" and job.manifest is None and job.owner
    assert store.complete("old-1", "done", {}, owner=job.owner)


def test_sqlite_polls_reuse_one_connection_per_thread_and_close_cleanly(tmp_path):
    """Polls on SQLite read on a connection each thread keeps; close() closes them all, and the
    store still answers afterwards (a new connection); the reads see other connections' writes."""
    import threading

    store = JobStore(str(tmp_path / "r.sqlite"))
    store.init_schema()
    job_id = store.create_job(service="cra", flavor="mixtral", input_text="A : b")
    seen = []

    def poll():
        for _ in range(5):
            seen.append(store.get(job_id, full=False).status)

    threads = [threading.Thread(target=poll) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    poll()
    assert seen == ["queued"] * 20
    readers = [connection for _, connection in store._reader_list]
    assert len(readers) == 4 and len({id(c) for c in readers}) == 4      # one per thread, reused
    store.claim_next()                                  # a write on another connection is seen at once
    assert store.get(job_id, full=False).status == "processing"
    store.close()
    assert store._reader_list == [] and all(c.dbapi_connection is None for c in readers)   # closed
    assert store.get(job_id, full=False).status == "processing"        # reopened on demand
    store.close()


# --- the input apart, incremental checkpoints (issue 15, item 3) ------------------------------

def _count(store, table: str, job_id: str | None = None) -> int:
    """Rows of a store table (of one job), read with plain SQL."""
    from sqlalchemy import text
    column = "id" if table == "job_inputs" else "job_id"
    where = f" WHERE {column} = :job_id" if job_id else ""
    with store.transaction() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}{where}"), {"job_id": job_id}).scalar()


def _written(store):
    """A list that sums the bytes of every statement's text parameters sent to the store from now on."""
    from sqlalchemy import event
    total = [0]

    def count(conn, cursor, statement, parameters, context, executemany):
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        total[0] += sum(len(v.encode()) for v in values if isinstance(v, str))
    event.listen(store._get_engine(), "before_cursor_execute", count)
    return total


def test_progress_writes_never_rewrite_the_input_nor_the_summary_so_far(store):
    """Issue 15: each checkpoint rewrote the row (the upload, megabytes) and the whole summary so
    far: bytes written grew with the square of the job. Now the upload is written once, apart,
    and each checkpoint sends only the lines its batch added."""
    upload = "A : " + "mot " * 250_000                     # 1 MB
    job_id = store.create_job(service="s", flavor="f", input_text=upload)
    job = store.claim_next()
    assert job.input_text == upload
    written = _written(store)
    lines: list[str] = []
    for batch in range(50):
        added = [f"Speaker {batch} : line {i} " + "x" * 40 for i in range(20)]
        state = {"version": 2, "done": (batch + 1) * 6, "usage": {"calls": batch + 1}}
        assert store.save_progress(job_id, batch, {**state, "lines": lines + added}, "processing",
                                   owner=job.owner, grows="lines", kept=len(lines))
        lines += added
    output = len(json.dumps(lines).encode())
    print(f"50 checkpoints of a 1 MB upload: {written[0]:,} bytes sent to the store for "
          f"{output:,} bytes of summary lines (whole rewrites would send {25 * output:,})")
    assert output < written[0] < output + 50 * 400          # O(total output), not O(N x total)
    with store.transaction() as conn:
        row_bytes = conn.execute(select(func.length(store.jobs.c.input_text) + func.length(store.jobs.c.checkpoint))
                                 .where(store.jobs.c.id == job_id)).scalar()
    assert row_bytes < 300                                   # the row every write rewrites is small
    assert store.get(job_id).checkpoint == {"version": 2, "done": 300, "usage": {"calls": 50}, "lines": lines}
    assert store.get(job_id).input_text == upload


def test_a_resumed_job_gets_the_whole_checkpoint_back_whatever_the_writes(store):
    """Appends, a half batch, a plan that moved back (written whole again), outputs as a dict, a
    checkpoint stored whole: each read gives back exactly the last checkpoint saved."""
    job_id = store.create_job(service="s", flavor="f", input_text="A : b")
    owner = store.claim_next().owner

    def save(state, kept, grows="lines"):
        assert store.save_progress(job_id, 10, state, owner=owner, grows=grows, kept=kept)
        again = store.claim(job_id, lease_s=0, now=time.time() + 1, owner=owner)    # as a resume reads it
        assert again.checkpoint == state
        return again

    save({"done": 4, "lines": ["a", "b"]}, 0)
    save({"done": 6, "lines": ["a", "b", "c"]}, 2)                         # half a batch
    save({"done": 8, "lines": ["a", "b", "c", "d", "e"]}, 3)
    save({"done": 8, "lines": ["a", "b", "c", "d", "e"]}, 5)               # nothing new
    save({"done": 2, "lines": ["z"]}, 0)                                   # started over: fewer lines
    assert _count(store, "job_parts", job_id) == 1
    save({"done": 5, "lines": ["z", "y"]}, 1)
    save({"outputs": {"0": {"turns": 3, "lines": ["a"]}}}, 0, "outputs")   # another shape
    save({"outputs": {"0": {"turns": 3, "lines": ["a"]}, "6": {"turns": 3, "lines": []}}}, 1, "outputs")
    save({"turns_done": 3}, 0, None)                                       # whole, no parts left
    assert _count(store, "job_parts", job_id) == 0
    # A checkpoint stored whole is not appended to (there is nothing to append to): written whole.
    save({"done": 3, "lines": ["p", "q"]}, 0, None)
    save({"done": 6, "lines": ["p", "q", "r"]}, 2)


def test_a_late_write_by_a_worker_that_lost_its_job_writes_no_part(store):
    job_id = store.create_job(service="s", flavor="f", input_text="x", now=100)
    first = store.claim(job_id, lease_s=30, now=100)
    assert store.save_progress(job_id, 10, {"done": 1, "lines": ["a"]}, owner=first.owner, grows="lines", now=101)
    second = store.claim(job_id, lease_s=30, now=200)
    assert second.checkpoint == {"done": 1, "lines": ["a"]}
    assert not store.save_progress(job_id, 50, {"done": 9, "lines": ["a", "stale"]}, owner=first.owner,
                                   grows="lines", kept=1)
    assert not store.save_progress(job_id, 50, {"done": 9, "lines": ["stale"]}, owner=first.owner,
                                   grows="lines", kept=0)
    assert _count(store, "job_parts", job_id) == 1
    assert store.get(job_id).checkpoint == {"done": 1, "lines": ["a"]} and store.get(job_id).progress == 10


def test_deleting_and_purging_remove_inputs_and_parts(store):
    ids = [store.create_job(service="s", flavor="f", input_text=f"A : {i}", now=10) for i in range(3)]
    for job_id in ids:
        job = store.claim(job_id, lease_s=30, now=10)
        store.save_progress(job_id, 50, {"done": 1, "lines": ["a"]}, owner=job.owner, grows="lines")
    store.complete(ids[0], "done", {}, now=20)
    store.fail(ids[1], "no", now=20)
    assert _count(store, "job_inputs") == 3 and _count(store, "job_parts") == 3
    assert store.purge_finished(60, now=100) == 2
    assert _count(store, "job_inputs") == 1 and _count(store, "job_parts") == 1
    assert store.delete(ids[2])
    assert _count(store, "job_inputs") == 0 and _count(store, "job_parts") == 0
    finished = store.create_job(service="s", flavor="f", input_text="A : b")
    job = store.claim(finished, lease_s=30)
    store.save_progress(finished, 50, {"done": 1, "lines": ["a"]}, owner=job.owner, grows="lines")
    store.complete(finished, "done", {}, owner=job.owner)
    assert store.cancel(finished) == "deleted"
    assert _count(store, "job_inputs") == 0 and _count(store, "job_parts") == 0


def test_a_database_of_the_previous_version_migrates_and_its_jobs_keep_their_input(store_backend):
    """Jobs written before job_inputs and job_parts: their upload and checkpoint are in the row."""
    from sqlalchemy import text
    store = JobStore(store_backend.location)
    seq = "" if store.is_sqlite else ", seq BIGINT GENERATED BY DEFAULT AS IDENTITY NOT NULL"
    with store.transaction() as conn:
        conn.execute(text(f"""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, service TEXT NOT NULL, flavor TEXT NOT NULL,
                params TEXT NOT NULL DEFAULT '{{}}', input_text TEXT NOT NULL, input_name TEXT, status TEXT NOT NULL,
                progress INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', result TEXT, error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0, checkpoint TEXT, usage TEXT, warnings TEXT,
                cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
                finished_at REAL, updated_at REAL NOT NULL, manifest TEXT, template TEXT, owner TEXT{seq})"""))
        conn.execute(text("""INSERT INTO jobs (id, service, flavor, input_text, status, created_at, updated_at,
                             checkpoint) VALUES ('old-1', 's', 'f', 'A : b', 'queued', 1, 1,
                             '{"done": 2, "lines": ["x", "y"]}')"""))
    store.init_schema()
    store.init_schema()
    job = store.claim_next()
    assert (job.id, job.input_text, job.checkpoint) == ("old-1", "A : b", {"done": 2, "lines": ["x", "y"]})
    # The resumed run appends to a checkpoint stored whole: the store writes it whole once.
    assert store.save_progress("old-1", 50, {"done": 3, "lines": ["x", "y", "z"]}, owner=job.owner,
                               grows="lines", kept=2)
    assert store.get("old-1").checkpoint == {"done": 3, "lines": ["x", "y", "z"]}
    new = store.create_job(service="s", flavor="f", input_text="B : c")
    assert store.get(new).input_text == "B : c"
    # Its `template` column (written by earlier versions, never read) stays, and is left empty.
    with store.transaction() as conn:
        assert conn.execute(text("SELECT template FROM jobs WHERE id = :id"), {"id": new}).scalar() is None
    assert "template" not in store.jobs.c                    # a new database has no such column
    assert store.delete("old-1") and store.get("old-1") is None
    store.close()
