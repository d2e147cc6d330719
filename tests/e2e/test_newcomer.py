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

from tests.e2e import budget
from tests.e2e.conftest import ROOT, SKIP_REASON, report
from tests.e2e.test_real_engine import EN_SMALL, FR_MEDIUM, check_summary, first_lines, wait_result
from tests.processes import Gateway

pytestmark = pytest.mark.e2e

LOCAL_ENGINE = os.path.join(ROOT, "scripts", "local_engine.sh")
DEFAULT_ENGINE_PORT = 9000         # the gateway's default --api_base is http://localhost:9000/v1
TURNS = 20                         # a few engine calls of the shipped flavor, as a newcomer's first try


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_local_engine_default_settings_and_one_curl(tmp_path):
    if os.environ.get("LLM_GATEWAY_E2E") != "1":
        pytest.skip(SKIP_REASON)
    if port_in_use(DEFAULT_ENGINE_PORT):
        pytest.skip(f"port {DEFAULT_ENGINE_PORT} is taken here: the newcomer's engine cannot use its default port")
    excerpt = tmp_path / "meeting.txt"         # the first turns of an AMI meeting: a few engine calls
    excerpt.write_text(first_lines(EN_SMALL, TURNS), encoding="utf-8")
    gateway = Gateway(tmp_path, api_base=None, services_dir=os.path.join(ROOT, "services"), workers=2)
    try:
        started = subprocess.run(["bash", LOCAL_ENGINE], cwd=ROOT, capture_output=True, text=True, timeout=3000)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert f"http://localhost:{DEFAULT_ENGINE_PORT}/v1" in started.stdout
        api_base = f"http://localhost:{DEFAULT_ENGINE_PORT}/v1"
        speed = budget.calibrate(api_base, "smollm2-135m", first_lines(FR_MEDIUM)[:6000])
        work = budget.plan_work("summary", excerpt.read_text(encoding="utf-8"),
                                os.path.join(ROOT, "services", "summary.json"), "smollm2-135m", api_base)
        limit = budget.deadline([work], speed)
        report(f"[local_engine.sh] calibration: {speed}; deadline {limit:.0f} s for {work}")
        gateway.start(timeout=120)
        curl = subprocess.run(["curl", "-sS", "-F", f"file=@{excerpt}", "-F", "flavor=smollm2-135m",
                               f"{gateway.url}/services/summary/generate"], capture_output=True, text=True, timeout=60)
        assert curl.returncode == 0, curl.stderr
        job_id = json.loads(curl.stdout)["jobId"]
        body = wait_result(gateway, job_id, limit, f"{speed} and the planned work ({work})")
        seconds = (body["finishedAt"] or 0) - (body["createdAt"] or 0)
        check_summary("local_engine.sh", "summary", body, seconds, label=f" ({TURNS} turns, default --api_base)")
    finally:
        if gateway.proc is not None:
            gateway.stop()
        stopped = subprocess.run(["bash", LOCAL_ENGINE, "stop"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        report(f"[local_engine.sh] stop: exit {stopped.returncode}")
    assert not port_in_use(DEFAULT_ENGINE_PORT), "scripts/local_engine.sh stop left the engine running"
