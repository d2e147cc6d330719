"""The job runner: claims queued jobs from the store and runs them, a few at a time.

`Runner.tick()` does one round of work (beat, claim while there are free slots) and is what
tests drive; `run_runner()` wraps it in a loop for the runner process. A failing job ends
`failed` with a clear message and never stops the runner.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from app.pipeline.chunking import BudgetError
from app.pipeline.engine import EngineError, RetryPolicy, TransientEngineError, get_engine
from app.jobs.store import Job, JobStore, open_store
from app.logs import job_context
from app.services.manifests import ManifestError, current_template
from app.services.registry import ServiceRegistry
from app.settings import Settings
from app.pipeline.summarize import JobInterrupted, summarize
from app.pipeline.tokenizers import get_tokenizer
from app.pipeline.transcript import TranscriptError, parse_transcript

log = logging.getLogger(__name__)

BEAT_EVERY_S = 2.0
PURGE_EVERY_S = 3600.0


class JobFailed(Exception):
    """A job cannot go on; the message is shown to the user."""


class Runner:
    """Runs up to `settings.max_concurrent_jobs` jobs at once, each in its own thread."""

    def __init__(self, settings: Settings, store: JobStore, registry: ServiceRegistry,
                 summarize_fn: Callable = summarize):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.summarize_fn = summarize_fn
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_jobs, thread_name_prefix="job")
        self._running: dict[str, Future] = {}
        self._owners: dict[str, str | None] = {}
        self._last_beat = 0.0
        self._last_renew = 0.0
        self._last_purge = 0.0
        self.beat_info: dict[str, object] = {}     # added to the heartbeat (a worker says what it is)

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

    def housekeep(self, held: dict[str, str | None], now: float) -> None:
        """Beat, renew the leases of the jobs running here (job id → owner), purge old finished jobs."""
        if now - self._last_beat >= BEAT_EVERY_S:
            self.store.beat("runner", {"pid": os.getpid(), "running": len(held), **self.beat_info}, now=now)
            self._last_beat = now
        if held and now - self._last_renew >= self.settings.job_lease / 4:
            self.store.renew(held, now=now)
            self._last_renew = now
        if self.settings.result_ttl_days > 0 and now - self._last_purge >= PURGE_EVERY_S:
            purged = self.store.purge_finished(self.settings.result_ttl_days * 86400, now=now)
            self._last_purge = now
            if purged:
                log.info("runner: %d finished job(s) older than %g days deleted", purged, self.settings.result_ttl_days)

    def tick(self, now: float | None = None) -> int:
        """Beat, forget finished jobs, claim queued jobs into free slots; return how many were started."""
        now = time.time() if now is None else now
        self._running = {job_id: f for job_id, f in self._running.items() if not f.done()}
        self._owners = {job_id: self._owners.get(job_id) for job_id in self._running}
        self.housekeep(self._owners, now)
        started = 0
        while not self.stopping.is_set() and self.running < self.settings.max_concurrent_jobs:
            # A job whose holder went silent for a lease (a runner that died elsewhere) is claimable too.
            job = self.store.claim_next(now=now, lease_s=self.settings.job_lease)
            if job is None:
                break
            with job_context(job.id):
                log.info("runner: job %s claimed (%s/%s, attempt %d)", job.id, job.service, job.flavor, job.attempts)
            self._owners[job.id] = job.owner
            self._running[job.id] = self._pool.submit(self.run_job, job)
            started += 1
        return started

    def run_job(self, job: Job) -> None:
        """Run one job to its end: complete, failed, or back in the queue if interrupted."""
        with job_context(job.id):       # every line logged for this job, in any thread, carries its id
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        # Every write names the job's owner: if another worker took the job over (this one
        # went silent past its lease), the store refuses the writes and this run just ends.
        owner = job.owner
        try:
            result = self._summarize(job)
        except JobInterrupted:
            if self.store.cancel_requested(job.id):
                self.store.mark_cancelled(job.id, owner=owner)
                log.info("runner: job %s cancelled", job.id)
            elif not self.store.holds(job.id, owner):
                log.warning("runner: job %s was taken over by another worker; this run stops", job.id)
            else:
                self.store.requeue(job.id, "interrupted by a shutdown; it will resume where it stopped", owner=owner)
                log.info("runner: job %s interrupted; queued again", job.id)
        except (JobFailed, EngineError, TranscriptError, ManifestError, BudgetError) as exc:
            if self.store.fail(job.id, str(exc), getattr(exc, "usage", None), owner=owner):
                log.warning("runner: job %s failed: %s", job.id, exc)
            else:
                log.warning("runner: job %s failed here (%s) but is no longer held by this run", job.id, exc)
        except Exception as exc:  # a bug in one job must not stop the runner
            log.exception("runner: job %s failed unexpectedly", job.id)
            self.store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}", owner=owner)
        else:
            if self.store.complete(job.id, result.text, result.usage, result.warnings, owner=owner):
                log.info("runner: job %s complete (%s)", job.id, result.usage)
            else:
                log.warning("runner: job %s finished here but is no longer held by this run; result dropped", job.id)

    def _summarize(self, job: Job):
        service = self.registry.get(job.service)
        if service is None:
            raise JobFailed(f"the service '{job.service}' is no longer loaded")
        flavor = service.flavor(job.flavor)
        if flavor is None:
            raise JobFailed(f"the service '{job.service}' no longer has a flavor '{job.flavor}'")
        # Templates are read at each job's start, so an edit applies to the next job; a template
        # now missing or invalid leaves the last valid one serving (current_template).
        template, note = current_template(service)
        notes = [note] if note else []
        turns = parse_transcript(job.input_text, job.input_name)
        try:
            result = self._run_flavor(job, service, flavor, template, turns, job.checkpoint, notes)
        except TransientEngineError as exc:
            # The retry budget is spent on an engine that does not answer: go on with the
            # fallback flavor (another engine or model). Never for 4xx-class errors.
            fallback = service.flavor(flavor.fallback_flavor) if flavor.fallback_flavor else None
            if fallback is None:
                raise
            log.warning("runner: job %s: flavor %s unavailable (%s); continuing on %s", job.id, flavor.name, exc,
                        fallback.name)
            self.store.set_message(job.id, f"engine of flavor '{flavor.name}' unavailable; continuing on"
                                           f" fallback flavor '{fallback.name}'", owner=job.owner)
            latest = self.store.get(job.id)
            result = self._run_flavor(job, service, fallback, template, turns, latest.checkpoint if latest else None,
                                      notes)
            spent = getattr(exc, "usage", None) or {}
            for key in ("calls", "failed_calls", "prompt_tokens", "completion_tokens", "engine_seconds", "retries"):
                result.usage[key] = result.usage.get(key, 0) + spent.get(key, 0)
            result.warnings.append(f"flavor '{flavor.name}' was unavailable ({exc}); the summary was produced by"
                                   f" fallback flavor '{fallback.name}'")
            flavor = fallback
        result.usage["flavor"] = flavor.name
        for note in notes:
            log.warning("runner: job %s: %s", job.id, note)
        result.warnings[:0] = notes
        return result

    def _run_flavor(self, job: Job, service, flavor, template: str, turns, checkpoint, notes: list[str]):
        """Summarize the turns with one flavor: its engine, tokenizer, sampling and budgets (notes for
        the user are added to `notes`)."""
        reduce_template = None
        if flavor.reduce_summary and flavor.reduce_prompt:
            reduce_template, note = current_template(service, flavor.reduce_prompt)
            if note and note not in notes:       # a fallback flavor may share the reduce prompt
                notes.append(note)
        api_base, api_key = flavor.engine(self.settings)
        concurrency = flavor.max_concurrent_requests or self.settings.engine_concurrency
        engine = get_engine(api_base, api_key, self.settings.engine_timeout, concurrency)
        tokenizer = get_tokenizer(flavor, api_base, api_key)
        return self.summarize_fn(
            turns, template=template, fields=service.fields, flavor=flavor, tokenizer=tokenizer, engine=engine,
            temperature=job.params.get("temperature", flavor.temperature), top_p=job.params.get("top_p", flavor.top_p),
            reduce_template=reduce_template, checkpoint=checkpoint,
            on_checkpoint=lambda progress, state: self._save_checkpoint(job, progress, state),
            on_message=lambda message: self.store.set_message(job.id, message, owner=job.owner),
            should_stop=lambda: self._should_stop(job), concurrency=concurrency,
            retry_policy=RetryPolicy(max_retries=self.settings.engine_retries,
                                     base_delay=self.settings.engine_retry_delay),
            job_retries=self.settings.engine_job_retries)

    def _save_checkpoint(self, job: Job, progress: int, state: dict) -> None:
        """Save a checkpoint, appending only what it adds to the last one when it says so
        (summarize's Checkpoint): rewriting the whole summary so far at every batch makes the
        bytes written grow with the square of the job."""
        self.store.save_progress(job.id, progress, state, "processing", owner=job.owner,
                                 grows=getattr(state, "grows", None), kept=getattr(state, "kept", 0))


    def _should_stop(self, job: Job) -> bool:
        """Checked between batches: a shutdown, a cancel, or the job taken over elsewhere."""
        return (self.stopping.is_set() or self.store.cancel_requested(job.id)
                or not self.store.holds(job.id, job.owner))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop claiming, let running jobs reach their next checkpoint, re-queue what is left
        (cancel what was asked to be cancelled)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for job_id, future in list(self._running.items()):
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
        for job_id, future in self._running.items():
            if future.done():
                continue
            owner = self._owners.get(job_id)
            if self.store.cancel_requested(job_id):
                # Queued again it would never run (a job asked to cancel is not claimed) nor end.
                self.store.mark_cancelled(job_id, owner=owner)
                log.info("runner: job %s cancelled at shutdown", job_id)
            else:
                self.store.requeue(job_id, "interrupted by a shutdown; it will resume where it stopped", owner=owner)
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
