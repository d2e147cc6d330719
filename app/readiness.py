"""The health report: database, services registry, job runner and engine."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.jobs.store import JobStore
from app.services.registry import ServiceRegistry
from app.settings import Settings

RUNNER_STALE_AFTER_S = 15.0  # the runner beats every couple of seconds
_engine_cache: dict[str, tuple[float, bool]] = {}


def engine_reachable(api_base: str, api_key: str, now: float, ttl: float = 5.0) -> bool:
    """Whether the engine answers GET /models (cached a few seconds, so /health stays cheap)."""
    cached = _engine_cache.get(api_base)
    if cached and now - cached[0] < ttl:
        return cached[1]
    from app.pipeline.engine import get_engine
    try:
        up = bool(get_engine(api_base, api_key, 5, 1).ping())
    except Exception:
        up = False
    _engine_cache[api_base] = (now, up)
    return up


def engines_in_use(settings: Settings, services) -> dict[str, tuple[str, list[str]]]:
    """Each engine the loaded flavors call (the default --api_base, or their own `apiBase`), with
    the key it is called with and the "service/flavor" names that use it; with no flavor at all,
    the default engine. An engine nobody uses is not checked: it cannot make the gateway degraded."""
    engines: dict[str, tuple[str, list[str]]] = {}
    for service in sorted(services.values(), key=lambda s: s.name):
        for flavor in service.flavors:
            base, key = flavor.engine(settings)     # flavors sharing an address: the first one's key
            engines.setdefault(base, (key, []))[1].append(f"{service.name}/{flavor.name}")
    return engines or {settings.api_base: (settings.api_key, [])}


def _shown(api_base: str) -> str:
    """The engine's address without any user:password part (the report is public)."""
    parts = urlsplit(api_base)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def report(settings: Settings, store: JobStore, registry: ServiceRegistry, now: float | None = None) -> dict[str, Any]:
    """Check each part; status is "ok", "degraded" (an engine down) or "down" (database or runner)."""
    now = time.time() if now is None else now
    database_ok = store.ping()
    beat = store.last_beat("runner") if database_ok else None
    runner_alive = beat is not None and now - beat[0] < RUNNER_STALE_AFTER_S
    snapshot = registry.snapshot
    in_use = engines_in_use(settings, snapshot.services)
    # Pinged side by side: an engine that does not answer costs its timeout once, not once per engine.
    with ThreadPoolExecutor(max_workers=len(in_use)) as pool:
        reachable = list(pool.map(lambda item: engine_reachable(item[0], item[1][0], now), in_use.items()))
    engines = [{"apiBase": _shown(base), "reachable": up, "flavors": flavors}
               for (base, (_, flavors)), up in zip(in_use.items(), reachable)]
    engine_up = all(engine["reachable"] for engine in engines)
    status = "ok" if database_ok and runner_alive and engine_up else "degraded"
    if not database_ok or not runner_alive:
        status = "down"
    return {
        "status": status,
        "database": {"ok": database_ok, "jobs": store.count_by_status() if database_ok else None},
        "registry": {"services": len(snapshot.services), "errors": list(snapshot.errors)},
        "runner": {"alive": runner_alive, "lastBeat": beat[0] if beat else None},
        # reachable: every engine in use answers; engines: each one, with the flavors that call it.
        "engine": {"reachable": engine_up, "engines": engines},
    }
