#!/usr/bin/env python3
"""Benchmarks with targets: the gateway must keep the engine busy and add nothing.

    python3 scripts/bench.py                  # every case, full sizes (about 4 minutes)
    python3 scripts/bench.py --smoke          # tiny sizes, well under a minute; exits 0 even
                                              # when a ratio misses (CI runs it, never asserts timings)
    python3 scripts/bench.py --only P3,P5     # some cases
    python3 scripts/bench.py --json out.json  # also write the results as JSON
    python3 scripts/bench.py --profile DIR    # py-spy the runner during P1 and the web workers
                                              # during P5, cProfile P3's pipeline; summaries in DIR

It starts what it needs on loopback, with the tests' own harness (tests/processes.py): the fake
engine in its latency mode (tests/fake_engine.py: a fixed cost per call plus a cost per output
token, N requests served at once, the others queued in arrival order, no /tokenize), the real
gateway (`python3 -m app`, Gunicorn + runner) on a temporary database and services folder, and,
for P5, a bare Flask+SQLite endpoint under the same Gunicorn settings.
Every figure is a ratio of two things measured side by side in the same run, so a slow or
busy machine moves both. The table gives each figure, its target and pass/fail.

| case | figure | target |
|---|---|---|
| P1 | wall time of 8 concurrent jobs / wall time of 1 job (engine serves 8 at once, MAX_CONCURRENT_JOBS=8) | <= 1.15 |
| P2 | one job's wall time (created -> finished) / engine time of its calls (all sequential, fields 2) | <= 1.05 |
| P3 | parse + chunk + plan of the largest shared transcript / one raw tokenizer pass over its text; peak memory for a 10 MB transcript is reported | <= 2.0 |
| P4 | engine calls for tests/data/fr/fr_medium_an_qag_2013-02-12.txt with the seed's cra settings; every turn sent once, in order, with its speaker | <= 50 |
| P5 | GET /results/<id> vs a bare Flask+SQLite endpoint reading one row, while 8 jobs run (wrk, 8 connections): requests per server CPU-second, gateway / bare; the raw requests/s ratio is shown too (on a shared machine it follows the neighbours' load) | >= 0.7, p99 < 50 ms |
| P6 | a fields:1 job's wall time / (ceil(batches / capacity 4) x per-call engine time), default settings | <= 1.2 |
| P7 | a cra job with contextSource "transcript" on fr_medium: wall time / (ceil(batches / capacity 64) x per-call engine time), the flavor's maxConcurrentRequests 64 (what ENGINE_CONCURRENCY=64 gives every flavor) | <= 1.3 |
| P8 | that job's wall time / the same transcript's rolling-summary job (contextSource "summary") on the same engine | <= 0.1 |
| P9 | that job's time from submission to the first `partial` of GET /results/<id> / one call's engine time | <= 1.5 |
| H1 | plan time (parse + plan_batches) of a 1 MB spaceless line / one raw tokenizer pass over it | <= 5 |
| H2 | bytes written to the store per job / input size: a 2.5 MB, 200k-line cra job (fields 2) | <= 5 |
| V1 | the answer checks' CPU time / the engine's time, over P2's cra job (output "turns": every answer aligned turn by turn, figures and names looked up), as its usage counts both | <= 0.02 |
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402  (after the path set-up, like the app's imports below)

from tests.processes import FakeEngineProcess, Gateway, free_port, group_pids, stop_group, wait_until  # noqa: E402

FR_MEDIUM = ROOT / "tests/data/fr/fr_medium_an_qag_2013-02-12.txt"
DATA_DIR = ROOT / "tests/data"
MODEL = "bench-model"
# The seed's cra flavor settings (services/cra.json "mixtral"), used by every case.
SEED_FLAVOR = {"name": "seed", "modelName": MODEL, "totalContextLength": 32768,
               "maxGenerationLength": 2048, "createNewTurnAfter": 178, "summaryTurns": 2,
               "maxNewTurns": 6, "temperature": 0.1, "top_p": 0.8}
JOBS_AT_ONCE = 8


@dataclass(frozen=True)
class Sizes:
    """How long and how big each case is: full runs measure, smoke runs only exercise."""

    base_ms: float              # engine: fixed cost of a call
    per_token_ms: float         # engine: cost of one output token
    single_runs: int            # P2/P4 repeats (the median is kept)
    p3_repeats: int             # P3 interleaved repeats (medians compared)
    memory_mb: float            # P3: size of the generated transcript for peak memory
    p5_base_ms: float           # P5: slower calls so the 8 background jobs outlive the load test
    p5_seconds: float           # P5: length of one load round
    p5_rounds: int              # P5: rounds per endpoint, interleaved
    p6_capacity: int            # P6: engine capacity
    p6_out_tokens: int          # P6: every answer this long, so every call costs the same
    p6_base_ms: float
    job_timeout: float          # seconds a case waits for its jobs
    h1_chars: int               # H1: length of the spaceless line
    h1_repeats: int
    h2_lines: int               # H2: lines of the generated transcript (12.5 bytes each)
    h2_base_ms: float           # H2: engine cost per call (the case counts bytes, not time)
    p7_base_ms: float           # P7-P9: engine cost per call (every answer p6_out_tokens long, 0 per token)
    p7_capacity: int            # P7-P9: engine capacity (the flavor sends up to P7_CAPACITY at once)


P7_CAPACITY = 64             # the transcript-context flavor's maxConcurrentRequests, the full run's engine capacity
FULL = Sizes(base_ms=150, per_token_ms=10, single_runs=2, p3_repeats=9, memory_mb=10,
             p5_base_ms=2000, p5_seconds=2, p5_rounds=10, p6_capacity=4, p6_out_tokens=40,
             p6_base_ms=800, job_timeout=240, h1_chars=1_000_000, h1_repeats=3, h2_lines=200_000,
             h2_base_ms=5, p7_base_ms=2000, p7_capacity=P7_CAPACITY)
# Smoke sizes only exercise every case (tests/test_bench_smoke.py): P5's rounds are half a second
# (wrk's shortest run is 1 s) and the memory run a quarter of a MB. P7-P9's engine serves 8 calls
# at once: with 64, all 43 short calls end together and the job is over before a poll can see
# its first partial report.
SMOKE = Sizes(base_ms=10, per_token_ms=0.2, single_runs=1, p3_repeats=3, memory_mb=0.25,
              p5_base_ms=150, p5_seconds=0.5, p5_rounds=1, p6_capacity=4, p6_out_tokens=10,
              p6_base_ms=20, job_timeout=60, h1_chars=100_000, h1_repeats=1, h2_lines=20_000,
             h2_base_ms=1, p7_base_ms=300, p7_capacity=8)


CASES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "H1", "H2", "V1")
WHAT = {"P1": ("8 concurrent jobs / 1 job, wall time", "<= 1.15"),
        "P2": ("1 job wall / engine time of its sequential calls", "<= 1.05"),
        "P3": ("parse+chunk+plan of the largest transcript / raw tokenizer pass", "<= 2.0"),
        "P4": ("engine calls, fr_medium, seed cra settings", "<= 50, every turn sent"),
        "P5": ("GET /results/<id> requests per server CPU-second / bare Flask+SQLite, 8 jobs running",
               ">= 0.7, p99 < 50 ms"),
        "P6": ("fields:1 job wall / (ceil(batches/4) x per-call time)", "<= 1.2"),
        "P7": ("cra contextSource transcript, fr_medium: wall / (ceil(batches/64) x per-call time)", "<= 1.3"),
        "P8": ("that job's wall / the rolling-summary job's wall", "<= 0.1"),
        "P9": ("that job's time to the first partial / one call's time", "<= 1.5"),
        "H1": ("plan time of a 1 MB spaceless line / raw tokenizer pass", "<= 5"),
        "H2": ("bytes written to the store per job / input size, 2.5 MB 200k-line cra job", "<= 5"),
        "V1": ("answer checks per batch / engine call time, the P2 cra job (per-turn checks)", "<= 0.02")}


@dataclass
class Row:
    """One line of the table."""

    case: str
    what: str
    figure: float | None = None
    target: str = ""
    ok: bool | None = None
    detail: str = ""
    error: str | None = None

    def shown_figure(self) -> str:
        if self.error:
            return "error"
        if self.figure is None:
            return "-"
        return f"{self.figure:.0f}" if self.figure >= 10 and float(self.figure).is_integer() \
            else f"{self.figure:.3f}"

    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        return "pass" if self.ok else "FAIL"

    @classmethod
    def of(cls, case: str, error: str | None = None) -> "Row":
        """The case's row before it is measured (or when it failed): what it measures and its target."""
        what, target = WHAT[case]
        return cls(case, what, target=target, error=error)

    def judge(self, figure: float, *more: bool) -> None:
        """Record the figure; the row passes when it meets the comparison its target starts with
        (the target's text is the only place a limit is written) and every further condition of
        the target (`more`, e.g. P5's p99) holds."""
        op, limit = re.match(r"(<=|>=)\s*([\d.]+)", self.target).groups()
        self.figure = figure
        self.ok = (figure <= float(limit) if op == "<=" else figure >= float(limit)) and all(more)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- processes (tests/processes.py starts them) ---------------------------------------------

def set_engine(engine: FakeEngineProcess, capacity: int, base_ms: float, per_token_ms: float = 0.0,
               out_tokens: int | None = None) -> None:
    """Forget the engine's records and set its latency model: base_ms + per_token_ms x output tokens
    a call, `capacity` calls at once, every answer `out_tokens` long when that is set."""
    engine.control(reset=True, max_in_flight=capacity, delay=base_ms / 1000, token_delay=per_token_ms / 1000,
                   out_tokens=out_tokens)


def engine_calls(engine: FakeEngineProcess, prompts: bool = False) -> tuple[list[dict], int]:
    """The chat calls the engine has answered since its last reset, each with `engine_s`, its time
    from getting a slot to its answer (the wait for a slot is the engine's queue, not its work);
    and the most calls it served at once."""
    state = engine.state(prompts)
    calls = [dict(call, engine_s=call["finished"] - call["started"]) for call in state["requests"]
             if call["path"] == "/v1/chat/completions" and call["started"] is not None
             and call["finished"] is not None]
    return calls, state["max_seen_in_flight"]


def wait_jobs(gateway: Gateway, job_ids: list[str], timeout: float) -> list[dict]:
    """Every job's final result, within one deadline; a job that did not complete fails the case."""
    deadline = time.monotonic() + timeout
    results = [gateway.wait_finished(job_id, max(0.0, deadline - time.monotonic())) for job_id in job_ids]
    failed = [r for r in results if r["status"] != "complete"]
    if failed:
        raise RuntimeError(f"job {failed[0]['jobId']} {failed[0]['status']}: {failed[0].get('error')}")
    return results


def role_pids(gateway: Gateway) -> dict[str, list[int]]:
    """Runner and Gunicorn worker pids (children of our supervisor), from /proc."""
    found: dict[str, list[int]] = {"runner": [], "web": []}
    for pid in group_pids(gateway.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[-2:-1] == [b"runner"] or b"runner" in cmdline[-2:]:
            found["runner"].append(pid)
        elif b"web" in cmdline[-2:] or any(b"-web" in part for part in cmdline):
            found["web"].append(pid)
    return found


def tokenizer_line(gateway: Gateway) -> str:
    """What the runner logged about the tokenizer it resolved."""
    try:
        lines = [line for line in gateway.logs().splitlines() if "tokenizer for flavor" in line]
    except OSError:
        return ""
    return lines[-1].split("tokenizer for flavor", 1)[1].strip() if lines else ""


# --- the bare endpoint P5 compares with ---------------------------------------------------

BARE_COLUMNS = ("id, service, flavor, status, progress, message, result, error, usage, warnings,"
                " created_at, started_at, finished_at")


def bare_app(db_path: str):
    """A bare Flask app reading one row from the same SQLite file: the floor for GET /results/<id>."""
    from flask import Flask, jsonify

    app = Flask("bare")
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(db_path, timeout=30, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    @app.get("/one/<job_id>")
    def one(job_id: str):
        row = connection().execute(f"SELECT {BARE_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return jsonify({"error": "not_found"}), 404
        return jsonify(dict(row)), 200 if row["status"] in ("complete", "failed") else 202

    @app.get("/healthcheck")
    def healthcheck():
        return "1"

    return app


def run_bare(port: int, db_path: str, workers: int) -> None:
    """`bench.py _bare`: serve bare_app under the gateway's own Gunicorn settings."""
    from app.server import GatewayServer
    from app.settings import Settings

    class BareServer(GatewayServer):
        def load(self):
            return bare_app(db_path)

    BareServer(Settings(host="127.0.0.1", service_port=port, workers=workers, service_name="bare")).run()


class Bare:
    """The bare endpoint in its own process group."""

    def __init__(self, workdir: Path, db_path: str, workers: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "bare.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_bare", "--port", str(self.port),
             "--db", db_path, "--workers", str(workers)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200, 60,
                   what="the bare endpoint")

    def stop(self) -> None:
        stop_group(self.proc, grace=10)
        self._log.close()


# --- load generation (P5) ------------------------------------------------------------------

def ensure_wrk(allow_install: bool) -> str | None:
    """The wrk binary; installed from Debian (apt-get) when missing and allowed."""
    found = shutil.which("wrk")
    if found or not allow_install:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        log("wrk is missing and cannot be installed here (needs apt-get as root); "
            "install it with `apt-get install wrk`")
        return None
    log("wrk is missing: installing it from Debian (apt-get update && apt-get install -y wrk) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([apt, "update", "-qq"], env=env, stdout=subprocess.DEVNULL, check=False, timeout=300)
    subprocess.run([apt, "install", "-y", "-qq", "wrk"], env=env, stdout=subprocess.DEVNULL, check=False,
                   timeout=300)
    found = shutil.which("wrk")
    log("wrk installed" if found else "wrk could not be installed")
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not match:
        raise ValueError(f"unknown duration {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, seconds: float, connections: int, threads: int = 2) -> dict:
    """One wrk run: requests/s, p99 in ms, non-2xx responses."""
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                          "--latency", "--timeout", "10s", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "requests": requests_done, "p99_ms": p99, "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else ""}


def run_python_load(url: str, seconds: float, connections: int) -> dict:
    """A fallback load generator (threads, keep-alive) for when wrk is missing: same figures."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    bad = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine = []
        while time.monotonic() < deadline:
            started = time.monotonic()
            conn.request("GET", parts.path)
            response = conn.getresponse()
            response.read()
            mine.append((time.monotonic() - started) * 1000)
            if response.status >= 400:
                bad[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    return {"rps": len(latencies) / elapsed, "requests": len(latencies), "p99_ms": p99, "non2xx": bad[0],
            "socket_errors": ""}


def cpu_per_request(runs: list[dict]) -> float:
    """Microseconds of server CPU per request over all these rounds."""
    return sum(r["cpu_s"] for r in runs) / max(1, sum(r["requests"] for r in runs)) * 1e6


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far (threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


# --- the cases -------------------------------------------------------------------------------

def write_services(folder: Path) -> None:
    """cra (fields 2, "output": "turns" as shipped: every answer checked turn by turn) and cred
    (fields 1) with the shipped templates and the seed's cra settings; and "context", cra's template
    with "seed" and "fast" (the transcript as context, 64 calls in flight) for P7-P9. Those cases
    cut every answer to the same length (out_tokens) so every call costs the same: as free text
    ("output": "summary"), whose turns are not checked one by one, else each cut answer would be
    asked again for the turns it lost and P7-P9 would measure that instead of the schedule."""
    folder.mkdir(parents=True, exist_ok=True)
    fast = {**SEED_FLAVOR, "name": "fast", "contextSource": "transcript", "maxConcurrentRequests": P7_CAPACITY}
    for name, template, fields, flavors, output in (("cra", "cra", 2, [SEED_FLAVOR], "turns"),
                                                     ("cred", "cred", 1, [SEED_FLAVOR], "summary"),
                                                     ("context", "cra", 2, [SEED_FLAVOR, fast], "summary")):
        manifest = {"type": "summary", "fields": fields, "name": name, "description": {"en": "benchmark"},
                    "backend": "vLLM", "output": output, "flavor": [dict(f) for f in flavors]}
        (folder / f"{name}.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        shutil.copyfile(ROOT / "services" / f"{template}.txt", folder / f"{name}.txt")


def job_wall(result: dict) -> float:
    """Seconds from the submission to the end of the job, by the gateway's own clock."""
    return result["finishedAt"] - result["createdAt"]


def sent_turn_sections(prompts: list[str], template: str) -> list[str]:
    """The "new turns" part of each prompt of a fields:2 template (what follows its last `{}`)."""
    head, tail = template.rsplit("{}", 1)
    between = head.rsplit("{}", 1)[1] if "{}" in head else head
    sections = []
    for prompt in prompts:
        start = prompt.rfind(between)
        end = len(prompt) - len(tail) if tail and prompt.endswith(tail) else len(prompt)
        sections.append(prompt[start + len(between):end] if start >= 0 else "")
    return sections


def check_every_turn_sent(turns, sections: list[str]) -> str | None:
    """None when the sent lines are every turn, once, in order, with its speaker (virtual turns
    keep the speaker and split the text); else what is wrong."""
    lines = [line for section in sections for line in section.split("\n") if line.strip()]
    position = 0
    for index, turn in enumerate(turns):
        remaining = turn.text.split()
        label = f"{turn.speaker} : " if turn.speaker else ""
        while remaining:
            if position >= len(lines):
                return f"turns {index + 1}..{len(turns)} of {len(turns)} were never sent"
            line = lines[position]
            if not line.startswith(label):
                return f"line {position + 1} {line[:60]!r} should belong to turn {index + 1} ({turn.speaker!r})"
            words = line[len(label):].split()
            if words != remaining[:len(words)] or not words:
                return f"line {position + 1} {line[:60]!r} does not continue turn {index + 1}"
            remaining = remaining[len(words):]
            position += 1
    if position != len(lines):
        return f"{len(lines) - position} line(s) sent beyond the last turn"
    return None


class Bench:
    """Runs the cases against one engine, one gateway and (for P5) one bare endpoint."""

    def __init__(self, sizes: Sizes, smoke: bool, profile_dir: Path | None, workdir: Path):
        self.sizes, self.smoke, self.profile_dir, self.workdir = sizes, smoke, profile_dir, workdir
        self.engine: FakeEngineProcess | None = None
        self.gateway: Gateway | None = None
        self.single: list[dict] = []        # results of the single-job runs (P2, P4, P1's baseline)
        self.context: dict[str, Any] = {}   # the transcript-context and rolling-summary jobs (P7-P9)

    # -- set-up --------------------------------------------------------------------------

    def start(self) -> None:
        services = self.workdir / "services"
        write_services(services)
        # No /tokenize: the gateway counts with its default tokenizer, as P3 and H1 measure it.
        self.engine = FakeEngineProcess("--tokenize", "none")
        set_engine(self.engine, JOBS_AT_ONCE, self.sizes.base_ms, self.sizes.per_token_ms)
        log(f"fake engine (latency mode) at {self.engine.base_url}")
        # MAX_CONCURRENT_JOBS=8 for P1 and P5; everything else is the default (ENGINE_CONCURRENCY 8).
        self.gateway = Gateway(self.workdir, self.engine.base_url, services_dir=str(services), workers=2,
                               env={"MAX_CONCURRENT_JOBS": str(JOBS_AT_ONCE)}).start(timeout=90)
        log(f"gateway at {self.gateway.url} (log {self.gateway.log_path})")
        # Warm-up: the runner resolves the flavor's tokenizer once per process; the first job pays it.
        self.run_job("cra", DATA_DIR / "fr/fr_small_an_qag_securite_alimentaire_2013-02-12.txt")
        log(f"runner's tokenizer: {tokenizer_line(self.gateway) or 'not logged'}")

    def stop(self) -> None:
        if self.gateway:
            self.gateway.stop()
        if self.engine:
            self.engine.stop()

    def run_job(self, service: str, path: Path, timeout: float | None = None, flavor: str = "seed") -> dict:
        """Submit one job and wait for it (`job_timeout` unless said); its final result."""
        job_id = self.gateway.submit(service, str(path), flavor=flavor)
        return wait_jobs(self.gateway, [job_id], timeout or self.sizes.job_timeout)[0]

    # -- P2 + P4 (one job alone), also P1's baseline ---------------------------------------

    def run_single(self) -> None:
        """Run the fr_medium cra job alone `single_runs` times, recording its engine calls."""
        for i in range(self.sizes.single_runs):
            set_engine(self.engine, JOBS_AT_ONCE, self.sizes.base_ms, self.sizes.per_token_ms)
            result = self.run_job("cra", FR_MEDIUM)
            calls, _ = engine_calls(self.engine, prompts=(i == 0))
            run = {"wall": job_wall(result), "engine": sum(c["engine_s"] for c in calls),
                   "queued": result["startedAt"] - result["createdAt"],
                   # The gateway's time between one call's answer and the next call (engine clock).
                   "between": [b["arrived"] - a["finished"] for a, b in zip(calls, calls[1:])],
                   "calls": len(calls), "prompts": [c.get("prompt", "") for c in calls],
                   "usage": result.get("usage") or {}}
            self.single.append(run)
            log(f"single job {i + 1}: wall {run['wall']:.2f} s, engine {run['engine']:.2f} s, "
                f"{run['calls']} calls")

    def v1(self) -> Row:
        """The answer checks' CPU time ÷ the engine's time, over the single cra job's batches (both
        as the job's usage counts them: the same calls, side by side in one run)."""
        row = Row.of("V1")
        usage = self.single[0]["usage"]
        calls, checking, engine = usage["calls"], usage["check_seconds"], usage["engine_seconds"]
        row.judge(checking / engine)
        row.detail = (f"{calls} batches: checks {1000 * checking / calls:.2f} ms per batch vs engine "
                      f"{1000 * engine / calls:.0f} ms per call")
        return row

    def p2(self) -> Row:
        row = Row.of("P2")
        ratios = [r["wall"] / r["engine"] for r in self.single]
        row.judge(statistics.median(ratios))
        best = min(self.single, key=lambda r: abs(r["wall"] / r["engine"] - row.figure))
        gap = best["wall"] - best["engine"]
        between = sum(best["between"])
        row.detail = (f"fr_medium, cra (fields 2): wall {best['wall']:.2f} s, engine {best['engine']:.2f} s "
                      f"over {best['calls']} calls; the {gap:.2f} s gap: {best['queued']:.2f} s queued (the runner "
                      f"polls every 0.2 s), {between:.2f} s between calls ({statistics.median(best['between']) * 1000:.1f} ms "
                      f"median: answer read, checkpoint, next prompt), {gap - best['queued'] - between:.2f} s planning "
                      f"and finishing; median of {len(ratios)} "
                      f"({', '.join(f'{r:.3f}' for r in ratios)})")
        return row

    def p4(self) -> Row:
        from app.pipeline.transcript import parse_transcript

        row = Row.of("P4")
        first = self.single[0]
        turns = parse_transcript(FR_MEDIUM.read_bytes(), FR_MEDIUM.name)
        template = (ROOT / "services/cra.txt").read_text(encoding="utf-8")
        problem = check_every_turn_sent(turns, sent_turn_sections(first["prompts"], template))
        row.judge(float(first["calls"]), problem is None)
        row.detail = (f"{len(turns)} turns; " + ("every turn sent once, in order, with its speaker"
                                                 if problem is None else f"NOT every turn sent: {problem}"))
        return row

    # -- P1 ------------------------------------------------------------------------------

    def p1(self) -> Row:
        row = Row.of("P1")
        set_engine(self.engine, JOBS_AT_ONCE, self.sizes.base_ms, self.sizes.per_token_ms)
        profiler = self._profile("runner", "p1-runner")
        try:
            job_ids = [self.gateway.submit("cra", str(FR_MEDIUM), flavor="seed") for _ in range(JOBS_AT_ONCE)]
            results = wait_jobs(self.gateway, job_ids, self.sizes.job_timeout)
        finally:
            self._stop_profile(profiler)
        calls, most = engine_calls(self.engine)
        wall = max(r["finishedAt"] for r in results) - min(r["createdAt"] for r in results)
        single = statistics.median(r["wall"] for r in self.single)
        row.judge(wall / single)
        spread = max(r["createdAt"] for r in results) - min(r["createdAt"] for r in results)
        row.detail = (f"8 jobs {wall:.2f} s (submitted over {spread:.2f} s) vs 1 job {single:.2f} s "
                      f"(median of {len(self.single)}); "
                      f"engine served up to {most} at once, {len(calls)} calls")
        return row

    # -- P6 ------------------------------------------------------------------------------

    def p6(self) -> Row:
        row = Row.of("P6")
        cap = self.sizes.p6_capacity
        set_engine(self.engine, cap, self.sizes.p6_base_ms, out_tokens=self.sizes.p6_out_tokens)
        result = self.run_job("cred", FR_MEDIUM)
        calls, most = engine_calls(self.engine)
        per_call = statistics.mean(c["engine_s"] for c in calls)
        ideal = math.ceil(len(calls) / cap) * per_call
        wall = job_wall(result)
        row.judge(wall / ideal)
        row.detail = (f"fr_medium, cred: {len(calls)} batches, engine capacity {cap} (served up to "
                      f"{most} at once), {per_call * 1000:.0f} ms per call: "
                      f"wall {wall:.2f} s vs ideal {ideal:.2f} s")
        return row

    # -- P7, P8, P9 (one transcript-context job, one rolling-summary job) ------------------

    def run_context_jobs(self) -> None:
        """fr_medium through "context"/"fast" (cra's template, contextSource transcript), its GET
        /results/<id> polled for the first `partial`; then through "context"/"seed" (the rolling
        summary), same engine."""
        set_engine(self.engine, self.sizes.p7_capacity, self.sizes.p7_base_ms, out_tokens=self.sizes.p6_out_tokens)
        job_id = self.gateway.submit("context", str(FR_MEDIUM), flavor="fast")
        first_partial, polls, deadline = None, 0, time.monotonic() + self.sizes.job_timeout
        while time.monotonic() < deadline:
            body = self.gateway.result(job_id)
            polls += 1
            if first_partial is None and body.get("partial"):
                first_partial = time.time() - body["createdAt"]     # the gateway's clock is ours
            if body["status"] not in ("queued", "processing"):
                break
            time.sleep(0.01)
        fast = wait_jobs(self.gateway, [job_id], self.sizes.job_timeout)[0]
        calls, most = engine_calls(self.engine, prompts=True)
        prompts = [c.get("prompt", "") for c in calls]
        self.context = {"wall": job_wall(fast), "calls": len(calls), "distinct": len(set(prompts)), "most": most,
                        "per_call": statistics.mean(c["engine_s"] for c in calls), "polls": polls,
                        "first_partial": first_partial, "lines": len(fast["summarization"].splitlines())}
        set_engine(self.engine, self.sizes.p7_capacity, self.sizes.p7_base_ms, out_tokens=self.sizes.p6_out_tokens)
        rolling = self.run_job("context", FR_MEDIUM)
        rolling_calls, _ = engine_calls(self.engine)
        self.context.update(rolling_wall=job_wall(rolling), rolling_calls=len(rolling_calls))
        log(f"transcript context: wall {self.context['wall']:.2f} s over {len(calls)} calls; rolling summary: "
            f"wall {self.context['rolling_wall']:.2f} s over {len(rolling_calls)} calls")

    def p7(self) -> Row:
        row, c = Row.of("P7"), self.context
        ideal = math.ceil(c["calls"] / self.sizes.p7_capacity) * c["per_call"]
        row.judge(c["wall"] / ideal, c["distinct"] == c["calls"])
        row.detail = (f"fr_medium, cra fast: {c['calls']} batches ({c['distinct']} distinct prompts: each sent "
                      f"once), engine capacity {self.sizes.p7_capacity} (served up to {c['most']} at once), "
                      f"{c['per_call'] * 1000:.0f} ms per call: wall {c['wall']:.2f} s vs ideal {ideal:.2f} s")
        return row

    def p8(self) -> Row:
        row, c = Row.of("P8"), self.context
        row.judge(c["wall"] / c["rolling_wall"])
        row.detail = (f"transcript context {c['wall']:.2f} s ({c['calls']} calls at once) vs rolling summary "
                      f"{c['rolling_wall']:.2f} s ({c['rolling_calls']} calls one after the other)")
        return row

    def p9(self) -> Row:
        row, c = Row.of("P9"), self.context
        if c["first_partial"] is None:
            raise RuntimeError(f"no partial report seen in {c['polls']} polls")
        row.judge(c["first_partial"] / c["per_call"])
        row.detail = (f"first partial {c['first_partial']:.2f} s after submission (polled every 10 ms, "
                      f"{c['polls']} polls), one call {c['per_call']:.2f} s; the final report has "
                      f"{c['lines']} lines")
        return row

    # -- H2 ------------------------------------------------------------------------------

    def h2(self) -> Row:
        row = Row.of("H2")
        set_engine(self.engine, JOBS_AT_ONCE, self.sizes.h2_base_ms)
        path = self.workdir / "h2_transcript.txt"
        path.write_bytes(h2_transcript(self.sizes.h2_lines))
        size = path.stat().st_size
        # What is counted: `wchar` of /proc/<pid>/io, summed over every process of the gateway
        # (supervisor, Gunicorn master and workers, runner), from before the upload to the
        # job's end. It counts the bytes each process hands to write()/pwrite(): with SQLite
        # that is every WAL frame (a whole 4 KB page per page changed, per commit) and every
        # page copied back into the database file at a WAL checkpoint, i.e. what the store
        # really writes, page granularity included, whether or not the page cache ever flushes
        # it. Socket sends (HTTP to the engine, the answers to our polls) go through send(),
        # which wchar does not count; the gateway's log lines (a few per job) are counted.
        pids = group_pids(self.gateway.proc.pid)
        before = io_written(pids)
        db_before = store_file_bytes(self.gateway.db_path)
        result = self.run_job("cra", path, timeout=max(self.sizes.job_timeout, 900))
        written = io_written(pids) - before
        calls = len(engine_calls(self.engine)[0])
        row.judge(written / size)
        row.detail = (f"{self.sizes.h2_lines:,} lines, {size / 2**20:.2f} MB, {calls} batches, "
                      f"wall {job_wall(result):.1f} s: {written / 2**20:.1f} MB written by the gateway's "
                      f"processes (wchar); database + WAL files grew by "
                      f"{(store_file_bytes(self.gateway.db_path) - db_before) / 2**20:.1f} MB")
        return row

    # -- P5 ------------------------------------------------------------------------------

    def p5(self) -> Row:
        row = Row.of("P5")
        wrk = ensure_wrk(allow_install=not self.smoke)
        tool = "wrk" if wrk else "python threads (wrk missing)"
        set_engine(self.engine, JOBS_AT_ONCE, self.sizes.p5_base_ms, self.sizes.per_token_ms)
        bare = Bare(self.workdir, self.gateway.db_path)
        job_ids = [self.gateway.submit("cra", str(FR_MEDIUM), flavor="seed") for _ in range(JOBS_AT_ONCE)]
        profiler = None
        try:
            wait_until(lambda: all(self.gateway.result(j)["status"] == "processing" for j in job_ids), 60,
                       what="the 8 jobs to be processing")
            target = job_ids[0]
            wait_until(lambda: self.gateway.result(target)["progress"] > 0, 60, what="a job's first checkpoint")
            gateway_url = f"{self.gateway.url}/results/{target}"
            bare_url = f"{bare.url}/one/{target}"
            # One client per running job, each polling back to back: enough to keep both servers'
            # 2 workers busy (their GIL is the limit, not their 2 x 8 threads).
            connections = JOBS_AT_ONCE
            gateway_pids, bare_pids = role_pids(self.gateway)["web"], group_pids(bare.proc.pid)

            def measure(url: str, pids: list[int]) -> dict:
                cpu, started = cpu_seconds(pids), time.monotonic()
                run = run_wrk(wrk, url, self.sizes.p5_seconds, connections) if wrk else \
                    run_python_load(url, self.sizes.p5_seconds, connections)
                run["cpu_s"] = cpu_seconds(pids) - cpu
                run["cores"] = run["cpu_s"] / (time.monotonic() - started)     # CPU the server got
                return run

            measure(gateway_url, gateway_pids)    # warm both (connections, imports, SQLite pages)
            measure(bare_url, bare_pids)
            gateway_runs, bare_runs = [], []
            for _ in range(self.sizes.p5_rounds):      # interleaved, so noise hits both
                gateway_runs.append(measure(gateway_url, gateway_pids))
                bare_runs.append(measure(bare_url, bare_pids))
            running = sum(self.gateway.result(j)["status"] == "processing" for j in job_ids)
            profiler = self._profile("web", "p5-web")  # extra rounds, not counted: py-spy costs
            if profiler:
                measure(gateway_url, gateway_pids)
                self._stop_profile(profiler)
                profiler = self._spy(bare.proc.pid, "p5-bare", subprocesses=True)
                measure(bare_url, bare_pids)
        finally:
            self._stop_profile(profiler)
            for job_id in job_ids:
                self.gateway.cancel(job_id)
            bare.stop()
        # The figure is throughput per CPU-second of the server processes (requests / CPU time of
        # the Gunicorn master and workers, read from /proc around each round): on a dedicated
        # machine it is the requests/s ratio, and on a shared one it does not move with the
        # neighbours' load, which the raw requests/s ratio of each pair of rounds does (shown too).
        g_cpu = cpu_per_request(gateway_runs)
        b_cpu = cpu_per_request(bare_runs)
        raw_ratios = [g["rps"] / b["rps"] for g, b in zip(gateway_runs, bare_runs)]
        g_rps = statistics.median(r["rps"] for r in gateway_runs)
        b_rps = statistics.median(r["rps"] for r in bare_runs)
        g_p99 = statistics.median(r["p99_ms"] for r in gateway_runs)
        b_p99 = statistics.median(r["p99_ms"] for r in bare_runs)
        worst = max(r["p99_ms"] for r in gateway_runs)
        bad = sum(r["non2xx"] for r in gateway_runs)      # 202 (processing) is a success
        row.judge(b_cpu / g_cpu, g_p99 < 50, bad == 0)
        row.detail = (f"{tool}, {connections} connections, {len(raw_ratios)} interleaved rounds of "
                      f"{self.sizes.p5_seconds:g} s: CPU per request {g_cpu:.0f} us vs {b_cpu:.0f} us bare "
                      f"(servers busy {statistics.median(r['cores'] for r in gateway_runs):.2f} vs "
                      f"{statistics.median(r['cores'] for r in bare_runs):.2f} cores); medians: "
                      f"gateway {g_rps:.0f} req/s p99 {g_p99:.1f} ms (worst round {worst:.1f}), bare {b_rps:.0f} req/s "
                      f"p99 {b_p99:.1f} ms; raw req/s ratio {statistics.median(raw_ratios):.2f} (rounds "
                      f"{', '.join(f'{r:.2f}' for r in raw_ratios)}); {running}/8 jobs processing at the end"
                      + (f"; {bad} errors" if bad else ""))
        return row

    # -- P3 (in this process) ------------------------------------------------------------

    def p3(self) -> Row:
        row = Row.of("P3")
        from app.pipeline.chunking import default_context_reserve, plan_batches
        from app.pipeline.tokenizers import default_tokenizer
        from app.pipeline.transcript import decode_bytes, parse_transcript

        path = largest_transcript()
        data = path.read_bytes()
        text = decode_bytes(data)
        tokenizer = default_tokenizer()
        flavor = flavor_object()
        template = (ROOT / "services/cra.txt").read_text(encoding="utf-8")
        reserve = default_context_reserve(flavor)

        def pipeline():
            turns = parse_transcript(data, path.name)
            return plan_batches(turns, template, 2, flavor, tokenizer, context_reserve=reserve)

        lines = text.splitlines()

        def raw():
            return tokenizer.count(text)

        def raw_lines():
            # The tokenizer's batched path (the one the pipeline uses, spread over threads by
            # sentencepiece) over the text's lines: the baseline that uses the cores as it does.
            return sum(tokenizer.count_many(lines))

        pipeline()      # warm caches (regexes, the tokenizer's first call)
        raw()
        raw_lines()
        raw_times, lines_times, pipe_times = [], [], []
        for _ in range(self.sizes.p3_repeats):       # interleaved, so noise hits all three
            raw_times.append(timed(raw))
            lines_times.append(timed(raw_lines))
            pipe_times.append(timed(pipeline))
        batches = pipeline()
        pipe, whole, by_line = (statistics.median(t) for t in (pipe_times, raw_times, lines_times))
        # The figure takes the faster of the two raw passes: the stricter ratio.
        row.judge(pipe / min(whole, by_line))
        memory = measure_memory(self.sizes.memory_mb)
        row.detail = (f"{path.relative_to(ROOT)} ({len(data) // 1024} KB, {raw():,} tokens, {len(batches)} batches): "
                      f"{pipe * 1000:.0f} ms vs raw {whole * 1000:.0f} ms in one call, {by_line * 1000:.0f} ms by "
                      f"lines in batches ({pipe / whole:.2f} and {pipe / by_line:.2f}), {tokenizer.name}; {memory}")
        if self.profile_dir:
            profile_p3(pipeline, self.profile_dir / "p3-pipeline.txt")
        return row

    # -- profiling -----------------------------------------------------------------------

    def _profile(self, role: str, name: str) -> subprocess.Popen | None:
        """py-spy the runner or the web workers until _stop_profile (only with --profile)."""
        if not self.profile_dir or not shutil.which("py-spy"):
            return None
        pids = role_pids(self.gateway)[role]
        if not pids:
            return None
        # The web role: the Gunicorn master (the lowest pid) and, with --subprocesses, its workers.
        return self._spy(min(pids), name, subprocesses=(role == "web"))

    def _spy(self, pid: int, name: str, subprocesses: bool) -> subprocess.Popen | None:
        if not self.profile_dir or not shutil.which("py-spy"):
            return None
        raw = self.profile_dir / f"{name}.raw"
        # --gil: only the thread holding the GIL is sampled, i.e. where Python time goes.
        args = ["py-spy", "record", "--format", "raw", "--rate", "200", "-o", str(raw), "--nonblocking", "--gil",
                "--pid", str(pid)] + (["--subprocesses"] if subprocesses else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.bench_raw = raw  # type: ignore[attr-defined]
        time.sleep(0.3)
        return proc

    def _stop_profile(self, proc: subprocess.Popen | None) -> None:
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raw = proc.bench_raw  # type: ignore[attr-defined]
        if raw.exists():
            summary = summarize_raw_profile(raw)
            raw.with_suffix(".txt").write_text(summary)
            log(f"profile {raw.with_suffix('.txt')}")


# --- H1 (in this process) and H2 helpers -------------------------------------------------------

def h1(sizes: Sizes) -> Row:
    """Plan time of one huge spaceless line / one raw tokenizer pass over it."""
    from app.pipeline.chunking import default_context_reserve, plan_batches
    from app.pipeline.tokenizers import default_tokenizer
    from app.pipeline.transcript import parse_transcript

    row = Row.of("H1")
    spaceless = "".join(FR_MEDIUM.read_text(encoding="utf-8").split())
    line = (spaceless * (sizes.h1_chars // len(spaceless) + 1))[:sizes.h1_chars]
    text = f"Orateur : {line}\n"
    tokenizer = default_tokenizer()
    flavor = flavor_object()
    template = (ROOT / "services/cra.txt").read_text(encoding="utf-8")
    reserve = default_context_reserve(flavor)

    def pipeline():
        return plan_batches(parse_transcript(text, "huge.txt"), template, 2, flavor, tokenizer,
                            context_reserve=reserve)

    def raw():
        return tokenizer.count(line)

    raw()
    raw_times, pipe_times = [], []
    for _ in range(sizes.h1_repeats):
        raw_times.append(timed(raw))
        pipe_times.append(timed(pipeline))
    pipe, whole = statistics.median(pipe_times), statistics.median(raw_times)
    batches = pipeline()
    row.judge(pipe / whole)
    row.detail = (f"{len(line):,}-character line ({raw():,} tokens, {len(batches)} batches): plan "
                  f"{pipe * 1000:.0f} ms vs raw {whole * 1000:.0f} ms (median of {sizes.h1_repeats}), {tokenizer.name}")
    return row


def h2_transcript(lines: int) -> bytes:
    """`lines` short lines (3 words, about 12.5 bytes each), a new speaker every 100 lines: the
    issue's 2.5 MB, 200k-line transcript at full size. Lines without a speaker continue a turn."""
    import random

    rng = random.Random(15)
    words = "le la de et un une pour avec sur dans est pas que qui nous vous il elle".split()
    out = []
    for i in range(lines):
        said = " ".join(rng.choice(words) for _ in range(3))
        out.append(f"Orateur {(i // 100) % 7} : {said}" if i % 100 == 0 else said)
    return ("\n".join(out) + "\n").encode()


def io_written(pids: list[int]) -> int:
    """Bytes these processes have handed to write() and pwrite() so far (/proc/<pid>/io wchar)."""
    total = 0
    for pid in pids:
        try:
            total += int(re.search(r"wchar:\s*(\d+)", Path(f"/proc/{pid}/io").read_text()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def store_file_bytes(db_path: str) -> int:
    """Size of the SQLite database and its WAL."""
    return sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))


# --- P3 helpers ------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def largest_transcript() -> Path:
    """The largest transcript under tests/data (summaries and Q&A files are not transcripts)."""
    candidates = [p for p in DATA_DIR.rglob("*") if p.is_file() and p.suffix in (".txt", ".srt", ".vtt", ".json")
                  and ".summary" not in p.name and not p.name.endswith(".qa.json") and p.name != "SOURCES.md"]
    return max(candidates, key=lambda p: p.stat().st_size)


def flavor_object():
    """The seed flavor as the app's Flavor, validated as a manifest's would be."""
    from app.services.manifests import parse_flavor
    return parse_flavor(dict(SEED_FLAVOR), 0, str(ROOT / "services"))


def measure_memory(size_mb: float) -> str:
    """Peak memory of parse + plan for a generated transcript of `size_mb` MB, in a fresh process."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_memory", "--mb", str(size_mb)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    if out.returncode != 0:
        return f"memory run failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}"
    m = json.loads(out.stdout.strip().splitlines()[-1])
    return (f"{m['input_mb']:.1f} MB transcript ({m['turns']:,} turns, {m['batches']:,} batches): "
            f"peak RSS +{m['peak_delta_mb']:.0f} MB over {m['before_mb']:.0f} MB, "
            f"{m['seconds']:.1f} s (raw pass {m['raw_seconds']:.1f} s in one call, {m['lines_seconds']:.1f} s by lines)")


def run_memory(size_mb: float) -> None:
    """`bench.py _memory`: parse + plan a generated transcript; print peak RSS as JSON."""
    import resource

    from app.pipeline.chunking import default_context_reserve, plan_batches
    from app.pipeline.tokenizers import default_tokenizer
    from app.pipeline.transcript import parse_transcript

    tokenizer = default_tokenizer()
    flavor = flavor_object()
    template = (ROOT / "services/cra.txt").read_text(encoding="utf-8")
    unit = FR_MEDIUM.read_text(encoding="utf-8")
    data = (unit * max(1, math.ceil(size_mb * 1024 * 1024 / len(unit.encode())))).encode()
    # Warm: imports, regexes and the tokenizer, so the baseline is the steady state.
    plan_batches(parse_transcript(unit, "x.txt"), template, 2, flavor, tokenizer, default_context_reserve(flavor))

    def rss_mb() -> float:
        with open("/proc/self/status") as handle:
            return int(re.search(r"VmRSS:\s*(\d+)", handle.read()).group(1)) / 1024

    before = rss_mb()
    started = time.perf_counter()
    turns = parse_transcript(data, "big.txt")
    batches = plan_batches(turns, template, 2, flavor, tokenizer, default_context_reserve(flavor))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = data.decode()
    started = time.perf_counter()
    tokenizer.count(text)
    raw_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tokenizer.count_many(text.splitlines())
    lines_seconds = time.perf_counter() - started
    print(json.dumps({"input_mb": len(data) / 2**20, "turns": len(turns), "batches": len(batches),
                      "before_mb": before, "peak_mb": peak, "peak_delta_mb": peak - before,
                      "seconds": seconds, "raw_seconds": raw_seconds, "lines_seconds": lines_seconds}))


def profile_p3(pipeline: Callable[[], Any], out: Path) -> None:
    """cProfile of P3's pipeline, top functions by own time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        pipeline()
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(25)
    out.write_text(buffer.getvalue())
    log(f"profile {out}")


def summarize_raw_profile(raw: Path, top: int = 30) -> str:
    """py-spy's collapsed stacks -> share of samples by own frame and by frame anywhere in the stack."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    lines = [f"{total} samples of the thread holding the GIL (py-spy --gil)", "",
             "own time:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines += ["", "in the stack:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines) + "\n"


# --- the table -----------------------------------------------------------------------------

def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if names:
            cpu = names[0].strip()
    except OSError:
        pass
    try:
        mem = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    except (OSError, AttributeError):
        mem = float("nan")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load average {load}")


def table(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    lines = ["| case | what | figure | target | result | detail |", "|---|---|---|---|---|---|"]
    for r in rows:
        detail = r.error or r.detail
        lines.append(f"| {r.case} | {r.what} | {r.shown_figure()} | {r.target} | {r.verdict()} | {detail} |")
    return "\n".join(lines)


def run(args) -> int:
    sizes = SMOKE if args.smoke else FULL
    wanted = [c.strip().upper() for c in args.only.split(",")] if args.only else list(CASES)
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"# bench {'--smoke ' if args.smoke else ''}{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# machine: {machine()}")
    print(f"# engine model: {sizes.base_ms:g} ms per call + {sizes.per_token_ms:g} ms per output token; "
          f"P5 calls {sizes.p5_base_ms:g} ms; P6 {sizes.p6_base_ms:g} ms + 0 per token, "
          f"{sizes.p6_out_tokens} tokens, capacity {sizes.p6_capacity}; P7-P9 {sizes.p7_base_ms:g} ms + 0 per "
          f"token, {sizes.p6_out_tokens} tokens, capacity {sizes.p7_capacity}", flush=True)
    rows: dict[str, Row] = {}
    crashed = False

    def attempt(case: str, fn: Callable[[], Row]) -> None:
        nonlocal crashed
        if case not in wanted:
            return
        log(f"{case} ...")
        try:
            rows[case] = fn()
        except Exception as exc:
            crashed = True
            traceback.print_exc()
            rows[case] = Row.of(case, error=f"{type(exc).__name__}: {exc}")
        log(f"{case}: {rows[case].shown_figure()} ({rows[case].verdict()})")

    attempt("P3", lambda: Bench(sizes, args.smoke, profile_dir, Path(".")).p3())
    attempt("H1", lambda: h1(sizes))
    if any(c in wanted for c in ("P1", "P2", "P4", "P5", "P6", "P7", "P8", "P9", "H2", "V1")):
        with tempfile.TemporaryDirectory(prefix="llm-gateway-bench-") as tmp:
            bench = Bench(sizes, args.smoke, profile_dir, Path(tmp))
            try:
                bench.start()
                if any(c in wanted for c in ("P1", "P2", "P4", "V1")):
                    bench.run_single()
                attempt("P2", bench.p2)
                attempt("P4", bench.p4)
                attempt("V1", bench.v1)
                attempt("P1", bench.p1)
                attempt("P6", bench.p6)
                if any(c in wanted for c in ("P7", "P8", "P9")):
                    bench.run_context_jobs()
                attempt("P7", bench.p7)
                attempt("P8", bench.p8)
                attempt("P9", bench.p9)
                attempt("H2", bench.h2)
                if "P5" in wanted:
                    bench.engine.wait_idle()
                attempt("P5", bench.p5)
            except Exception as exc:
                crashed = True
                traceback.print_exc()
                for case in wanted:
                    rows.setdefault(case, Row.of(case, error=f"set-up failed: {type(exc).__name__}: {exc}"))
                if bench.gateway is not None and os.path.exists(bench.gateway.log_path):
                    log("gateway log tail:\n" + "\n".join(bench.gateway.logs().splitlines()[-30:]))
            finally:
                bench.stop()
    ordered = [rows[c] for c in CASES if c in rows]
    print()
    print(table(ordered))
    print()
    passed = sum(1 for r in ordered if r.ok and not r.error)
    print(f"# {passed}/{len(ordered)} pass; {time.monotonic() - started:.0f} s; load average now "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "smoke": args.smoke, "sizes": asdict(sizes),
                                               "rows": [asdict(r) for r in ordered]}, indent=2))
    if args.smoke:
        return 1 if crashed else 0       # a missed ratio is not a failure here; a crash is
    return 0 if passed == len(ordered) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmarks with targets (see the module docstring).")
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("_bare", help=argparse.SUPPRESS)
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--db", required=True)
    bare.add_argument("--workers", type=int, default=2)
    memory = sub.add_parser("_memory", help=argparse.SUPPRESS)
    memory.add_argument("--mb", type=float, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; exit 0 even when a ratio misses")
    parser.add_argument("--only", default="", help="comma-separated cases, e.g. P3,P5")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--profile", default="", help="folder for profiles (py-spy, cProfile)")
    args = parser.parse_args(argv)
    if args.command == "_bare":
        run_bare(args.port, args.db, args.workers)
        return 0
    if args.command == "_memory":
        run_memory(args.mb)
        return 0
    # The processes are started as the tests start them (`python3 -m app`, `-m tests.fake_engine`):
    # from the repository's root, wherever the script was started from.
    args.json = args.json and str(Path(args.json).resolve())
    args.profile = args.profile and str(Path(args.profile).resolve())
    os.chdir(ROOT)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
