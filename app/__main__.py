"""Entry point: `python3 -m app [all|web|runner] [flags]` (see `python3 -m app --help`)."""
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
    configure_logging(settings, role)
    if role == "web":
        from app.server import run_web
        run_web(settings)
        return 0
    if role == "runner":
        import os
        from app.runner import run_runner
        run_runner(settings)
        # Job threads may still be inside an engine call; their jobs are back in the queue.
        os._exit(0)
    from app.jobs import JobStore
    from app.supervisor import supervise
    JobStore(settings.db_path).init_schema()  # fail fast (bad path) before starting children
    return supervise(settings)


if __name__ == "__main__":
    sys.exit(main())
