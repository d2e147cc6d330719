"""End-to-end fixtures: a REAL engine (vLLM's CPU build, llama.cpp's server) serving SmolLM2-135M,
and the real gateway (`python3 -m app`) in front of it.

Skipped unless LLM_GATEWAY_E2E=1 (CI sets it): on a fresh machine, installing the engines takes
minutes. LLM_GATEWAY_E2E_ENGINES=vllm,llamacpp (the default) picks the engines. The engines, model
and logs are cached by scripts/engine.py under ${LLM_GATEWAY_CACHE:-~/.cache/llm-gateway}.
Times and the token-count comparison are printed in an "e2e report" section at the end of the run.
"""
from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.processes import Gateway, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_SCRIPT = os.path.join(ROOT, "scripts", "engine.py")
SERVICES_DIR = os.path.join(ROOT, "services")
KINDS = [k.strip() for k in os.environ.get("LLM_GATEWAY_E2E_ENGINES", "vllm,llamacpp").split(",") if k.strip()]
SKIP_REASON = ("end-to-end tests against a real engine are off: set LLM_GATEWAY_E2E=1 to run them"
               " (CI does; a fresh machine spends minutes installing vLLM and building llama.cpp)")

REPORT: list[str] = []        # lines for the "e2e report" section

# The flavor the e2e jobs use: the shipped smollm2-135m with its engine work bounded. A 135M model
# decoding greedily rambles to maxGenerationLength; at 512 tokens a call took ~250 s on a CPU
# without AVX-512. A reduced turn needs far less. A cut answer is handled as in production (a
# loop is cut off, else the batch is redone in halves down to single turns, a cut single turn is
# kept with a warning): with 2 turns a batch, that is at most 3 calls a batch (budget.plan_work).
E2E_FLAVOR = "smollm2-135m-e2e"
E2E_OVERRIDES = {"maxGenerationLength": 96, "maxNewTurns": 2}
# For the context-limit test: batches packed up to the context (4096 tokens), answers as short.
FULL_FLAVOR = "smollm2-135m-e2e-full"
FULL_OVERRIDES = {"maxGenerationLength": 96, "maxNewTurns": 64}
# For P10 (issue 13): the e2e flavor with the transcript as the context of fields-2 batches.
FAST_FLAVOR = "smollm2-135m-e2e-fast"
FAST_OVERRIDES = {**E2E_OVERRIDES, "contextSource": "transcript"}


def engine_module():
    """scripts/engine.py as a module (it is a script, not a package): its paths, e.g. hf_model_dir()."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("llm_gateway_engine_script", ENGINE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(line: str) -> None:
    REPORT.append(line)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end tests against a real engine (LLM_GATEWAY_E2E=1)")


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("e2e report")
        for line in REPORT:
            terminalreporter.write_line(line)


@dataclass
class Engine:
    kind: str
    api_base: str          # http://127.0.0.1:PORT/v1
    root: str              # http://127.0.0.1:PORT
    model: str
    log: str               # the engine's log file
    pid: int               # the engine's process, leader of its process group

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def engine_cli(*args: str, timeout: float) -> str:
    """Run scripts/engine.py; its output goes to the report (times) and to the error on failure."""
    proc = subprocess.run([sys.executable, ENGINE_SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    for line in proc.stdout.splitlines():       # "[engine] <step>: 12.3 s"
        if re.match(r"\[engine\] (?!times:).*: [\d.]+ s$", line):
            report(line)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/engine.py {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="session", params=KINDS)
def engine(request):
    """A real engine of each kind, prepared (cached), started on a free loopback port, always stopped."""
    if os.environ.get("LLM_GATEWAY_E2E") != "1":
        pytest.skip(SKIP_REASON)
    kind = request.param
    port = free_port()
    started = time.monotonic()
    try:
        out = engine_cli("start", "--kind", kind, "--port", str(port), timeout=3000)
        info = json.loads(out.strip().splitlines()[-1])
        report(f"[{kind}] prepare + start: {time.monotonic() - started:.1f} s")
        yield Engine(kind=kind, api_base=info["api_base"], root=info["api_base"][: -len("/v1")],
                     model=info["model"], log=info["log"], pid=info["pid"])
    finally:
        stopped = time.monotonic()
        engine_cli("stop", "--kind", kind, "--port", str(port), timeout=120)
        report(f"[{kind}] stop: {time.monotonic() - stopped:.1f} s;"
               f" engine up for {time.monotonic() - started:.1f} s in all")


@pytest.fixture(scope="session")
def speed(engine):
    """The engine's speed, measured once at its start: every e2e deadline is derived from it."""
    from tests.e2e.budget import calibrate
    with open(os.path.join(ROOT, "tests", "data", "fr", "fr_medium_an_qag_2013-02-12.txt"), encoding="utf-8") as handle:
        long_text = handle.read()[:6000]          # about 1,500-2,000 tokens: prefill dominates
    started = time.monotonic()
    measured = calibrate(engine.api_base, engine.model, long_text)
    report(f"[{engine.kind}] calibration: {measured} ({time.monotonic() - started:.1f} s)")
    return measured


@pytest.fixture(scope="session")
def e2e_services(tmp_path_factory) -> str:
    """The shipped services folder, plus E2E_FLAVOR and FULL_FLAVOR on each service that has smollm2-135m
    (and FAST_FLAVOR on those with fields 2)."""
    folder = tmp_path_factory.mktemp("e2e-services")
    for name in os.listdir(SERVICES_DIR):
        shutil.copy(os.path.join(SERVICES_DIR, name), folder / name)
        if not name.endswith(".json"):
            continue
        with open(folder / name, encoding="utf-8") as handle:
            manifest = json.load(handle)
        shipped = next((f for f in manifest["flavor"] if f["name"] == "smollm2-135m"), None)
        if shipped is not None:
            manifest["flavor"].append({**shipped, **E2E_OVERRIDES, "name": E2E_FLAVOR})
            manifest["flavor"].append({**shipped, **FULL_OVERRIDES, "name": FULL_FLAVOR})
            if manifest.get("fields") == 2:
                manifest["flavor"].append({**shipped, **FAST_OVERRIDES, "name": FAST_FLAVOR})
            with open(folder / name, "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=2)
    return str(folder)


@pytest.fixture(scope="session")
def recorder(engine):
    """A pass-through to the engine that keeps each chat completion's prompt and usage."""
    from tests.e2e.recorder import Recorder
    with Recorder(engine.root) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def gateway(engine, recorder, e2e_services, tmp_path_factory):
    """The real gateway (`python3 -m app`, 2 Gunicorn workers + runner) pointed at the engine,
    through the recorder (what the engine said about each call is then known)."""
    tmp = tmp_path_factory.mktemp(f"gateway-{engine.kind}")
    gw = Gateway(tmp, api_base=recorder.api_base, services_dir=e2e_services, workers=2)
    started = time.monotonic()
    try:
        gw.start(timeout=120)
        report(f"[{engine.kind}] gateway start: {time.monotonic() - started:.1f} s")
        yield gw
    finally:
        gw.stop()
