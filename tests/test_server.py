"""The real `python3 -m app`: Gunicorn with 2 workers, the runner process, a fake engine process.

Submit → poll → complete; hot reload seen by every worker and the runner; kill -9 of the
whole server with queued jobs, restart, every job completes; SIGTERM stops cleanly. Each test
runs embedded and scaled (web only + two `python3 -m app worker` on Redis and PostgreSQL),
where "the runner" is the workers.
"""
import itertools
import time

import pytest
import requests

from tests.manifest_factory import manifest, write_service
from tests.processes import FakeEngineProcess, Gateway, wait_until

pytestmark = pytest.mark.slow

FR_SMALL = "tests/data/fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt"
EN_SMALL = "tests/data/en/en_small_ami_TS3010a.txt"


def runs(speakers):
    """Speakers with consecutive repeats folded (a long turn is sent as several virtual turns)."""
    return [name for name, _ in itertools.groupby(speakers)]


def speakers_in_order(path):
    lines = [l for l in open(path, encoding="utf-8").read().splitlines() if " : " in l]
    return runs(l.split(" : ", 1)[0] for l in lines)


def test_submit_poll_complete(gateway, engine):
    job_id = gateway.submit("cra", FR_SMALL, flavor="smollm2-135m")
    first = gateway.result(job_id)
    assert first["_http"] == 202 and first["status"] in ("queued", "processing")
    result = gateway.wait_finished(job_id)
    assert result["_http"] == 200 and result["status"] == "complete", result
    assert result["progress"] == 100
    # The fake echoes "Speaker : first words" for every turn it receives: each turn arrived once, in order.
    summary_speakers = runs(line.split(" : ", 1)[0] for line in result["summarization"].splitlines())
    assert summary_speakers == speakers_in_order(FR_SMALL)
    assert result["usage"]["calls"] == len(engine.chat_requests()) >= 1
    assert {r["model"] for r in engine.chat_requests()} == {"smollm2-135m"}
    json_job = gateway.submit("summary", text=open(EN_SMALL, encoding="utf-8").read(), flavor="smollm2-135m")
    assert gateway.wait_finished(json_job)["status"] == "complete"
    # No Gunicorn admin socket at the one per-user path other gateways on the host would share.
    assert "Control socket listening" not in gateway.logs()
    if gateway.deployment.scaled:      # the web node ran nothing: a worker did (owner is host:pid:token)
        assert "no local runner" in gateway.logs()
        holder = next(job for job in stored_jobs(gateway) if job.id == job_id).owner
        assert int(holder.split(":")[1]) in {worker.proc.pid for worker in gateway.workers}


def test_the_engine_key_is_never_logged(tmp_path, engine, services, deployment):
    secret = "sk-test-very-secret-4242"
    gw = Gateway(tmp_path, engine.base_url, services_dir=str(services), env={"OPENAI_API_TOKEN": secret},
                 deployment=deployment).start()
    try:
        job_id = gw.submit("cred", FR_SMALL, flavor="smollm2-135m")
        assert gw.wait_finished(job_id)["status"] == "complete"
        assert {r["authorization"] for r in engine.chat_requests()} == {f"Bearer {secret}"}
        for route in ("/services", "/health", "/openapi.json", f"/results/{job_id}"):
            assert secret not in requests.get(gw.url + route, timeout=10).text
    finally:
        gw.stop()
    assert secret not in gw.logs()


def every_worker_answers(gateway, path: str, code: int) -> bool:
    """30 fresh connections (spread over both Gunicorn workers) all get `code` for `path`."""
    return {requests.get(f"{gateway.url}{path}", timeout=5, headers={"Connection": "close"}).status_code
            for _ in range(30)} == {code}


def test_hot_reload_reaches_every_worker_and_the_runner(gateway, services):
    # How long a reload takes is printed, not asserted (a loaded machine stretches it).
    started = time.monotonic()
    write_service(str(services), "newsvc", manifest(name="newsvc", fields=1))
    wait_until(lambda: every_worker_answers(gateway, "/services/newsvc", 200), 30, what="every worker to load it")
    print(f"\nhot reload: every worker serves the new service {time.monotonic() - started:.2f} s after it was written")
    job_id = gateway.submit("newsvc", text="Alice : bonjour à tous\nBob : merci")
    assert gateway.wait_finished(job_id)["status"] == "complete"       # the runner (or a worker) knows it too
    started = time.monotonic()
    (services / "newsvc.json").unlink()
    wait_until(lambda: every_worker_answers(gateway, "/services/newsvc", 404), 30, what="every worker to drop it")
    print(f"hot reload: every worker answers 404 {time.monotonic() - started:.2f} s after it was deleted")


def test_kill_9_with_queued_jobs_then_restart_completes_all(tmp_path, services, deployment):
    """Scaled, the kill takes the web node and both workers: the queued jobs' messages wait in Redis, the
    running ones' come back after VISIBILITY_TIMEOUT and are claimed once their lease has run out."""
    engine = FakeEngineProcess("--delay", "0.3")
    try:
        gw = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2, deployment=deployment).start()
        ids = [gw.submit("cra", FR_SMALL, flavor="smollm2-135m") for _ in range(6)]
        wait_until(lambda: any(gw.result(i)["status"] == "processing" for i in ids), 30, what="a job to start")
        gw.kill9()
        statuses = {job.id: job.status for job in stored_jobs(gw)}
        print(f"after kill -9: {sorted(statuses.values())}")
        assert set(statuses) == set(ids)
        assert "processing" in statuses.values() and "queued" in statuses.values()
        restarted = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2, port=gw.port,
                            db_path=gw.db_path, deployment=deployment).start()
        try:
            results = [restarted.wait_finished(i, timeout=120) for i in ids]
        finally:
            restarted.stop()
        lost = sum(r["status"] != "complete" for r in results)
        print(f"after restart: {[r['status'] for r in results]}; jobs lost: {lost} of {len(ids)}")
        assert [r["status"] for r in results] == ["complete"] * 6
    finally:
        engine.stop()


def test_sigterm_stops_cleanly_and_requeues_the_running_job(tmp_path, services, deployment):
    """SIGTERM: every process exits 0 and the running job goes back to the queue with its checkpoint; the
    next start resumes it there. Scaled, SIGTERM goes to the web node and both workers at once, and "the
    queue" is the store and a message published again, which the restarted workers must receive."""
    engine = FakeEngineProcess("--delay", "0.5")
    try:
        gw = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2, deployment=deployment).start()
        long_text = "\n".join(f"Orateur {i % 5} : intervention numéro {i} sur le budget." for i in range(200))
        job_id = gw.submit("cra", text=long_text, flavor="smollm2-135m")       # 25 batches of 8 turns
        wait_until(lambda: gw.result(job_id)["progress"] > 0, 60, what="the job to make progress")
        assert gw.terminate(timeout=60) == 0
        job = next(job for job in stored_jobs(gw) if job.id == job_id)
        assert job.status == "queued" and job.checkpoint is not None
        assert "resume" in job.message
        engine.control(delay=0)                          # the rest of the job need not be slow
        restarted = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2, port=gw.port,
                            db_path=gw.db_path, deployment=deployment).start()
        try:
            result = restarted.wait_finished(job_id, timeout=60)
        finally:
            restarted.stop()
        assert result["status"] == "complete", result
        assert [l.split(" : ", 1)[1].split()[2] for l in result["summarization"].splitlines()] == \
            [str(i) for i in range(200)]                 # every turn once, in order
        assert len(engine.chat_requests()) <= 26         # resumed at its checkpoint: at most one batch again
    finally:
        engine.stop()


def stored_jobs(gw):
    """Every job in the deployment's store, read directly (its processes may all be dead)."""
    store = gw.store()
    try:
        jobs, _ = store.list_jobs(limit=500)
        return [store.get(job.id) for job in jobs]
    finally:
        store.close()
