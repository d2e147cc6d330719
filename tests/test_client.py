"""`python3 -m app.client` as a subprocess against the real gateway (with gateway keys) and a fake engine."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import requests

from app import client as cli
from tests.processes import FakeEngineProcess, Gateway, wait_until

FR_SMALL = "tests/data/fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt"
KEY = "client-test-key"


@pytest.fixture(scope="module")
def engine():
    eng = FakeEngineProcess("--delay", "0.05")
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, engine, module_deployment):
    """One gateway for the module's tests, embedded then scaled."""
    tmp = tmp_path_factory.mktemp("client")
    shutil.copytree("services", tmp / "services")
    gw = Gateway(tmp, engine.base_url, services_dir=str(tmp / "services"), workers=2,
                      env={"API_KEYS": KEY}, deployment=module_deployment).start()
    yield gw
    gw.stop()


def run(gateway, *args, key=KEY, env=None):
    """Run the CLI; return (exit code, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GATEWAY_")}
    full_env.update(env or {})
    options = ["--url", gateway.url] + (["--api-key", key] if key else [])
    done = subprocess.run([sys.executable, "-m", "app.client", *args, *options], capture_output=True, text=True,
                          env=full_env, timeout=120)
    return done.returncode, done.stdout, done.stderr


def api(gateway, method, path):
    return requests.request(method, gateway.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


@pytest.mark.slow
def test_submit_wait_writes_the_summary_and_shows_progress(gateway, tmp_path):
    out = tmp_path / "out.txt"
    code, stdout, stderr = run(gateway, "submit", FR_SMALL, "--service", "cra", "--flavor", "smollm2-135m",
                               "--wait", "-o", str(out))
    assert code == 0, stderr
    job_id = stderr.split("job ", 1)[1].split()[0]
    result = api(gateway, "GET", f"/results/{job_id}").json()
    assert result["status"] == "complete"
    assert out.read_text(encoding="utf-8") == result["summarization"] + "\n"
    assert "100%" in stderr and "|" in stderr                      # the progress bar reached the end
    assert f"GET /results/{job_id}/events 200" in gateway.logs()    # fed by the event stream
    assert "usage: " in stderr and f"{result['usage']['calls']} calls" in stderr


@pytest.mark.slow
def test_submit_then_status_list_and_cancel(gateway):
    code, stdout, stderr = run(gateway, "submit", FR_SMALL, "--service", "cred", "--flavor", "smollm2-135m")
    assert code == 0, stderr
    job_id = stdout.strip()
    assert len(job_id) == 36
    wait_until(lambda: api(gateway, "GET", f"/results/{job_id}").json()["status"] == "complete", 60, what="the job")
    code, stdout, _ = run(gateway, "status", job_id)
    body = json.loads(stdout)
    assert code == 0 and body["status"] == "complete"
    # Usage in results: every job reports its calls (answered and failed), tokens, engine time, retries
    # and the answer checks' own time.
    assert set(body["usage"]) == {"calls", "prompt_tokens", "completion_tokens", "engine_seconds", "retries", "failed_calls",
                                  "check_seconds", "flavor"}
    assert body["usage"]["calls"] >= 1 and body["usage"]["prompt_tokens"] > 0
    code, stdout, stderr = run(gateway, "list", "--status", "complete", "--service", "cred", "--limit", "5")
    assert code == 0 and job_id in stdout and "complete" in stdout and "job(s)" in stderr
    code, stdout, _ = run(gateway, "list", "--json", "--limit", "1")
    listing = json.loads(stdout)
    assert listing["limit"] == 1 and "usage" in listing["jobs"][0]
    code, stdout, _ = run(gateway, "cancel", job_id)
    assert code == 0 and "deleted" in stdout
    code, _, stderr = run(gateway, "status", job_id)
    assert code == 1 and "404" in stderr and "not_found" in stderr


@pytest.mark.slow
def test_services(gateway):
    code, stdout, _ = run(gateway, "services")
    assert code == 0 and "cra" in stdout and "smollm2-135m" in stdout
    code, stdout, _ = run(gateway, "--json", "services")
    assert code == 0 and "cra" in [service["name"] for service in json.loads(stdout)]


@pytest.mark.slow
def test_a_failed_job_exits_1_with_its_error(gateway, engine):
    engine.control(faults=["401"])
    code, stdout, stderr = run(gateway, "submit", FR_SMALL, "--service", "cra", "--flavor", "smollm2-135m", "--wait")
    assert code == 1 and "failed" in stderr and "API key" in stderr and stdout == ""


@pytest.mark.slow
def test_keys_url_and_env(gateway):
    code, _, stderr = run(gateway, "services", key=None)
    assert code == 1 and "401" in stderr
    code, _, _ = run(gateway, "services", key="wrong")
    assert code == 1
    done = subprocess.run([sys.executable, "-m", "app.client", "services"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LLM_GATEWAY_URL": gateway.url, "LLM_GATEWAY_API_KEY": KEY})
    assert done.returncode == 0 and "cra" in done.stdout
    unreachable = subprocess.run([sys.executable, "-m", "app.client", "--url", "http://127.0.0.1:9", "services"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [[], ["nope"], ["submit", FR_SMALL], ["submit", "no/such/file.txt", "--service", "cra"],
                                  ["status"], ["list", "--limit", "x"]])
def test_usage_errors_exit_2(gateway, args):
    code, _, stderr = run(gateway, *args)
    assert code == 2 and "usage" in stderr


@pytest.mark.slow
def test_falls_back_to_polling_when_the_stream_fails(gateway, monkeypatch, capsys):
    def broken(self, job_id):
        raise cli.GatewayError("event stream broken: ConnectionError")
        yield   # a generator, like the real one

    monkeypatch.setattr(cli.GatewayClient, "events", broken)
    monkeypatch.setattr(cli, "POLL_S", 0.1)
    code = cli.main(["--url", gateway.url, "--api-key", KEY, "submit", FR_SMALL, "--service", "cra",
                     "--flavor", "smollm2-135m", "--wait", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() and " : " in captured.out


class StubClient:
    """A GatewayClient stand-in: a scripted event stream, then results for polling."""

    def __init__(self, stream, results):
        self.stream, self.results = stream, list(results)

    def events(self, job_id):
        yield from self.stream
        raise cli.GatewayError("event stream broken: ChunkedEncodingError")

    def result(self, job_id):
        item = self.results.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_parse_sse_skips_comments_and_joins_data_lines():
    lines = ["retry: 2000", "", ": heartbeat", "", "event: progress", 'data: {"a":', "data: 1}", "", "data: x", ""]
    assert list(cli.parse_sse(lines)) == [("progress", '{"a":\n1}'), ("message", "x")]


def test_wait_for_uses_the_stream_then_polls_when_it_breaks(monkeypatch):
    monkeypatch.setattr(cli, "POLL_S", 0)
    seen = []
    done = {"jobId": "j", "status": "complete", "progress": 100, "summarization": "A : b"}
    stub = StubClient([("progress", {"status": "processing", "progress": 40})],
                      [cli.GatewayError("cannot reach"), {"status": "processing", "progress": 60}, done])
    assert cli.wait_for(stub, "j", seen.append) == done
    assert [d["progress"] for d in seen] == [40, 60, 100]
    # A final event ends it without polling.
    stub = StubClient([("complete", done)], [])
    assert cli.wait_for(stub, "j", seen.append) == done
    # A failed job's final event is named "error" too, with the job's body.
    failed = {"jobId": "j", "status": "error", "state": "failed", "error": "engine said no"}
    assert cli.wait_for(StubClient([("error", failed)], []), "j", seen.append) == failed
    # A deleted job: the stream's error event (the error shape), then polling's 404 is raised.
    stub = StubClient([("error", {"status": 404})], [cli.GatewayError("HTTP 404 not_found: No job", 404)])
    with pytest.raises(cli.GatewayError, match="404"):
        cli.wait_for(stub, "j", seen.append)


def test_follow_prints_the_report_as_its_batches_finish(capsys):
    done = {"jobId": "j", "status": "complete", "progress": 100, "summarization": "A : un\nB : deux\nC : trois"}
    stub = StubClient([("progress", {"status": "processing", "progress": 30}),
                       ("partial", {"jobId": "j", "start": 0, "lines": ["A : un"]}),
                       ("partial", {"jobId": "j", "start": 1, "lines": ["B : deux"]}),
                       ("complete", done)], [])
    assert cli.follow(stub, "j", quiet=True, show_partial=True) == done
    assert capsys.readouterr().err.splitlines() == ["A : un", "B : deux"]
    stub = StubClient([("partial", {"jobId": "j", "start": 0, "lines": ["A : un"]}), ("complete", done)], [])
    assert cli.follow(stub, "j", quiet=True) == done            # without --follow: nothing printed
    assert capsys.readouterr().err == ""
