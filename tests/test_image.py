"""The Docker image's build steps, carried out without Docker (no Docker engine runs here).

The Dockerfile is read instruction by instruction and replayed in a temporary folder that
stands for the image's root: ENV, WORKDIR and COPY as written, the dependency step
(`RUN sh scripts/install.sh`) run for real, then CMD started with the image's environment and
the HEALTHCHECK command run as Docker would run it. Absolute paths of the image are moved
under the temporary root; `docker run -e` style overrides point the gateway at a fake engine
and a free port. What is not replayed, and why: FROM (this machine's Python stands for the
base image), the `useradd`/`chown` step (it changes the machine's users), USER, VOLUME, EXPOSE.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import requests

from tests.processes import FakeEngineProcess, free_port, wait_until
from tests.test_compose import ROOT, dockerfile, dockerfile_env

pytestmark = pytest.mark.slow


def replay(root: str) -> tuple[dict[str, str], str, list[str], str]:
    """Carry out the Dockerfile under `root`; return (ENV, WORKDIR, CMD, HEALTHCHECK command).

    ENV is read whole (tests/test_compose.py); its absolute paths are moved under `root`."""
    inside = lambda path: os.path.join(root, path.lstrip("/"))     # noqa: E731 - an image path, here
    env = {key: inside(value) if value.startswith("/") else value for key, value in dockerfile_env().items()}
    workdir = "/"
    cmd: list[str] = []
    healthcheck = ""
    for line in dockerfile().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "WORKDIR":
            workdir = args
            os.makedirs(inside(workdir), exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(args)
            target = inside(dest if dest.startswith("/") else os.path.join(workdir, dest))
            for source in sources:
                src = os.path.join(ROOT, source.rstrip("/"))
                if os.path.isdir(src):
                    shutil.copytree(src, target, dirs_exist_ok=True)
                else:
                    to = os.path.join(target, os.path.basename(src)) if dest.endswith("/") else target
                    os.makedirs(os.path.dirname(to), exist_ok=True)
                    shutil.copy2(src, to)
        elif op == "RUN" and "scripts/install.sh" in args:
            # The dependency layer, run for real (the requirements are met here, so pip only checks).
            done = subprocess.run(["sh", "-c", args], cwd=inside(workdir), env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout + done.stderr
        elif op == "RUN":
            for folder in (word for word in shlex.split(args) if word.startswith("/var/")):
                os.makedirs(inside(folder), exist_ok=True)      # the folders it makes, not its users
        elif op == "CMD":
            cmd = json.loads(args)                                     # the exec form: a JSON array
        elif op == "HEALTHCHECK":
            healthcheck = args.split(" CMD ", 1)[1]
    return env, inside(workdir), cmd, healthcheck


def test_the_image_assembled_without_docker_serves_and_passes_its_healthcheck(tmp_path):
    env, workdir, cmd, healthcheck = replay(str(tmp_path / "image"))
    assert cmd == ["python3", "-m", "app"] and healthcheck
    engine = FakeEngineProcess()
    port = free_port()
    # `docker run -e OPENAI_API_BASE=... -e HTTP_PORT=...`; nothing else from the test's environment
    # but what runs Python (PATH, the interpreter's home), so the image's defaults are what is tested.
    run_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env,
               "OPENAI_API_BASE": engine.base_url, "HTTP_PORT": str(port)}
    cmd[0] = sys.executable if cmd[0] == "python3" else cmd[0]
    server = subprocess.Popen(cmd, cwd=workdir, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        wait_until(lambda: subprocess.run(["sh", "-c", healthcheck], env=run_env, capture_output=True,
                                          timeout=10).returncode == 0,
                   90, what="the image's HEALTHCHECK command to pass")
        services = [s["name"] for s in requests.get(f"http://127.0.0.1:{port}/services", timeout=5).json()]
        errors = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["registry"]["errors"]
        assert {"cra", "cred", "summary"} <= set(services) and errors == []   # SERVICES_DIR
        job = requests.post(f"http://127.0.0.1:{port}/services/cra/generate", timeout=10,
                            json={"content": "Alice : Bonjour à tous.\nBob : Merci.", "flavor": "smollm2-135m"})
        assert job.status_code == 202, job.text
        job_id = job.json()["jobId"]
        done = wait_until(lambda: (r := requests.get(f"http://127.0.0.1:{port}/results/{job_id}", timeout=5).json())
                          ["status"] in ("complete", "error") and r, 60, what="the job to finish")
        assert done["status"] == "complete", done
        assert os.path.isfile(env["RESULT_DB_PATH"])          # the database is where the volume is
        for page in ("/docs", "/openapi.json"):                 # built on SWAGGER_PATH's document
            assert requests.get(f"http://127.0.0.1:{port}{page}", timeout=5).status_code == 200, page
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            out, _ = server.communicate()
        engine.stop()
    assert server.returncode == 0, out[-3000:]
