"""Entry point: `python3 -m app [all|web|runner|worker] [flags]` (see `python3 -m app --help`)."""
from __future__ import annotations

import sys

from app.logs import configure_logging
from app.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    """Parse the settings and run the role asked for."""
    try:
        role, settings = load_settings(argv)
    except ValueError as exc:
        print(f"python3 -m app: error: {exc}", file=sys.stderr)
        return 2
    if role == "worker" and not settings.broker_url:
        print("python3 -m app: error: the worker needs BROKER_URL (--broker_url), e.g. redis://host:6379/0",
              file=sys.stderr)
        return 2
    if role == "runner" and settings.broker_url:
        print("python3 -m app: error: with BROKER_URL set, jobs run in `python3 -m app worker`, not in the runner",
              file=sys.stderr)
        return 2
    configure_logging(settings, role)
    if role == "worker":
        import os
        from app.jobs.worker import run_worker
        code = run_worker(settings)
        # Job threads may still be inside an engine call; their jobs are back in the queue.
        os._exit(code)
    if role == "web":
        from app.server import run_web
        run_web(settings)
        return 0
    if role == "runner":
        import os
        from app.jobs.runner import run_runner
        run_runner(settings)
        # Job threads may still be inside an engine call; their jobs are back in the queue.
        os._exit(0)
    from app.jobs.store import open_store
    from app.supervisor import supervise
    open_store(settings).init_schema()  # fail fast (bad path or URL) before starting children
    return supervise(settings)


if __name__ == "__main__":
    sys.exit(main())
