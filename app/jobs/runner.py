"""The job runner: claims queued jobs from the store and runs them, a few at a time.

Scheduling only: `Runner.tick()` does one round of work (housekeeping, then claiming while
there are free slots, each claimed job handed to a thread of its own) and is what tests drive;
`run_runner()` wraps it in a loop for the runner process. What running a job means is
app/jobs/execute.py's, the same for the Celery workers.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from app.jobs.execute import JobExecutor
from app.jobs.housekeeping import Housekeeper
from app.jobs.store import JobStore, open_store
from app.logs import job_context
from app.pipeline.summarize import summarize
from app.services.registry import ServiceRegistry
from app.settings import Settings

log = logging.getLogger(__name__)


class Runner:
    """Runs up to `settings.max_concurrent_jobs` jobs at once, each in its own thread."""

    def __init__(self, settings: Settings, store: JobStore, registry: ServiceRegistry,
                 summarize_fn: Callable = summarize):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.stopping = threading.Event()
        self.executor = JobExecutor(settings, store, registry, summarize_fn=summarize_fn, stopping=self.stopping)
        self.housekeeper = Housekeeper(settings, store)
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_jobs, thread_name_prefix="job")
        self._running: dict[str, Future] = {}
        self._owners: dict[str, str | None] = {}

    @property
    def running(self) -> int:
        """How many jobs are in progress."""
        return len(self._running)

    def recover(self) -> int:
        """At start-up, put back in the queue the jobs a previous runner left processing.

        Only on the embedded SQLite store (one machine, one runner). On a shared store other
        machines may be running jobs: a dead runner's jobs are taken over once their lease runs out.
        """
        if self.store.shared:
            return 0
        count = self.store.requeue_processing()
        if count:
            log.warning("runner: %d job(s) left processing by a previous run were queued again", count)
        return count

    def tick(self, now: float | None = None) -> int:
        """Housekeeping, forget finished jobs, claim queued jobs into free slots; return how many were started."""
        now = time.time() if now is None else now
        self._running = {job_id: f for job_id, f in self._running.items() if not f.done()}
        self._owners = {job_id: self._owners.get(job_id) for job_id in self._running}
        self.housekeeper.tick(self._owners, now)
        started = 0
        while not self.stopping.is_set() and self.running < self.settings.max_concurrent_jobs:
            # A job whose holder went silent for a lease (a runner that died elsewhere) is claimable too.
            job = self.store.claim_next(now=now, lease_s=self.settings.job_lease)
            if job is None:
                break
            with job_context(job.id):
                log.info("runner: job %s claimed (%s/%s, attempt %d)", job.id, job.service, job.flavor, job.attempts)
            self._owners[job.id] = job.owner
            self._running[job.id] = self._pool.submit(self.executor.execute, job)
            started += 1
        return started

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop claiming, let running jobs reach their next checkpoint, re-queue what is left
        (cancel what was asked to be cancelled)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for future in list(self._running.values()):
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
        for job_id, future in self._running.items():
            if not future.done():
                with job_context(job_id):
                    self.executor.interrupted(job_id, self._owners.get(job_id))
        self._pool.shutdown(wait=False, cancel_futures=True)


def run_runner(settings: Settings, poll_interval: float = 0.2) -> None:
    """The runner process: recover, then tick until SIGTERM/SIGINT."""
    store = open_store(settings)
    store.init_schema()
    registry = ServiceRegistry(settings.services_dir, settings.reload_debounce).start()
    runner = Runner(settings, store, registry)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    runner.recover()
    log.info("runner: started (pid %d, up to %d jobs at once)", os.getpid(), settings.max_concurrent_jobs)
    while not stop.is_set():
        try:
            runner.tick()
        except Exception:  # the loop never dies; a database hiccup is retried next tick
            log.exception("runner: tick failed")
        stop.wait(poll_interval)
    log.info("runner: stopping")
    runner.shutdown(timeout=max(1.0, settings.timeout / 4))
    registry.stop()
