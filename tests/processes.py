"""Starting real processes for tests: the fake engine and `python3 -m app` (Gunicorn + runner)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() returns a truthy value; return it, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.RequestException, OSError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FakeEngineProcess:
    """`python3 -m tests.fake_engine` in a subprocess."""

    def __init__(self, *args: str, port: int = 0):
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_engine", "--port", str(port), *args],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        self.base_url = line.strip().rsplit(" ", 1)[-1]
        assert self.base_url.startswith("http://127.0.0.1:"), line
        self.root = self.base_url[: -len("/v1")]
        self.port = int(self.root.rsplit(":", 1)[1])

    def control(self, **body):
        """POST /_control (faults, delay, reset)."""
        return requests.post(f"{self.root}/_control", json=body, timeout=5).json()

    def chat_requests(self) -> list[dict]:
        """The chat requests the fake has received."""
        records = requests.get(f"{self.root}/_control", timeout=5).json()["requests"]
        return [r for r in records if r.get("path", "").endswith("/chat/completions")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Gateway:
    """The real `python3 -m app` (supervisor, Gunicorn workers, runner) in its own process group."""

    def __init__(self, tmp_path, api_base: str, services_dir: str = "services", workers: int = 2,
                 port: int | None = None, env: dict[str, str] | None = None, db_path: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = db_path or str(tmp_path / "results.sqlite")
        self.log_path = str(tmp_path / f"gateway-{self.port}.log")
        self.args = ["--api_base", api_base, "--service_port", str(self.port), "--workers", str(workers),
                     "--db_path", self.db_path, "--services_dir", services_dir, "--host", "127.0.0.1"]
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Gateway":
        """Start and wait until every part answers (web up, runner beating)."""
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "app", *self.args], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200, timeout,
                   what="the gateway's /healthcheck")
        wait_until(lambda: requests.get(f"{self.url}/health", timeout=5).json()["runner"]["alive"], timeout,
                   what="the runner's heartbeat")
        return self

    def submit(self, service: str, path: str | None = None, text: str | None = None, **form) -> str:
        """POST a transcript (file upload or JSON content) and return the job id."""
        if path is not None:
            with open(path, "rb") as handle:
                response = requests.post(f"{self.url}/services/{service}/generate",
                                         files={"file": (os.path.basename(path), handle)}, data=form, timeout=30)
        else:
            response = requests.post(f"{self.url}/services/{service}/generate", json={"content": text, **form},
                                     timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["jobId"]

    def result(self, job_id: str) -> dict:
        """GET /results/<id> as JSON (with the HTTP status under "_http")."""
        response = requests.get(f"{self.url}/results/{job_id}", timeout=10)
        return {**response.json(), "_http": response.status_code}

    def wait_finished(self, job_id: str, timeout: float = 60.0) -> dict:
        """Poll until the job is complete or failed; return its result."""
        return wait_until(lambda: (r := self.result(job_id))["status"] in ("complete", "failed") and r, timeout,
                          what=f"job {job_id} to finish")

    def logs(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the supervisor and wait for the whole group to exit."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        wait_until(lambda: not _group_alive(self.proc.pid), 15, what="all gateway processes to exit")
        return code

    def kill9(self) -> None:
        """SIGKILL every process of the gateway at once (supervisor, Gunicorn master and workers, runner)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        wait_until(lambda: not _group_alive(self.proc.pid), 15, what="all gateway processes to die")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(timeout=20)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None and _group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
