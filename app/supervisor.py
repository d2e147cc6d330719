"""`python3 -m app`: start the web server and the job runner as child processes and watch them.

The runner is its own process (not threads in the Gunicorn master before the fork), so a
worker restart never touches running jobs. If the runner dies it is started again; if the
web server dies, everything stops. SIGTERM/SIGINT stop both children cleanly: the runner
puts an interrupted job back in the queue with its checkpoint. With BROKER_URL set there is
no runner: jobs go to the Celery workers (`python3 -m app worker`), so only the web part runs.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from app.telemetry import MULTIPROC_ENV, reset_multiproc_dir
from app.settings import Settings, setting_fields

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def child_environment(settings: Settings, metrics_dir: str | None = None) -> dict[str, str]:
    """The environment that hands every setting to a child (the key is not put on the command line)."""
    env = dict(os.environ)
    if metrics_dir:
        env[MULTIPROC_ENV] = metrics_dir   # web workers and the runner share their counters there
    for f in setting_fields():
        value = getattr(settings, f.name)
        if f.metadata["env"]:
            env[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:
    # If the supervisor is killed (even with SIGKILL), the kernel sends SIGTERM to the child.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_child(role: str, settings: Settings, metrics_dir: str | None = None) -> subprocess.Popen:
    """Start `python3 -m app <role>` with the settings in its environment."""
    return subprocess.Popen([sys.executable, "-m", "app", role], env=child_environment(settings, metrics_dir),
                            preexec_fn=_die_with_parent)


def prepare_metrics_dir() -> tuple[str, bool]:
    """The metrics folder (PROMETHEUS_MULTIPROC_DIR, or a new temporary one), emptied; and whether we made it."""
    given = os.environ.get(MULTIPROC_ENV)
    path = given or tempfile.mkdtemp(prefix="llm-gateway-metrics-")
    reset_multiproc_dir(path)
    return path, not given


def supervise(settings: Settings, poll_interval: float = 0.5) -> int:
    """Run web + runner until a signal or the web server's exit; return the exit code."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics_dir, made = prepare_metrics_dir()
    children = {}
    if not settings.broker_url:
        children["runner"] = start_child("runner", settings, metrics_dir)
    children["web"] = start_child("web", settings, metrics_dir)
    if "runner" in children:
        log.info("supervisor: web (pid %d) on %s:%d, runner (pid %d)", children["web"].pid, settings.host,
                 settings.service_port, children["runner"].pid)
    else:
        log.info("supervisor: web (pid %d) on %s:%d; jobs go to the Celery workers (BROKER_URL), no local runner",
                 children["web"].pid, settings.host, settings.service_port)
    code = 0
    while not stop.is_set():
        if children["web"].poll() is not None:
            log.error("supervisor: the web server exited (code %s); stopping", children["web"].returncode)
            code = 1
            break
        if "runner" in children and children["runner"].poll() is not None:
            log.error("supervisor: the runner exited (code %s); starting it again", children["runner"].returncode)
            time.sleep(1.0)
            children["runner"] = start_child("runner", settings, metrics_dir)
        stop.wait(poll_interval)
    stop_children(children.values(), grace=max(5.0, settings.timeout / 4 + 2))
    if made:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def stop_children(children, grace: float) -> None:
    """SIGTERM each child, wait up to `grace` seconds, then SIGKILL what is left."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("supervisor: pid %d did not stop in %.0f s; killing it", child.pid, grace)
            child.kill()
            child.wait()
