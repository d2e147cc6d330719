"""Logs: text or JSON lines, the job id on every line of a job (worker threads too), request ids on HTTP lines."""
import io
import json
import logging
import re
import shutil
import time

import pytest

from app.logs import configure_logging, job_context
from app.services.registry import ServiceRegistry
from app.settings import Settings
from app.web import create_app
from tests.manifest_factory import flavor, manifest
from tests.processes import FakeEngineProcess, Gateway

FR_SMALL = "tests/data/fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt"


@pytest.fixture
def captured():
    """configure_logging into a buffer; the root logger's handlers are put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()

    def configure(**settings):
        configure_logging(Settings(**settings), "test", stream=buffer)
        return buffer

    yield configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def json_lines(buffer):
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_the_job_id_inside_its_context(captured):
    buffer = captured(log_format="json")
    log = logging.getLogger("app.test")
    log.info("before")
    with job_context("job-1"):
        log.warning("inside %s", "the job")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.info("after")
    lines = json_lines(buffer)
    assert [line.get("job_id") for line in lines] == [None, "job-1", "job-1", None]
    assert lines[1]["message"] == "inside the job" and lines[1]["level"] == "WARNING" and lines[1]["role"] == "test"
    assert "ValueError: boom" in lines[2]["exc"]


def test_text_lines_show_the_job_id(captured):
    buffer = captured()
    with job_context("job-2"):
        logging.getLogger("app.test").info("hello")
    assert "[test " in buffer.getvalue() and "app.test: [job=job-2] hello" in buffer.getvalue()


def test_log_format_must_be_text_or_json():
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")


def test_every_line_of_a_parallel_job_carries_its_id(captured, fake_engine, make_runner):
    """fields: 1 runs batches in worker threads: their lines (here a retry warning) carry the job id too."""
    runner = make_runner({"par": manifest(name="par", fields=1, flavors=[flavor("f", maxNewTurns=3)])},
                         api_base=fake_engine.base_url, engine_retries=2, engine_retry_delay=0.01)
    store = runner.store
    buffer = captured(log_format="json")      # from here on, every line is about the job
    job_id = store.create_job(service="par", flavor="f", input_text=open(FR_SMALL, encoding="utf-8").read())
    fake_engine.add_fault("503")
    try:
        runner.tick()
        deadline = time.monotonic() + 30
        while store.get(job_id).status in ("queued", "processing") and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.shutdown(timeout=5)
    assert store.get(job_id).status == "complete"
    lines = json_lines(buffer)
    retry = [line for line in lines if "retry 1/2" in line["message"]]
    assert retry and retry[0]["job_id"] == job_id, retry
    job_lines = [line for line in lines if line["logger"].startswith("app.")]
    assert len(job_lines) >= 3 and all(line.get("job_id") == job_id for line in job_lines), job_lines


def test_request_ids_and_quiet_health_checks(captured, tmp_path):
    buffer = captured(log_format="json")
    folder = tmp_path / "services"
    folder.mkdir()
    registry = ServiceRegistry(str(folder))
    registry.reload()
    client = create_app(Settings(db_path=str(tmp_path / "j.sqlite"), services_dir=str(folder),
                                 api_base="http://127.0.0.1:9/v1"), registry=registry).test_client()
    given = client.get("/services", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = client.get("/results/nope").headers["X-Request-ID"]
    assert len(made) == 32 and made != "abc-123"
    # An id that is too long or not printable is replaced, never echoed.
    assert client.get("/services", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"] != "x" * 500
    for route in ("/healthcheck", "/health", "/metrics"):
        assert client.get(route).status_code == 200
    access = [line for line in json_lines(buffer) if line["logger"] == "app.web.access"]
    assert [(line["message"].split(" ")[1], line["request_id"]) for line in access[:2]] == [
        ("/services", "abc-123"), ("/results/nope", made)]
    assert " 404 " in access[1]["message"]
    assert not [line for line in access if line["message"].split(" ")[1] in ("/healthcheck", "/health", "/metrics")]


def test_a_refused_request_gets_a_request_id_too(tmp_path):
    folder = tmp_path / "services"
    folder.mkdir()
    registry = ServiceRegistry(str(folder))
    registry.reload()
    client = create_app(Settings(db_path=str(tmp_path / "j.sqlite"), services_dir=str(folder), api_keys="k"),
                        registry=registry).test_client()
    response = client.get("/services", headers={"X-Request-ID": "refused-1"})
    assert response.status_code == 401 and response.headers["X-Request-ID"] == "refused-1"


@pytest.mark.slow
def test_real_gateway_json_logs(tmp_path, deployment):
    """LOG_FORMAT=json: every line of every process (Gunicorn's own, the workers' too) is JSON; job lines
    carry the id."""
    services = tmp_path / "services"
    shutil.copytree("services", services)
    engine = FakeEngineProcess("--delay", "0.02")
    gateway = Gateway(tmp_path, engine.base_url, services_dir=str(services), env={"LOG_FORMAT": "json"},
                      deployment=deployment).start()
    try:
        job_id = gateway.submit("cred", FR_SMALL, flavor="smollm2-135m")
        assert gateway.wait_finished(job_id)["status"] == "complete"
    finally:
        gateway.stop()
        engine.stop()
    lines, others = [], []
    for line in gateway.logs().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            others.append(line)
    # A library may print to stderr itself; but no logging handler wrote text (ours or Gunicorn's).
    assert not [line for line in others if re.match(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+.*\b(INFO|WARNING|ERROR)\b", line)]
    assert len(lines) > 10
    roles = {line["role"] for line in lines}
    assert {"all", "web", deployment.job_role} <= roles     # the runner, or (scaled) the workers
    assert any(line["logger"].startswith("gunicorn") for line in lines)
    mentions = [line for line in lines if job_id in line["message"] and line["role"] == deployment.job_role]
    assert len(mentions) >= 2 and all(line["job_id"] == job_id for line in mentions)
    access = [line for line in lines if line["logger"] == "app.web.access"]
    assert access and all(line.get("request_id") for line in access)
    assert not [line for line in access if "/health" in line["message"]]   # probed every 0.1 s at start
