"""The upkeep every job driver (the local runner, a Celery worker) does beside running jobs.

It says it is alive (the heartbeat /health reads), renews the leases of the jobs it runs so no
one takes them over, and deletes finished jobs older than RESULT_TTL_DAYS. Each at its own pace:
`tick(held, now)` is called often and does what is due.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from app.jobs.store import JobStore
from app.settings import Settings

log = logging.getLogger(__name__)

BEAT_EVERY_S = 2.0
PURGE_EVERY_S = 3600.0
# The heartbeat's name: /health reads it whichever driver (runner or workers) runs the jobs.
BEAT_NAME = "runner"


class Housekeeper:
    """Beats, lease renewals and purges for one driver; `info` is added to its heartbeat."""

    def __init__(self, settings: Settings, store: JobStore, info: Mapping[str, Any] | None = None):
        self.settings = settings
        self.store = store
        self.info = dict(info or {})
        self._last_beat = 0.0
        self._last_renew = 0.0
        self._last_purge = 0.0

    def tick(self, held: Mapping[str, str | None], now: float) -> None:
        """Beat, renew the leases of the jobs running here (job id → owner), purge old finished jobs."""
        if now - self._last_beat >= BEAT_EVERY_S:
            self.store.beat(BEAT_NAME, {"pid": os.getpid(), "running": len(held), **self.info}, now=now)
            self._last_beat = now
        if held and now - self._last_renew >= self.settings.job_lease / 4:
            self.store.renew(held, now=now)
            self._last_renew = now
        if self.settings.result_ttl_days > 0 and now - self._last_purge >= PURGE_EVERY_S:
            purged = self.store.purge_finished(self.settings.result_ttl_days * 86400, now=now)
            self._last_purge = now
            if purged:
                log.info("runner: %d finished job(s) older than %g days deleted", purged, self.settings.result_ttl_days)
