"""Reliability: engine faults at job level, an engine restart ridden out, kill -9 resume by counting calls.

Figures (retries, calls, jobs lost) are printed; run with -s to see them.
"""
import dataclasses
import time

import requests

from app.web.views import job_view
from tests.manifest_factory import flavor, manifest
from tests.processes import FakeEngineProcess, Gateway, wait_until

TEXT = "\n".join(f"Orateur {i % 4} : intervention numéro {i} sur le budget" for i in range(24))


def runner_for(make_runner, api_base, fields=2, flavors=None, **settings):
    """A tick-driven runner with fast backoff, on service `svc` with `flavors` (default: one flavor `f`)."""
    runner = make_runner({"svc": manifest(name="svc", fields=fields, flavors=flavors or [flavor("f", maxNewTurns=4)])},
                         api_base=api_base, engine_retry_delay=0.01, **settings)
    return runner, runner.store


def run_to_end(runner, store, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        job = store.get(job_id)
        if job.status in ("complete", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(store.get(job_id))


def test_faults_the_pipeline_rides_out_show_in_the_stored_job(fake_engine, make_runner):
    """How each fault is classified, retried or re-planned is tested in test_engine.py and
    test_summarize.py; here, the job's side: a call hanging past ENGINE_TIMEOUT and a 503 are
    retried, a batch overflowing the context is sent again in smaller pieces, and the stored job
    completes whole, its usage counting the retries and the extra calls."""
    runner, store = runner_for(make_runner, fake_engine.base_url, engine_timeout=1)
    fake_engine.add_fault("hang", seconds=3)
    fake_engine.add_fault("503")
    fake_engine.add_fault("context")
    job = run_to_end(runner, store, store.create_job(service="svc", flavor="f", input_text=TEXT))
    print(f"hang, 503, context: status={job.status} retries={job.usage['retries']} calls={job.usage['calls']}")
    assert job.status == "complete"
    assert job.usage["retries"] == 2
    assert [l.split(" : ", 1)[1] for l in job.result.splitlines()] == \
        [f"intervention numéro {i} sur le" for i in range(24)]
    assert job.usage["calls"] > 6  # the overflowing batch was sent again in smaller pieces


def test_engine_restart_is_ridden_out_and_health_shows_it(tmp_path, deployment):
    """The engine goes away for a few seconds mid-job; the job says it is retrying, then completes."""
    engine = FakeEngineProcess("--delay", "0.2")
    port = engine.port
    gw = Gateway(tmp_path, engine.base_url, env={"ENGINE_RETRY_DELAY": "0.5"}, deployment=deployment).start()
    try:
        job_id = gw.submit("cra", text=TEXT * 3, flavor="smollm2-135m")
        wait_until(lambda: gw.result(job_id)["progress"] > 0, 30, what="progress")
        engine.stop()
        # News goes to `detail`: `message` stays the seed's percentage (LinTO Studio shows it + "%").
        message = wait_until(lambda: "retrying" in (m := gw.result(job_id)["detail"]) and m, 30,
                             what="the retrying message")
        print("while the engine is down:", message)
        assert "engine unavailable, retrying (" in message
        health = wait_until(lambda: (h := requests.get(f"{gw.url}/health", timeout=10).json())
                            ["engine"]["reachable"] is False and h, 15, what="health to show the engine down")
        assert health["status"] == "degraded"
        time.sleep(3)
        engine = FakeEngineProcess("--delay", "0.2", port=port)
        result = gw.wait_finished(job_id, timeout=90)
        print(f"after the restart: {result['status']}, retries={result['usage']['retries']}")
        assert result["status"] == "complete" and result["usage"]["retries"] >= 1
        wait_until(lambda: requests.get(f"{gw.url}/health", timeout=10).json()["engine"]["reachable"], 15,
                   what="health to show the engine up")
    finally:
        gw.stop()
        engine.stop()


def test_kill_9_mid_job_resumes_from_the_last_batch(tmp_path, deployment):
    """Count the engine's calls: after kill -9 and restart, at most the batch in flight is sent again.

    Scaled, the kill takes the web node and both workers; the job's unacknowledged message comes back
    after VISIBILITY_TIMEOUT and a new worker takes the job over once its lease has run out."""
    engine = FakeEngineProcess("--delay", "0.3")
    try:
        gw = Gateway(tmp_path, engine.base_url, deployment=deployment).start()
        text = "\n".join(f"Orateur {i % 4} : intervention numéro {i}" for i in range(80))  # 10 batches of 8
        job_id = gw.submit("cra", text=text, flavor="smollm2-135m")
        wait_until(lambda: gw.result(job_id)["progress"] >= 30, 60, what="progress >= 30")
        gw.kill9()
        sent_before = len(engine.chat_requests())
        gw2 = Gateway(tmp_path, engine.base_url, port=gw.port, db_path=gw.db_path, deployment=deployment).start()
        try:
            result = gw2.wait_finished(job_id, timeout=90)
        finally:
            gw2.stop()
        total = len(engine.chat_requests())
        print(f"calls before kill: {sent_before}, total: {total}, batches: 10, resent: {total - 10}")
        assert result["status"] == "complete"
        assert [l.split(" : ", 1)[1] for l in result["summarization"].splitlines()] == \
            [f"intervention numéro {i}" for i in range(80)]
        assert total <= 11  # every batch once, plus at most the one in flight at the kill
    finally:
        engine.stop()


def test_fallback_flavor_takes_over_when_the_engine_stays_down(fake_engine, make_runner):
    """Flavor `main` points at an engine that is down; after its retries the job goes on with `backup`."""
    runner, store = runner_for(make_runner, "http://127.0.0.1:9/v1", engine_retries=2, flavors=[
        flavor("main", apiBase="http://127.0.0.1:9/v1", fallbackFlavor="backup", maxNewTurns=4),
        flavor("backup", apiBase=fake_engine.base_url, modelName="backup-model", maxNewTurns=4),
        flavor("nofallback", apiBase="http://127.0.0.1:9/v1"),
        flavor("strict", apiBase=fake_engine.base_url, fallbackFlavor="backup"),
    ])
    job = run_to_end(runner, store, store.create_job(service="svc", flavor="main", input_text=TEXT))
    print("fallback:", job.status, job.usage, job.warnings)
    assert job.status == "complete" and job.usage["flavor"] == "backup"
    assert job.usage["retries"] == 2  # the main flavor's retries are counted too
    assert any("fallback flavor 'backup'" in w for w in job.warnings)
    assert {r["model"] for r in fake_engine.chat_requests()} == {"backup-model"}
    shown = job_view(job)                     # what GET /results/<id> answers
    assert (shown["flavor"], shown["producedBy"]) == ("main", "backup")
    assert len(job.result.splitlines()) == 24
    failed = run_to_end(runner, store, store.create_job(service="svc", flavor="nofallback", input_text=TEXT))
    assert failed.status == "failed" and "127.0.0.1:9" in failed.error
    for fault, cause in (("404", "does not know model"), ("401", "API key")):
        calls = len(fake_engine.chat_requests())
        fake_engine.add_fault(fault)  # a permanent (4xx) error is never retried and never falls back
        strict = run_to_end(runner, store, store.create_job(service="svc", flavor="strict", input_text=TEXT))
        print(f"{fault}: {strict.error}")
        assert strict.status == "failed" and cause in strict.error
        assert len(fake_engine.chat_requests()) == calls + 1


def test_a_fallback_midway_resumes_the_first_flavors_batches_and_counts_each_call_once(fake_engine, make_runner):
    """`main` answers 3 batches, then its engine stays down: `backup` resumes after them, and the
    job's usage counts every answered call once (the checkpoint's usage is not carried twice)."""
    from app.pipeline.summarize import summarize
    from tests.fake_engine import FakeEngine

    with FakeEngine() as down_later:
        def failing_after_three(turns, request, *, hooks, **kwargs):
            def checkpoint(progress, state):
                hooks.on_checkpoint(progress, state)
                if request.flavor.name == "main" and len(down_later.chat_requests()) == 3:
                    down_later.add_fault("503", times=1000)
            return summarize(turns, request, hooks=dataclasses.replace(hooks, on_checkpoint=checkpoint), **kwargs)

        runner, store = runner_for(make_runner, fake_engine.base_url, engine_retries=1, checkpoint_interval=0,
                                   flavors=[flavor("main", apiBase=down_later.base_url, fallbackFlavor="backup",
                                                   maxNewTurns=4),
                                            flavor("backup", apiBase=fake_engine.base_url, maxNewTurns=4)])
        runner = make_runner.another(runner, summarize_fn=failing_after_three)
        job = run_to_end(runner, store, store.create_job(service="svc", flavor="main", input_text=TEXT))
    print("fallback midway:", job.usage)
    assert job.status == "complete" and job.usage["flavor"] == "backup"
    assert len(fake_engine.chat_requests()) == 3                     # 6 batches of 4 turns: 3 left
    assert job.usage["calls"] == 3 + 3
    assert [int(line.split("numéro ")[1].split()[0]) for line in job.result.splitlines()] == list(range(24))


def test_the_job_retry_budget_bounds_all_calls_together(fake_engine, make_runner):
    runner, store = runner_for(make_runner, fake_engine.base_url, engine_retries=8, engine_job_retries=3)
    fake_engine.add_fault("503", times=2)        # the first call: 2 retries, then it succeeds
    job = run_to_end(runner, store, store.create_job(service="svc", flavor="f", input_text=TEXT))
    assert job.status == "complete" and job.usage["retries"] == 2   # within the budget of 3
    fake_engine.add_fault("503", times=10)       # one call that keeps failing: per call 8, per job 3
    job = run_to_end(runner, store, store.create_job(service="svc", flavor="f", input_text=TEXT))
    print("job budget spent:", job.error)
    assert job.status == "failed" and "retry budget of 3 is spent" in job.error and "503" in job.error
    assert job.usage["retries"] == 3


def test_per_flavor_engine_key_and_concurrency(fake_engine, make_runner, monkeypatch):
    """`apiKeyEnv` names the variable holding that flavor's engine key (others use --api_key), and
    `maxConcurrentRequests` caps the calls in flight to it (a fields: 1 job would otherwise send 8)."""
    monkeypatch.setenv("LLM_GATEWAY_TEST_ENGINE_KEY", "sk-flavor-key")
    runner, store = runner_for(make_runner, fake_engine.base_url, fields=1, api_key="sk-global-key",
                               engine_retries=0, flavors=[
        flavor("keyed", apiBase=fake_engine.base_url, apiKeyEnv="LLM_GATEWAY_TEST_ENGINE_KEY",
               maxConcurrentRequests=2, maxNewTurns=1),
        flavor("plain", maxNewTurns=1),
    ])
    fake_engine.delay = 0.2                       # calls overlap long enough to be counted in flight
    job = run_to_end(runner, store, store.create_job(service="svc", flavor="keyed", input_text=TEXT))
    keyed = fake_engine.chat_requests()
    print(f"per-flavor engine: {len(keyed)} calls, at most {fake_engine.max_seen_in_flight} in flight")
    assert job.status == "complete" and len(keyed) == 24
    assert {r["authorization"] for r in keyed} == {"Bearer sk-flavor-key"}
    assert fake_engine.max_seen_in_flight == 2
    fake_engine.reset()
    job = run_to_end(runner, store, store.create_job(service="svc", flavor="plain", input_text=TEXT))
    assert job.status == "complete"
    assert {r["authorization"] for r in fake_engine.chat_requests()} == {"Bearer sk-global-key"}
    assert fake_engine.max_seen_in_flight > 2           # the default ENGINE_CONCURRENCY (8) applies


def test_a_failing_job_does_not_disturb_the_jobs_running_beside_it(fake_engine, make_runner):
    """Three jobs at once: one on a model the engine does not know (fails at once), one whose calls
    meet 503s (retried), one plain; the two others complete whole, in order, unaffected."""
    fake_engine.models = ("fake-model",)
    fake_engine.delay = 0.05
    runner, store = runner_for(make_runner, fake_engine.base_url, max_concurrent_jobs=3, flavors=[
        flavor("good", maxNewTurns=4), flavor("unknown", modelName="no-such-model", maxNewTurns=4)])
    fake_engine.add_fault("503", times=3)
    ids = [store.create_job(service="svc", flavor=name, input_text=TEXT) for name in ("unknown", "good", "good")]
    assert runner.tick() == 3                  # all three run side by side
    jobs = [run_to_end(runner, store, job_id) for job_id in ids]
    print("side by side:", [(j.flavor, j.status, j.usage and j.usage.get("retries")) for j in jobs])
    assert jobs[0].status == "failed" and "no-such-model" in jobs[0].error
    for job in jobs[1:]:
        assert job.status == "complete", job.error
        assert [line.split(" : ", 1)[0] for line in job.result.splitlines()] == [f"Orateur {i % 4}" for i in range(24)]
    # The three 503s went to whichever calls came first (the unknown model's too): each was retried once.
    assert sum(j.usage["retries"] for j in jobs) == 3
