"""The SQLite job store: life cycle, atomic claims across processes, recovery."""
import multiprocessing
import sqlite3

from app.jobs import JobStatus, JobStore


def make_store(tmp_path):
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    store.init_schema()
    return store


def test_life_cycle_and_wal(tmp_path):
    store = make_store(tmp_path)
    job_id = store.create_job(service="cra", flavor="mixtral", input_text="A : b", params={"temperature": 0.2})
    job = store.get(job_id)
    assert job.status == JobStatus.QUEUED and job.params == {"temperature": 0.2} and job.progress == 0
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
    assert job.finished_at is not None
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_claims_follow_creation_order(tmp_path):
    store = make_store(tmp_path)
    ids = [store.create_job(service="s", flavor="f", input_text=str(i), now=100 + i) for i in range(3)]
    assert [store.claim_next().id for _ in range(3)] == ids


def test_finished_jobs_are_not_overwritten_by_a_late_runner(tmp_path):
    store = make_store(tmp_path)
    job_id = store.create_job(service="s", flavor="f", input_text="x")
    store.claim_next()
    store.requeue(job_id)
    store.complete(job_id, "late", {})  # the job is queued again: a late writer must not finish it
    assert store.get(job_id).status == "queued"


def test_requeue_processing_recovers_jobs_of_a_dead_runner(tmp_path):
    store = make_store(tmp_path)
    a = store.create_job(service="s", flavor="f", input_text="a")
    b = store.create_job(service="s", flavor="f", input_text="b")
    store.claim_next()
    store.save_progress(a, 50, {"turns_done": 10})
    assert store.requeue_processing() == 1
    job = store.get(a)
    assert job.status == "queued" and job.checkpoint == {"turns_done": 10} and job.progress == 50
    assert store.get(b).status == "queued"


def _claim_all(path, out):
    store = JobStore(path)
    got = []
    while True:
        job = store.claim_next()
        if job is None:
            break
        got.append(job.id)
    out.put(got)


def test_several_processes_never_claim_the_same_job(tmp_path):
    store = make_store(tmp_path)
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


def test_heartbeat(tmp_path):
    store = make_store(tmp_path)
    assert store.last_beat("runner") is None
    store.beat("runner", {"pid": 1}, now=10.0)
    store.beat("runner", {"pid": 2}, now=12.0)
    assert store.last_beat("runner") == (12.0, {"pid": 2})
