"""Starting real processes for tests: the fake engine and `python3 -m app`, deployed one of two ways.

- embedded: `python3 -m app` alone (supervisor, Gunicorn, the local runner) on a SQLite file;
- scaled: `python3 -m app` with BROKER_URL + RESULT_DB_URL (the web part only) and
  `python3 -m app worker` processes that run the jobs (Celery on Redis, the store on PostgreSQL).

`Gateway` starts, stops and kills the whole deployment: tests say what they check once and
run against both (the `deployment` fixture in tests/conftest.py). scripts/bench.py and
scripts/scale_bench.py start their processes with this module too.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import requests

from app.client import GatewayClient, PollTimeout, poll
from app.jobs.store import JobStore


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


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL it if it lingers past `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:        # what is left of the group (the leader may have exited before its children)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


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
        """POST /_control (faults, reset, and settings: delay, token_delay, max_in_flight, out_tokens ...)."""
        return requests.post(f"{self.root}/_control", json=body, timeout=5).json()

    def state(self, prompts: bool = True) -> dict:
        """GET /_control: the recorded requests (without their prompts unless asked), faults pending,
        calls in flight and waiting for a slot, and the most ever in flight since the last reset."""
        return requests.get(f"{self.root}/_control", params=None if prompts else {"prompts": "0"},
                            timeout=30).json()

    def chat_requests(self, prompts: bool = True) -> list[dict]:
        """The chat requests the fake has received."""
        return [r for r in self.state(prompts)["requests"] if r.get("path", "").endswith("/chat/completions")]

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until no chat call is in flight or waiting (cancelled jobs may leave some running)."""
        def idle() -> bool:
            state = self.state(prompts=False)
            return state["in_flight"] == 0 and state["waiting"] == 0

        wait_until(idle, timeout, interval=0.2, what="the fake engine to be idle")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass(frozen=True)
class Deployment:
    """How a test deploys the gateway: "embedded" (SQLite + the local runner) or "scaled"
    (`env` holds BROKER_URL, RESULT_DB_URL and short timeouts; `workers` worker processes run the jobs)."""

    name: str = "embedded"
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 2
    jobs_per_worker: int = 2         # each worker's --max_concurrent_jobs

    @property
    def scaled(self) -> bool:
        return self.name == "scaled"

    @property
    def job_role(self) -> str:
        """The role of the processes that run jobs (the `role` of their log lines)."""
        return "worker" if self.scaled else "runner"


EMBEDDED = Deployment()


class WorkerProcess:
    """`python3 -m app worker` in its own process group (so kill -9 takes all of it, as a lost machine)."""

    def __init__(self, tmp_path, name: str, api_base: str, services_dir: str, env: dict[str, str],
                 max_concurrent_jobs: int = 2):
        self.name = name
        self.log_path = str(tmp_path / f"worker-{name}.log")
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--api_base", api_base, "--services_dir", services_dir,
             "--max_concurrent_jobs", str(max_concurrent_jobs)], env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def logs(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# What decides the deployment: never inherited from the environment the tests run in.
_DEPLOYMENT_ENV = ("BROKER_URL", "RESULT_DB_URL")


class Gateway:
    """The real `python3 -m app` (supervisor, Gunicorn workers, and the runner or, scaled, worker processes)."""

    def __init__(self, tmp_path, api_base: str | None, services_dir: str = "services", workers: int = 2,
                 port: int | None = None, env: dict[str, str] | None = None, db_path: str | None = None,
                 deployment: Deployment = EMBEDDED):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp_path = tmp_path
        self.api_base = api_base
        self.services_dir = services_dir
        self.deployment = deployment
        self.db_path = db_path or str(tmp_path / "results.sqlite")
        self.log_path = str(tmp_path / f"gateway-{self.port}.log")
        # api_base None: the gateway's own default (--api_base http://localhost:9000/v1), as a newcomer runs it.
        self.args = [*(["--api_base", api_base] if api_base else []), "--service_port", str(self.port),
                     "--workers", str(workers), "--db_path", self.db_path, "--services_dir", services_dir,
                     "--host", "127.0.0.1"]
        base = {k: v for k, v in os.environ.items() if k not in _DEPLOYMENT_ENV}
        self.env = {**base, **deployment.env, **(env or {})}      # the workers get the same settings
        self.proc: subprocess.Popen | None = None
        self.workers: list[WorkerProcess] = []
        self.log = None

    @property
    def store_location(self) -> str:
        """Where the jobs are: the SQLite file, or RESULT_DB_URL (scaled)."""
        return self.env.get("RESULT_DB_URL") or self.db_path

    def store(self) -> JobStore:
        """A JobStore on this deployment's jobs, for checks the API does not show (close it after)."""
        return JobStore(self.store_location)

    def start(self, timeout: float = 60.0) -> "Gateway":
        """Start every process and wait until every part answers (web up, runner or a worker beating)."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the processes: `python3 -m app`, and the workers when scaled (each group its own session)."""
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "app", *self.args], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.deployment.scaled:
            # Started at once with the web node: their metric files only appear at their first engine
            # call, long after the supervisor has emptied PROMETHEUS_MULTIPROC_DIR at its start.
            self.workers = [WorkerProcess(self.tmp_path, f"{self.port}-{i}", self.api_base, self.services_dir,
                                          self.env, self.deployment.jobs_per_worker)
                            for i in range(self.deployment.workers)]

    def wait_ready(self, timeout: float = 60.0) -> None:
        # Workers beat as the runner, so `runner.alive` means some process will run the jobs.
        wait_until(lambda: requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200, timeout,
                   what="the gateway's /healthcheck")
        key = self.api_key       # /health needs a key when keys are on
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        wait_until(lambda: requests.get(f"{self.url}/health", headers=headers, timeout=5).json()["runner"]["alive"],
                   timeout, what="the runner's heartbeat")

    @property
    def api_key(self) -> str | None:
        """The first of the gateway's keys (API_KEYS), or None when keys are off."""
        return self.env.get("API_KEYS", "").split(",")[0].strip() or None

    @property
    def processes(self) -> list[subprocess.Popen]:
        """The leader of each process group: the supervisor, then the workers."""
        return [self.proc, *(w.proc for w in self.workers)]

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
        """Poll (app.client's poll) until the job is complete or failed; return its result, with the
        HTTP status under "_http" as result() does."""
        client = GatewayClient(self.url, self.api_key, timeout=10)     # one per wait: tests wait in threads
        try:
            body = poll(client, job_id, interval=0.1, timeout=timeout)
        except PollTimeout:
            raise AssertionError(f"timed out after {timeout} s waiting for job {job_id} to finish") from None
        return {**body, "_http": client.last_status}

    def cancel(self, job_id: str) -> dict:
        """DELETE /results/<id>: cancel a queued or running job, or delete a finished one."""
        return requests.delete(f"{self.url}/results/{job_id}", timeout=30).json()

    def logs(self) -> str:
        """Every process's output: the web node's (supervisor, Gunicorn, runner), then each worker's."""
        with open(self.log_path) as handle:
            text = handle.read()
        return text + "".join(worker.logs() for worker in self.workers)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the supervisor and every worker at once and wait for them all to exit.

        Returns 0 when every one exited 0, else the first other exit code."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in self.processes]
        wait_until(lambda: not any(_group_alive(p.pid) for p in self.processes), 15,
                   what="all gateway processes to exit")
        return next((code for code in codes if code), 0)

    def kill9(self) -> None:
        """SIGKILL every process of the deployment at once (supervisor, Gunicorn, runner; the workers)."""
        for proc in self.processes:
            os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.processes:
            proc.wait()
        wait_until(lambda: not any(_group_alive(p.pid) for p in self.processes), 15,
                   what="all gateway processes to die")

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL what is left) and close the logs; safe after kill9."""
        if self.proc is None:
            return
        if any(proc.poll() is None for proc in self.processes):
            try:
                self.terminate(timeout=20)
            except Exception:
                pass
        for proc in self.processes:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.log.close()
        for worker in self.workers:
            worker.log.close()


def group_pids(pgid: int) -> list[int]:
    """Every live process of a process group we started (from /proc)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:       # gone meanwhile (ProcessLookupError is an OSError)
                pass
    return pids


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
