"""Measure the gateway's own tiers on this machine: how fast API nodes accept jobs and workers drain them.

    python3 scripts/scale_bench.py --mode embedded              # SQLite + local runner (the default)
    python3 scripts/scale_bench.py --mode scale --workers 2     # PostgreSQL + Celery/Redis + 2 workers
                                                                # (needs RESULT_DB_URL_TEST, BROKER_URL_TEST:
                                                                #  eval "$(bash scripts/services.sh)")

Everything runs on loopback against the fake engine (`tests/fake_engine.py`, `--delay` seconds
per call), started with the tests' harness (`tests/processes.py`), so the figures are the
gateway's overhead and ceilings, not an engine's speed.
Prints one JSON object: accepted submissions per second (N clients at once), then jobs
completed per second once all are queued, with the engine answering in `--delay` seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.processes import EMBEDDED, Deployment, FakeEngineProcess, Gateway, wait_until  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "scale"), default="embedded")
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (scale mode)")
    parser.add_argument("--jobs_per_worker", type=int, default=4, help="MAX_CONCURRENT_JOBS of each worker/runner")
    parser.add_argument("--web_workers", type=int, default=2, help="Gunicorn workers of the API node")
    parser.add_argument("--delay", type=float, default=0.0, help="fake engine seconds per call")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-scale-"))
    shutil.copytree(ROOT / "services", workdir / "services")
    env = {"MAX_CONCURRENT_JOBS": str(args.jobs_per_worker), "ENGINE_CONCURRENCY": "64"}
    schema = None
    deployment = EMBEDDED
    if args.mode == "scale":
        from tests.store_backends import PostgresSchema
        import redis
        schema = PostgresSchema(os.environ["RESULT_DB_URL_TEST"])
        redis.Redis.from_url(os.environ["BROKER_URL_TEST"]).flushdb()
        # The web node and `args.workers` worker processes, started and stopped together.
        deployment = Deployment("scaled", env={"RESULT_DB_URL": schema.url, "BROKER_URL": os.environ["BROKER_URL_TEST"]},
                                workers=args.workers, jobs_per_worker=args.jobs_per_worker)
    os.chdir(ROOT)
    engine = FakeEngineProcess("--delay", str(args.delay))
    gateway = None
    try:
        gateway = Gateway(workdir, engine.base_url, services_dir=str(workdir / "services"),
                          workers=args.web_workers, env=env, deployment=deployment).start(timeout=90)
        local = threading.local()

        def submit(i: int) -> str:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            response = session.post(f"{gateway.url}/services/cred/generate", timeout=60,
                                    json={"content": f"Orateur {i % 7} : intervention {i}.", "flavor": "smollm2-135m"})
            response.raise_for_status()
            return response.json()["jobId"]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            ids = list(pool.map(submit, range(args.jobs)))
        accept_s = time.monotonic() - started

        def done() -> int:
            body = requests.get(f"{gateway.url}/results?status=complete&limit=1", timeout=30).json()
            return body["total"]

        wait_until(lambda: done() >= len(ids), 1800, interval=0.5, what="every job to complete")
        drain_s = time.monotonic() - started
        print(json.dumps({
            "mode": args.mode, "jobs": len(ids), "clients": args.clients, "web_workers": args.web_workers,
            "job_workers": args.workers if args.mode == "scale" else 1, "jobs_per_worker": args.jobs_per_worker,
            "engine_delay_s": args.delay,
            "accepted_per_s": round(len(ids) / accept_s, 1),
            "completed_per_s": round(len(ids) / drain_s, 1),
            "completed_per_hour": int(len(ids) / drain_s * 3600),
        }))
    finally:
        if gateway is not None:
            gateway.stop()
        engine.stop()
        if schema is not None:
            schema.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
