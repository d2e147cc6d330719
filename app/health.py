"""The health report: database, services registry, job runner and engine."""
from __future__ import annotations

import time
from typing import Any

from app.jobs import JobStore
from app.registry import ServiceRegistry
from app.settings import Settings

RUNNER_STALE_AFTER_S = 15.0  # the runner beats every couple of seconds
_engine_cache: dict[str, tuple[float, bool]] = {}


def engine_reachable(api_base: str, api_key: str, now: float, ttl: float = 5.0) -> bool:
    """Whether the engine answers GET /models (cached a few seconds, so /health stays cheap)."""
    cached = _engine_cache.get(api_base)
    if cached and now - cached[0] < ttl:
        return cached[1]
    from app.engine import get_engine
    try:
        up = bool(get_engine(api_base, api_key, 5, 1).ping())
    except Exception:
        up = False
    _engine_cache[api_base] = (now, up)
    return up


def report(settings: Settings, store: JobStore, registry: ServiceRegistry, now: float | None = None) -> dict[str, Any]:
    """Check each part; status is "ok", "degraded" (engine down) or "down" (database or runner)."""
    now = time.time() if now is None else now
    database_ok = store.ping()
    beat = store.last_beat("runner") if database_ok else None
    runner_alive = beat is not None and now - beat[0] < RUNNER_STALE_AFTER_S
    snapshot = registry.snapshot
    engine_up = engine_reachable(settings.api_base, settings.api_key, now)
    status = "ok" if database_ok and runner_alive and engine_up else "degraded"
    if not database_ok or not runner_alive:
        status = "down"
    return {
        "status": status,
        "database": {"ok": database_ok, "jobs": store.count_by_status() if database_ok else None},
        "registry": {"services": len(snapshot.services), "errors": list(snapshot.errors)},
        "runner": {"alive": runner_alive, "lastBeat": beat[0] if beat else None},
        "engine": {"reachable": engine_up},
    }
