"""`python3 -m app worker`: a Celery worker that runs the gateway's jobs (BROKER_URL mode).

Any number of workers, on any number of machines, consume the queue that API nodes publish
to (app/jobs/broker.py). Each worker process holds its own watched ServiceRegistry (the services
folder must be shared or synced) and runs a job exactly as the local runner does, through the
same JobExecutor (app/jobs/execute.py): the pipeline, checkpoints, retries, fallbacks and
cancellation are the same. `Worker.handle(job_id)` is what a delivered message does and
`Worker.tick()` the housekeeping (heartbeat, lease renewal, purge, publishing again the jobs
whose message was lost); tests call both directly.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from enum import StrEnum
from typing import Callable

from app.jobs.execute import JobExecutor, Outcome
from app.jobs.housekeeping import Housekeeper
from app.jobs.model import Job
from app.jobs.store import JobStore, open_store
from app.logs import job_context
from app.pipeline.summarize import summarize
from app.services.registry import ServiceRegistry
from app.settings import Settings

log = logging.getLogger(__name__)


class Delivery(StrEnum):
    """What handling one delivered message came to (what the Celery task does next follows from it)."""

    RAN = "ran"                # the job ran here to its end (complete, failed or cancelled)
    REQUEUED = "requeued"      # stopped by a shutdown, back in the queue with its checkpoint: publish again
    BUSY = "busy"              # held by another live worker: look again after a lease
    FINISHED = "finished"      # already ended (a duplicate delivery): nothing to do
    UNKNOWN = "unknown"        # no such job (deleted): nothing to do
    STOPPING = "stopping"      # this worker is shutting down: publish again for another worker


class Worker:
    """Runs delivered jobs through the JobExecutor; renews their leases while they run."""

    def __init__(self, settings: Settings, store: JobStore, registry: ServiceRegistry,
                 summarize_fn: Callable = summarize, publish: Callable[[str], None] | None = None):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.publish = publish          # hands a job id to the queue again (JobQueue.enqueue)
        self._last_sweep = 0.0
        self.executor = JobExecutor(settings, store, registry, summarize_fn=summarize_fn)
        self.housekeeper = Housekeeper(settings, store, {"role": "worker", "host": socket.gethostname()})
        self._held: dict[str, str | None] = {}     # job id → owner token, for the jobs running here
        self._lock = threading.Lock()

    @property
    def stopping(self) -> threading.Event:
        """Set at shutdown: running jobs stop before their next batch and go back to the queue."""
        return self.executor.stopping

    def handle(self, job_id: str, now: float | None = None) -> Delivery:
        """Claim the job by id and run it to its end; return what happened."""
        if self.stopping.is_set():
            return Delivery.STOPPING
        job = self.store.claim(job_id, lease_s=self.settings.job_lease, now=now)
        if job is None:
            state = self.store.get_state(job_id)
            if state is None:
                return Delivery.UNKNOWN
            return Delivery.FINISHED if state[0].finished else Delivery.BUSY
        with job_context(job.id):
            log.info("worker: job %s claimed (%s/%s, attempt %d%s)", job.id, job.service, job.flavor, job.attempts,
                     f", resuming at {job.progress}%" if job.checkpoint else "")
            self._note_manifest_drift(job)
        with self._lock:
            self._held[job.id] = job.owner
        try:
            outcome = self.executor.execute(job)
        finally:
            with self._lock:
                self._held.pop(job.id, None)
        return Delivery.REQUEUED if outcome is Outcome.REQUEUED else Delivery.RAN

    def _note_manifest_drift(self, job: Job) -> None:
        # The job records the manifest it was accepted with; this worker runs it with the
        # services folder it sees. A difference is normal after an edit, a sign of an unsynced
        # folder otherwise: say it.
        service = self.registry.get(job.service)
        if job.manifest is not None and service is not None and service.recorded_for(job.flavor) != job.manifest:
            log.info("worker: job %s was accepted with another version of service '%s'; it runs with the one"
                     " loaded here", job.id, job.service)

    @property
    def running(self) -> int:
        """How many jobs run in this worker now."""
        return len(self._held)

    def tick(self, now: float | None = None) -> None:
        """Beat, renew the leases of the jobs running here, purge old finished jobs, and publish
        again the jobs whose message is lost."""
        now = time.time() if now is None else now
        with self._lock:
            held = dict(self._held)
        self.housekeeper.tick(held, now)
        if self.publish is not None and now - self._last_sweep >= self.sweep_every:
            self._last_sweep = now
            self.sweep(now)

    @property
    def sweep_every(self) -> float:
        return max(1.0, min(30.0, self.settings.visibility_timeout / 2))

    def sweep(self, now: float | None = None) -> int:
        """Publish again the jobs nobody has touched for VISIBILITY_TIMEOUT (queued), or whose lease
        ran out that long ago (processing): by then the broker has redelivered every message it
        still has, so these have none (a worker killed as it took the message, a broker restarted
        without its data). A duplicate is harmless: claims are atomic."""
        ids = self.store.take_stalled(self.settings.visibility_timeout, self.settings.job_lease, now=now)
        for job_id in ids:
            try:
                self.publish(job_id)
            except Exception as exc:   # the job stays queued: the next sweep tries again
                log.warning("worker: job %s could not be published again (%s: %s)", job_id, type(exc).__name__, exc)
                continue
            with job_context(job_id):
                log.warning("worker: job %s had no message in the queue; published again", job_id)
        return len(ids)


def run_worker(settings: Settings) -> int:
    """The worker process: a Celery worker (threads pool, MAX_CONCURRENT_JOBS jobs at once) until SIGTERM."""
    from celery.signals import worker_shutting_down

    from app.jobs.broker import QUEUE_NAME, TASK_NAME, JobQueue

    store = open_store(settings)
    store.init_schema()
    registry = ServiceRegistry(settings.services_dir, settings.reload_debounce).start()
    queue = JobQueue(settings)
    worker = Worker(settings, store, registry, publish=queue.enqueue)
    celery = queue.celery

    @celery.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
    def run_job(task, job_id: str) -> str:
        outcome = worker.handle(job_id)
        if outcome is Delivery.BUSY:
            # Held by a live worker (a second delivery after the visibility timeout): look again
            # after one lease; if that worker died meanwhile, this delivery takes the job over.
            raise task.retry(countdown=settings.job_lease)
        if outcome in (Delivery.REQUEUED, Delivery.STOPPING):
            raise task.retry(countdown=0)   # another worker resumes it from its checkpoint
        return outcome

    def on_shutdown(**_):
        log.info("worker: stopping; running jobs stop before their next batch and go back to the queue")
        worker.stopping.set()

    worker_shutting_down.connect(on_shutdown, weak=False)

    stop_ticking = threading.Event()

    def ticker():
        while not stop_ticking.is_set():
            try:
                worker.tick()
            except Exception:  # the loop never dies; a database hiccup is retried next tick
                log.exception("worker: housekeeping failed")
            stop_ticking.wait(min(1.0, settings.job_lease / 4))

    threading.Thread(target=ticker, name="worker-housekeeping", daemon=True).start()
    log.info("worker: started (pid %d, up to %d jobs at once, store %s, queue %s)", os.getpid(),
             settings.max_concurrent_jobs, store.describe(), QUEUE_NAME)
    celery_worker = celery.Worker(
        hostname=f"llm-gateway-{os.getpid()}@{socket.gethostname()}", pool_cls="threads",
        concurrency=settings.max_concurrent_jobs, loglevel="DEBUG" if settings.debug else "INFO",
        without_gossip=True, without_mingle=True, without_heartbeat=True, optimization="fair",
        quiet=True, no_color=True, redirect_stdouts=False)
    try:
        celery_worker.start()
    finally:
        stop_ticking.set()
        registry.stop()
    return celery_worker.exitcode or 0
