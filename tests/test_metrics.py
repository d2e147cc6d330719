"""GET /metrics: engine latency, tokens and errors counted by the runner, jobs and queue read from the store."""
import shutil

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import telemetry
from app.pipeline.engine import ContextOverflowError, PermanentEngineError, TransientEngineError
from app.jobs.store import JobStore
from tests.processes import FakeEngineProcess, Gateway

FR_SMALL = "tests/data/fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt"


def samples(text):
    """{(name, sorted label items): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_error_kinds():
    assert telemetry.error_kind(ContextOverflowError("x")) == "context"
    assert telemetry.error_kind(PermanentEngineError("x")) == "permanent"
    assert telemetry.error_kind(TransientEngineError("x")) == "transient"
    assert telemetry.error_kind(ValueError("x")) == "other"


def test_scrape_reads_jobs_and_queue_from_the_store(make_app):
    app = make_app()
    store: JobStore = app.extensions["store"]
    for _ in range(3):
        store.create_job(service="one", flavor="small", input_text="A : b")
    store.claim_next()
    response = app.test_client().get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    found = samples(response.get_data(as_text=True))
    assert found[("llm_gateway_queue_depth", ())] == 2
    assert found[("llm_gateway_jobs", (("status", "processing"),))] == 1
    assert found[("llm_gateway_jobs", (("status", "complete"),))] == 0


@pytest.mark.slow
def test_real_gateway_counts_calls_tokens_and_errors(tmp_path, deployment):
    """Four jobs with injected faults, then one scrape: every series matches what the jobs report.

    Scaled, the workers count the engine calls: they share the web node's PROMETHEUS_MULTIPROC_DIR here
    (one machine), so its /metrics shows their counters (README, "Scaling out")."""
    services = tmp_path / "services"
    shutil.copytree("services", services)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")   # a previous run's file: removed at start
    engine = FakeEngineProcess("--delay", "0.02")
    gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), workers=2,
                      env={"ENGINE_RETRIES": "2", "ENGINE_RETRY_DELAY": "0.05",
                           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, deployment=deployment).start()
    try:
        assert not (metrics_dir / "counter_999999.db").exists()
        results = {}
        for name, faults in (("transient", ["503"]), ("exhausted", ["503", "503", "503"]),
                             ("context", ["context"]), ("permanent", ["401"])):
            engine.control(faults=faults)
            job_id = gateway.submit("cra", FR_SMALL, flavor="smollm2-135m")
            results[name] = gateway.wait_finished(job_id)
        assert [r["state"] for r in results.values()] == ["complete", "failed", "complete", "failed"]
        # A failed job reports what it spent too.
        assert results["exhausted"]["usage"]["retries"] == 2
        found = samples(requests.get(f"{gateway.url}/metrics", timeout=10).text)
    finally:
        gateway.stop()
        engine.stop()
    usage = [r["usage"] for r in results.values()]
    flavor = (("flavor", "smollm2-135m"),)
    assert found[("llm_gateway_prompt_tokens_total", flavor)] == sum(u["prompt_tokens"] for u in usage) > 0
    assert found[("llm_gateway_completion_tokens_total", flavor)] == sum(u["completion_tokens"] for u in usage) > 0
    assert found[("llm_gateway_engine_call_seconds_count", flavor)] == sum(u["calls"] for u in usage)
    assert found[("llm_gateway_engine_call_seconds_sum", flavor)] == pytest.approx(
        sum(u["engine_seconds"] for u in usage), abs=0.01)
    assert found[("llm_gateway_engine_errors_total", (("kind", "transient"),))] == 4
    assert found[("llm_gateway_engine_errors_total", (("kind", "context"),))] == 1
    assert found[("llm_gateway_engine_errors_total", (("kind", "permanent"),))] == 1
    assert found[("llm_gateway_jobs", (("status", "complete"),))] == 2
    assert found[("llm_gateway_jobs", (("status", "failed"),))] == 2
    assert found[("llm_gateway_queue_depth", ())] == 0
