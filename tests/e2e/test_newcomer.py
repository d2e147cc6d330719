"""The README's path for a newcomer without a GPU, as written: `scripts/local_engine.sh` starts a real
engine (llama.cpp serving SmolLM2-135M) on localhost:9000, `python3 -m app` runs with its default
--api_base, and one curl of a transcript with the flavor `smollm2-135m` gets a real summary back.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from tests.e2e.conftest import ROOT, SKIP_REASON, report
from tests.e2e.test_real_engine import EN_SMALL, check_summary, wait_result
from tests.processes import Gateway

pytestmark = pytest.mark.e2e

LOCAL_ENGINE = os.path.join(ROOT, "scripts", "local_engine.sh")
DEFAULT_ENGINE_PORT = 9000         # the gateway's default --api_base is http://localhost:9000/v1


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_local_engine_default_settings_and_one_curl(tmp_path):
    if os.environ.get("LLM_GATEWAY_E2E") != "1":
        pytest.skip(SKIP_REASON)
    if port_in_use(DEFAULT_ENGINE_PORT):
        pytest.skip(f"port {DEFAULT_ENGINE_PORT} is taken here: the newcomer's engine cannot use its default port")
    excerpt = tmp_path / "meeting.txt"         # the first turns of an AMI meeting: a few engine calls
    with open(EN_SMALL, encoding="utf-8") as handle:
        excerpt.write_text("\n".join(handle.read().splitlines()[:30]) + "\n", encoding="utf-8")
    gateway = Gateway(tmp_path, api_base=None, services_dir=os.path.join(ROOT, "services"), workers=2)
    try:
        started = subprocess.run(["bash", LOCAL_ENGINE], cwd=ROOT, capture_output=True, text=True, timeout=3000)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert f"http://localhost:{DEFAULT_ENGINE_PORT}/v1" in started.stdout
        gateway.start(timeout=120)
        curl = subprocess.run(["curl", "-sS", "-F", f"file=@{excerpt}", "-F", "flavor=smollm2-135m",
                               f"{gateway.url}/services/summary/generate"], capture_output=True, text=True, timeout=60)
        assert curl.returncode == 0, curl.stderr
        job_id = json.loads(curl.stdout)["jobId"]
        body = wait_result(gateway, job_id)
        seconds = (body["finishedAt"] or 0) - (body["createdAt"] or 0)
        check_summary("local_engine.sh", "summary", body, seconds, label=" (30 turns, default --api_base)")
    finally:
        if gateway.proc is not None:
            gateway.stop()
        stopped = subprocess.run(["bash", LOCAL_ENGINE, "stop"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        report(f"[local_engine.sh] stop: exit {stopped.returncode}")
    assert not port_in_use(DEFAULT_ENGINE_PORT), "scripts/local_engine.sh stop left the engine running"
