"""Scale-out: Celery workers on Redis, the job store on PostgreSQL.

- `Worker.handle` (what a delivered message does), driven directly on both stores: a job runs
  once; a second delivery of a finished job does nothing; a job held by a live worker is left
  alone and taken over once its lease has run out, from its checkpoint.
- The real thing: `python3 -m app` (web only) with BROKER_URL + RESULT_DB_URL, two
  `python3 -m app worker` processes and the fake engine; one worker is killed with kill -9
  mid-job and the job completes on the other, every turn once and in order, resumed at its
  last finished batch; a worker stopped with SIGTERM hands its job back and the next worker
  resumes it. Needs RESULT_DB_URL_TEST and BROKER_URL_TEST (scripts/services.sh).

Figures are printed (run with -s).
"""
import dataclasses
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from app.jobs.store import JobStore
from app.jobs.broker import TASK_NAME, celery_config, make_celery
from app.services.registry import ServiceRegistry
from app.settings import Settings
from app.pipeline.summarize import summarize
from app.jobs.worker import Delivery, Worker
from tests.manifest_factory import flavor, manifest, write_service
from tests.processes import FakeEngineProcess, Gateway, WorkerProcess, wait_until
from tests.store_backends import deployment_for

TEXT = "\n".join(f"Orateur {i % 4} : intervention numéro {i}" for i in range(24))
# The real-process tests: a long cra job (10 batches of 8 with smollm2-135m) and small cred jobs.
LONG_TEXT = "\n".join(f"Orateur {i % 4} : intervention numéro {i}" for i in range(80))
SMALL_TEXT = "\n".join(f"Témoin {i % 3} : déposition {i}" for i in range(12))


def assert_long_job_whole(result: dict) -> None:
    """The long job completed with every turn once, in order."""
    assert result["status"] == "complete", result
    assert [l.split(" : ", 1)[1] for l in result["summarization"].splitlines()] == \
        [f"intervention numéro {i}" for i in range(80)]


@pytest.fixture
def worker_on(tmp_path, fake_engine, store_backend):
    """A Worker (no Celery: handle() is called directly) on each store, with the in-process fake engine."""
    folder = tmp_path / "services"
    folder.mkdir()
    write_service(str(folder), "svc", manifest(name="svc", flavors=[flavor("f", maxNewTurns=4)]))
    settings = Settings(**store_backend.settings_kwargs(), services_dir=str(folder), api_base=fake_engine.base_url,
                        engine_retries=0, job_lease=30)
    store = JobStore(store_backend.location)
    store.init_schema()
    registry = ServiceRegistry(str(folder))
    registry.reload()
    worker = Worker(settings, store, registry)
    yield worker, store
    worker.stopping.set()
    store.close()


def test_a_delivered_job_runs_once_and_duplicates_do_nothing(worker_on, fake_engine):
    worker, store = worker_on
    job_id = store.create_job(service="svc", flavor="f", input_text=TEXT)
    assert worker.handle(job_id) == Delivery.RAN
    job = store.get(job_id)
    assert job.status == "complete" and len(job.result.splitlines()) == 24
    calls = len(fake_engine.chat_requests())
    assert worker.handle(job_id) == Delivery.FINISHED          # the broker delivered it again: nothing is sent
    assert worker.handle("no-such-job") == Delivery.UNKNOWN
    assert len(fake_engine.chat_requests()) == calls
    worker.tick()
    beat = store.last_beat("runner")                   # /health sees the workers as the runner
    assert beat is not None and beat[1]["role"] == "worker"


def test_jobs_whose_message_was_lost_are_published_again_once(worker_on):
    """A message can be lost (a worker killed as the broker hands it out; a broker restarted without
    its data): the job stays queued in the store. After VISIBILITY_TIMEOUT without a touch, one
    worker's sweep publishes it again; so it does a processing job whose lease ran out that long ago."""
    worker, store = worker_on
    published = []
    sweeper = Worker(worker.settings, store, worker.registry, publish=published.append)
    other = Worker(worker.settings, store, worker.registry, publish=published.append)
    quiet, lease = worker.settings.visibility_timeout, worker.settings.job_lease
    t0 = time.time()
    lost = store.create_job(service="svc", flavor="f", input_text=TEXT, now=t0)
    fresh = store.create_job(service="svc", flavor="f", input_text=TEXT, now=t0 + quiet)
    orphan = store.create_job(service="svc", flavor="f", input_text=TEXT, now=t0)
    assert store.claim(orphan, lease_s=lease, now=t0, owner="gone:1:x") is not None     # its worker died
    live = store.create_job(service="svc", flavor="f", input_text=TEXT, now=t0)
    assert store.claim(live, lease_s=lease, now=t0, owner="alive:1:y") is not None
    store.renew({live: "alive:1:y"}, now=t0 + quiet + lease)                              # its worker beats

    assert sweeper.sweep(now=t0 + quiet + 1) == 1
    assert published == [lost]                         # the orphan's lease ran out only `lease` ago
    assert other.sweep(now=t0 + quiet + 2) == 0        # stamped: the other worker does not send it again
    other.tick(now=t0 + quiet + lease + 1)             # housekeeping sweeps: the orphan's lease is `quiet` old
    assert published == [lost, orphan]
    late = store.create_job(service="svc", flavor="f", input_text=TEXT, now=t0)
    other.tick(now=t0 + quiet + lease + 2)             # housekeeping sweeps once every sweep_every seconds
    assert published == [lost, orphan]
    other.tick(now=t0 + quiet + lease + 1 + other.sweep_every)
    assert published == [lost, orphan, late]
    assert store.get(orphan).status == "queued" and store.get(live).status == "processing"
    assert fresh not in published
    assert worker.handle(orphan) == Delivery.RAN                # the new message runs it
    print(f"lost messages: published again {published.count(lost)}x and {published.count(orphan)}x, "
          f"live job left alone")


def test_a_job_held_by_a_live_worker_is_left_alone_then_taken_over_from_its_checkpoint(worker_on, fake_engine):
    worker, store = worker_on
    job_id = store.create_job(service="svc", flavor="f", input_text=TEXT)          # 6 batches of 4 turns
    # A first worker runs three batches, then is stopped: the job goes back to the queue with its checkpoint.
    first = Worker(worker.settings, store, worker.registry, summarize_fn=_stop_after(3, summarize))
    assert first.handle(job_id) == Delivery.REQUEUED
    assert len(fake_engine.chat_requests()) == 3
    # A second worker claims it and is killed at once: the job is processing, its lease alive.
    dead = store.claim(job_id, lease_s=30, owner="elsewhere:1:dead")
    assert worker.handle(job_id) == Delivery.BUSY
    # Once the lease has run out (31 s later) the job is taken over and resumes after the third batch.
    assert worker.handle(job_id, now=time.time() + 31) == Delivery.RAN
    job = store.get(job_id)
    assert job.status == "complete" and job.attempts == 3
    assert [l.split(" : ", 1)[1] for l in job.result.splitlines()] == [f"intervention numéro {i}" for i in range(24)]
    assert len(fake_engine.chat_requests()) == 6                   # every batch once
    assert not store.save_progress(job_id, 50, {}, owner=dead.owner)   # the dead holder is fenced off


def _stop_after(batches, summarize_fn):
    """A summarize that asks to stop after `batches` checkpoints (a worker stopped mid-job)."""
    def run(*args, hooks, **kwargs):
        done = []

        def checkpoint(progress, state):
            hooks.on_checkpoint(progress, state)
            done.append(progress)
        stop = lambda: len(done) >= batches or hooks.should_stop()   # noqa: E731
        return summarize_fn(*args, hooks=dataclasses.replace(hooks, on_checkpoint=checkpoint, should_stop=stop), **kwargs)
    return run


def test_a_stopping_worker_takes_no_job(worker_on):
    worker, store = worker_on
    job_id = store.create_job(service="svc", flavor="f", input_text=TEXT)
    worker.stopping.set()
    assert worker.handle(job_id) == Delivery.STOPPING
    assert store.get(job_id).status == "queued"


def test_the_queue_acknowledges_late_and_redelivers_lost_jobs():
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout=10, job_lease=4)
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 10
    assert conf["broker_transport_options"]["unacked_restore_interval"] == 2
    app = make_celery(settings)
    assert app.conf.task_default_queue == "llm-gateway" and TASK_NAME == "llm_gateway.run_job"
    with pytest.raises(ValueError, match="job_lease"):
        Settings(visibility_timeout=10, job_lease=10)


def test_worker_and_runner_roles_refuse_the_wrong_mode():
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "RESULT_DB_URL")}
    worker = subprocess.run([sys.executable, "-m", "app", "worker"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert worker.returncode == 2 and "BROKER_URL" in worker.stderr
    runner = subprocess.run([sys.executable, "-m", "app", "runner", "--broker_url", "redis://127.0.0.1:1/0"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert runner.returncode == 2 and "python3 -m app worker" in runner.stderr


# -- the real processes -------------------------------------------------------------------------


@pytest.fixture
def cluster_env():
    """BROKER_URL (a flushed Redis database) and RESULT_DB_URL (a fresh PostgreSQL schema), short timeouts."""
    with deployment_for("scaled") as scaled:
        yield dict(os.environ, **scaled.env)


def test_kill_9_of_a_worker_mid_job_the_other_worker_resumes_it(tmp_path, cluster_env):
    """Two workers, one API node; the worker running the long job is killed; nothing is lost or sent twice."""
    services = tmp_path / "services"
    shutil.copytree("services", services)
    engine = FakeEngineProcess("--delay", "0.3")
    workers = [WorkerProcess(tmp_path, name, engine.base_url, str(services), cluster_env) for name in ("a", "b")]
    gateway = None
    try:
        gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), env=cluster_env).start()
        long_id = gateway.submit("cra", text=LONG_TEXT, flavor="smollm2-135m")
        small_ids = [gateway.submit("cred", text=SMALL_TEXT, flavor="smollm2-135m") for _ in range(3)]
        wait_until(lambda: gateway.result(long_id)["progress"] >= 30, 60, what="the long job's progress >= 30")
        store = JobStore(cluster_env["RESULT_DB_URL"])
        holder_pid = int(store.get(long_id).owner.split(":")[1])
        victim = next(w for w in workers if w.proc.pid == holder_pid)
        survivor = next(w for w in workers if w is not victim)
        killed_at = time.monotonic()
        victim.kill9()
        sent_at_kill = _calls_for(engine, "intervention numéro")
        taken = wait_until(lambda: (j := store.get(long_id)).attempts == 2 and j, 60,
                           what="the other worker to take the job over")
        took_over = time.monotonic() - killed_at
        result = gateway.wait_finished(long_id, timeout=90)
        finished = time.monotonic() - killed_at
        total = _calls_for(engine, "intervention numéro")
        print(f"\nscale: kill -9 of worker {victim.name} at {taken.progress}%: calls before {sent_at_kill}, "
              f"taken over by worker {survivor.name} after {took_over:.1f} s, complete after {finished:.1f} s; "
              f"calls {total} for 10 batches (resent {total - 10})")
        assert_long_job_whole(result)
        assert total <= 11                                          # at most the batch in flight is sent again
        final = store.get(long_id)
        assert int(final.owner.split(":")[1]) == survivor.proc.pid and final.attempts == 2
        for job_id in small_ids:                                    # the victim's other jobs are not lost either
            small = gateway.wait_finished(job_id, timeout=90)
            assert small["status"] == "complete" and len(small["summarization"].splitlines()) == 12
        assert "taken over" not in survivor.logs()
        store.close()
    finally:
        if gateway is not None:
            gateway.stop()
        for worker in workers:
            worker.stop()
        engine.stop()
    assert "no local runner" in gateway.logs()                      # BROKER_URL: the API node runs no jobs


def _calls_for(engine, needle: str) -> int:
    return sum(1 for r in engine.chat_requests() if needle in (r.get("prompt") or ""))


def test_sigterm_of_a_worker_requeues_its_job_and_another_worker_resumes_it(tmp_path, cluster_env):
    """A worker stopped cleanly puts its job back with its checkpoint and publishes it again: nothing waits
    for a visibility timeout, and a worker started later resumes it at its last finished batch."""
    services = tmp_path / "services"
    shutil.copytree("services", services)
    engine = FakeEngineProcess("--delay", "0.3")
    first = WorkerProcess(tmp_path, "first", engine.base_url, str(services), cluster_env)
    later = None
    gateway = None
    try:
        gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), env=cluster_env).start()
        job_id = gateway.submit("cra", text=LONG_TEXT, flavor="smollm2-135m")
        wait_until(lambda: gateway.result(job_id)["progress"] >= 30, 60, what="progress >= 30")
        first.stop()
        assert first.proc.returncode == 0
        job = JobStore(cluster_env["RESULT_DB_URL"]).get(job_id)
        assert job.status == "queued" and job.checkpoint and "resume" in job.message
        later = WorkerProcess(tmp_path, "later", engine.base_url, str(services), cluster_env)
        started = time.monotonic()
        result = gateway.wait_finished(job_id, timeout=60)
        total = _calls_for(engine, "intervention numéro")
        print(f"\nscale: SIGTERM at {job.progress}%, resumed and complete {time.monotonic() - started:.1f} s after "
              f"the next worker started; calls {total} for 10 batches")
        assert_long_job_whole(result)
        assert total <= 11
    finally:
        if gateway is not None:
            gateway.stop()
        for worker in (first, later):
            if worker is not None:
                worker.stop()
        engine.stop()


def test_a_job_whose_message_the_broker_lost_is_published_again_and_completes(tmp_path, cluster_env):
    """The broker loses the message of a stored job (here: Redis restarted without its data, by FLUSHDB,
    before any worker took it). The job is in PostgreSQL; a worker's sweep publishes it again once it has
    been quiet for VISIBILITY_TIMEOUT (10 s here), and it completes."""
    import redis

    services = tmp_path / "services"
    shutil.copytree("services", services)
    engine = FakeEngineProcess()
    gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), env=cluster_env)
    worker = None
    try:
        gateway.launch()          # the web node alone: no worker takes the message before it is lost
        wait_until(lambda: requests.get(f"{gateway.url}/healthcheck", timeout=2).status_code == 200, 60,
                   what="the web node")
        job_id = gateway.submit("cred", text=SMALL_TEXT, flavor="smollm2-135m")
        broker = redis.Redis.from_url(cluster_env["BROKER_URL"])
        assert broker.llen("llm-gateway") == 1
        broker.flushdb()
        worker = WorkerProcess(tmp_path, "w", engine.base_url, str(services), cluster_env)
        started = time.monotonic()
        result = gateway.wait_finished(job_id, timeout=90)
        print(f"\nscale: a message lost by the broker: the job was published again and complete "
              f"{time.monotonic() - started:.1f} s after the worker started")
        assert result["status"] == "complete" and len(result["summarization"].splitlines()) == 12
        assert "published again" in worker.logs()
    finally:
        gateway.stop()
        if worker is not None:
            worker.stop()
        engine.stop()


def test_postgresql_without_a_broker_two_nodes_share_the_jobs_and_survive_a_kill_9(tmp_path, cluster_env):
    """RESULT_DB_URL alone: each `python3 -m app` runs its local runner on the shared store (claims with
    FOR UPDATE SKIP LOCKED). Two nodes, jobs submitted to both; the node running the long job is killed
    with kill -9 (a machine lost); the other takes the job over once its lease has run out and resumes it
    at its last finished batch. Every job completes, every turn once and in order."""
    env = {k: v for k, v in cluster_env.items() if k not in ("BROKER_URL", "VISIBILITY_TIMEOUT")}
    services = tmp_path / "services"
    shutil.copytree("services", services)
    engine = FakeEngineProcess("--delay", "0.3")
    nodes = []
    try:
        for name in ("one", "two"):
            folder = tmp_path / name
            folder.mkdir()
            nodes.append(Gateway(folder, engine.base_url, services_dir=str(services), env=env).start())
        long_id = nodes[0].submit("cra", text=LONG_TEXT, flavor="smollm2-135m")
        small_ids = [node.submit("cred", text=SMALL_TEXT, flavor="smollm2-135m") for node in nodes for _ in range(2)]
        wait_until(lambda: nodes[1].result(long_id)["progress"] >= 30, 60, what="the long job's progress >= 30")
        store = JobStore(env["RESULT_DB_URL"])
        holder_pid = int(store.get(long_id).owner.split(":")[1])
        victim = next(node for node in nodes if node.proc.pid == os.getpgid(holder_pid))   # its process group
        survivor = next(node for node in nodes if node is not victim)
        killed_at = time.monotonic()
        victim.kill9()
        sent_at_kill = _calls_for(engine, "intervention numéro")
        result = survivor.wait_finished(long_id, timeout=90)
        total = _calls_for(engine, "intervention numéro")
        print(f"\nshared store, no broker: kill -9 of node {nodes.index(victim) + 1} after {sent_at_kill} calls; the "
              f"other node completed the job {time.monotonic() - killed_at:.1f} s later; calls {total} for 10 batches")
        assert_long_job_whole(result)
        assert total <= 11 and store.get(long_id).attempts == 2
        for job_id in small_ids:
            small = survivor.wait_finished(job_id, timeout=90)
            assert small["status"] == "complete" and len(small["summarization"].splitlines()) == 12
        store.close()
    finally:
        for node in nodes:
            node.stop()
        engine.stop()
