"""Executing one job: everything between its claim and its outcome, in one place.

The local runner (app/jobs/runner.py) and the Celery worker (app/jobs/worker.py) decide when a
job runs and how many run at once; what running one means is here, once (as huey has one object
execute a task): resolve the service, the flavor and the templates at the job's start, parse the
upload, run the pipeline with the flavor's engine and tokenizer, go on with the fallback flavor
when the engine stays down, and record how it ended. A failing job ends `failed` with a message
for the user and never stops its driver.

Every write names the job's owner: if another worker took the job over (this one went silent
past its lease), the store refuses them and this run just ends.

Checkpoints are written at most once per `checkpoint_interval` (see `CheckpointWriter`): with a
fast engine a commit per batch costs more bytes than the batches themselves; the newest state
waits and is written whenever the run stops, so only a kill -9 loses it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable

from app.jobs.model import Job
from app.jobs.store import JobStore
from app.logs import job_context
from app.pipeline.chunking import BudgetError
from app.pipeline.engine import EngineError, RetryPolicy, TransientEngineError, get_engine
from app.pipeline.run import cache_figures
from app.pipeline.summarize import Hooks, JobInterrupted, SummaryRequest, summarize
from app.pipeline.tokenizers import get_tokenizer
from app.pipeline.transcript import TranscriptError, Turn, parse_transcript
from app.services.manifests import Flavor, ManifestError, Service, current_template
from app.services.registry import ServiceRegistry
from app.settings import Settings

log = logging.getLogger(__name__)

# What a flavor that gave up had spent, added to its fallback flavor's usage: the job's usage counts both.
_SPENT_KEYS = ("calls", "failed_calls", "prompt_tokens", "completion_tokens", "engine_seconds", "retries",
               "check_seconds")


def _add_spent(usage: dict, spent: dict) -> None:
    """Add what a flavor that gave up had spent to its fallback's usage. The cached-prompt figures
    stay only if both flavors' engines reported them (a share of a partly known total misleads)."""
    for key in _SPENT_KEYS:
        usage[key] = usage.get(key, 0) + spent.get(key, 0)
    if "cached_prompt_tokens" in usage and "cached_prompt_tokens" in spent:
        usage.update(cache_figures(usage["cached_prompt_tokens"] + spent["cached_prompt_tokens"],
                                   usage["prompt_tokens"]))
    else:
        usage.pop("cached_prompt_tokens", None)
        usage.pop("cached_share", None)


class Outcome(StrEnum):
    """How one run of a job ended here (rq's handle_job_success / failure / retry, as words)."""

    COMPLETE = "complete"      # the summary is stored
    FAILED = "failed"          # the error is stored, for the user
    CANCELLED = "cancelled"    # stopped on request
    REQUEUED = "requeued"      # stopped by a shutdown: queued again, it resumes at its checkpoint
    LOST = "lost"              # no longer held by this run (taken over elsewhere): nothing was stored


class CheckpointWriter:
    """One run's checkpoint writes, at most one per `interval` seconds; the newest state waits.

    A state the pipeline hands over says how much of the *previous state* it keeps (`kept` of
    its `grows` key). When states are held back, the store still holds the last one *written*,
    so what a write may keep is the least `kept` of every state since then: each state shares
    only that prefix with its predecessor, hence with the written one. `flush()` writes the
    waiting state; it is called whenever the run stops, so a held-back state is lost only when
    the process dies (a kill -9 re-sends the batches of at most one interval).
    Thread-safe: a shutdown may flush a run still blocked in an engine call.
    """

    def __init__(self, store: JobStore, job: Job, interval: float, clock: Callable[[], float] = time.monotonic):
        self.store, self.job, self.interval, self.clock = store, job, interval, clock
        self.written = clock()       # the claim has just written the job's row
        self._pending: tuple[int, dict, str | None, int] | None = None
        self._lock = threading.Lock()

    def save(self, progress: int, state: dict) -> None:
        grows, kept = getattr(state, "grows", None), getattr(state, "kept", 0)
        with self._lock:
            if self._pending is not None:
                _, _, pending_grows, pending_kept = self._pending
                # What the store holds is older than the pending state: keep only what all share.
                kept = min(kept, pending_kept) if pending_grows == grows else 0
            self._pending = (progress, state, grows, kept)
            due = self.interval <= 0 or self.clock() - self.written >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the waiting state, if any (refused by the store if the job is no longer held)."""
        with self._lock:
            if self._pending is None:
                return
            progress, state, grows, kept = self._pending
            self._pending = None
            # Under the lock: two flushes must not write out of order.
            self.store.save_progress(self.job.id, progress, state, "processing", owner=self.job.owner,
                                     grows=grows, kept=kept)
            self.written = self.clock()


class JobFailed(Exception):
    """A job cannot go on; the message is shown to the user."""


@dataclass
class Plan:
    """What one job runs with, resolved once at its start.

    Templates are read from disk when the job starts, so an edit applies to the next job; a
    template now missing or invalid leaves the last valid one serving, and `notes` tell the user.
    """

    service: Service
    flavor: Flavor
    template: str
    notes: list[str] = field(default_factory=list)
    reduce_templates: dict[str, str] = field(default_factory=dict)   # reduce_prompt → its text, read once

    @classmethod
    def resolve(cls, registry: ServiceRegistry, job: Job) -> "Plan":
        """The job's service, flavor and template as loaded now; JobFailed if they are gone."""
        service = registry.get(job.service)
        if service is None:
            raise JobFailed(f"the service '{job.service}' is no longer loaded")
        flavor = service.flavor(job.flavor)
        if flavor is None:
            raise JobFailed(f"the service '{job.service}' no longer has a flavor '{job.flavor}'")
        template, note = current_template(service)
        return cls(service, flavor, template, [note] if note else [])

    def fallback(self) -> Flavor | None:
        """The flavor to go on with when this one's engine stays down, if the manifest names one."""
        return self.service.flavor(self.flavor.fallback_flavor) if self.flavor.fallback_flavor else None

    def reduce_template(self, flavor: Flavor) -> str | None:
        """`flavor`'s reduce template, if it reduces; read at most once per job (flavors may share one)."""
        if not (flavor.reduce_summary and flavor.reduce_prompt):
            return None
        if flavor.reduce_prompt not in self.reduce_templates:
            text, note = current_template(self.service, flavor.reduce_prompt)
            self.reduce_templates[flavor.reduce_prompt] = text
            if note and note not in self.notes:
                self.notes.append(note)
        return self.reduce_templates[flavor.reduce_prompt]


class JobExecutor:
    """Runs claimed jobs to their end, one call to `execute(job)` per job, from any thread.

    `stopping` is shared with the driver: once set, running jobs stop before their next batch
    and go back to the queue. `summarize_fn` is the pipeline (tests hand in a wrapped one).
    """

    def __init__(self, settings: Settings, store: JobStore, registry: ServiceRegistry, *,
                 summarize_fn: Callable = summarize, stopping: threading.Event | None = None):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.summarize_fn = summarize_fn
        self.stopping = stopping or threading.Event()
        self._writers: dict[str, CheckpointWriter] = {}    # job id → its running run's writer

    def writer(self, job: Job) -> CheckpointWriter:
        """The checkpoint writer of one run of a job."""
        return CheckpointWriter(self.store, job, self.settings.checkpoint_interval)

    def execute(self, job: Job) -> Outcome:
        """Run one claimed job to its end: complete, failed, cancelled, or back in the queue."""
        with job_context(job.id):       # every line logged for this job, in any thread, carries its id
            writer = self._writers[job.id] = self.writer(job)
            try:
                return self._execute(job)
            finally:
                if self._writers.get(job.id) is writer:
                    del self._writers[job.id]

    def _execute(self, job: Job) -> Outcome:
        # Every way out of the pipeline has flushed the job's waiting checkpoint (_run) before
        # its outcome is written here.
        try:
            plan = Plan.resolve(self.registry, job)
            result = self._summarize(job, plan)
        except JobInterrupted:
            return self.interrupted(job.id, job.owner)
        except (JobFailed, EngineError, TranscriptError, ManifestError, BudgetError) as exc:
            return self._failed(job, str(exc), getattr(exc, "usage", None))
        except Exception as exc:  # a bug in one job must not stop its driver
            log.exception("runner: job %s failed unexpectedly", job.id)
            stored = self.store.fail(job.id, f"internal error: {type(exc).__name__}: {exc}", owner=job.owner)
            return Outcome.FAILED if stored else Outcome.LOST
        return self._completed(job, result)

    # -- the outcomes ---------------------------------------------------------------
    def _completed(self, job: Job, result) -> Outcome:
        if self.store.complete(job.id, result.text, result.usage, result.warnings, owner=job.owner,
                               checks=result.checks):
            log.info("runner: job %s complete (%s)", job.id, result.usage)
            return Outcome.COMPLETE
        log.warning("runner: job %s finished here but is no longer held by this run; result dropped", job.id)
        return Outcome.LOST

    def interrupted(self, job_id: str, owner: str | None) -> Outcome:
        """A job stopped before its end (a cancel, a shutdown, a takeover): record why."""
        writer = self._writers.get(job_id)
        if writer is not None:
            # A shutdown may give up on a run still in an engine call: what it finished is kept.
            writer.flush()
        if self.store.cancel_requested(job_id):
            # Queued again it would never run (a job asked to cancel is not claimed) nor end.
            self.store.mark_cancelled(job_id, owner=owner)
            log.info("runner: job %s cancelled", job_id)
            return Outcome.CANCELLED
        if not self.store.holds(job_id, owner):
            log.warning("runner: job %s was taken over by another worker; this run stops", job_id)
            return Outcome.LOST
        if not self.store.requeue(job_id, "interrupted by a shutdown; it will resume where it stopped", owner=owner):
            return Outcome.LOST
        log.info("runner: job %s interrupted; queued again", job_id)
        return Outcome.REQUEUED

    def _failed(self, job: Job, error: str, usage: dict | None) -> Outcome:
        if self.store.fail(job.id, error, usage, owner=job.owner):
            log.warning("runner: job %s failed: %s", job.id, error)
            return Outcome.FAILED
        log.warning("runner: job %s failed here (%s) but is no longer held by this run", job.id, error)
        return Outcome.LOST

    # -- running the pipeline ---------------------------------------------------------
    def _summarize(self, job: Job, plan: Plan):
        """The summary of the job's upload with its flavor, or with the fallback flavor if the first's
        engine stays down (never for 4xx-class errors); the notes for the user lead its warnings."""
        turns = parse_transcript(job.input_text, job.input_name)
        flavor = plan.flavor
        try:
            result = self._run(job, plan, flavor, turns, job.checkpoint)
        except TransientEngineError as exc:
            fallback = plan.fallback()
            if fallback is None:
                raise
            log.warning("runner: job %s: flavor %s unavailable (%s); continuing on %s", job.id, flavor.name, exc,
                        fallback.name)
            self.store.set_message(job.id, f"engine of flavor '{flavor.name}' unavailable; continuing on"
                                           f" fallback flavor '{fallback.name}'", owner=job.owner)
            latest = self.store.get(job.id)
            checkpoint = dict(latest.checkpoint) if latest and latest.checkpoint else None
            if checkpoint:
                # The first flavor's usage (checkpointed or not) is all in exc.usage, added below:
                # resuming must not carry the checkpointed part a second time.
                checkpoint.pop("usage", None)
            result = self._run(job, plan, fallback, turns, checkpoint)
            _add_spent(result.usage, getattr(exc, "usage", None) or {})
            result.warnings.append(f"flavor '{flavor.name}' was unavailable ({exc}); the summary was produced by"
                                   f" fallback flavor '{fallback.name}'")
            flavor = fallback
        result.usage["flavor"] = flavor.name
        for note in plan.notes:
            log.warning("runner: job %s: %s", job.id, note)
        result.warnings[:0] = plan.notes
        return result

    def _run(self, job: Job, plan: Plan, flavor: Flavor, turns: list[Turn], checkpoint: dict | None):
        """Summarize the turns with one flavor: its engine, tokenizer, sampling and budgets."""
        reduce_template = plan.reduce_template(flavor)
        api_base, api_key = flavor.engine(self.settings)
        concurrency = flavor.max_concurrent_requests or self.settings.engine_concurrency
        engine = get_engine(api_base, api_key, self.settings.engine_timeout, concurrency)
        tokenizer = get_tokenizer(flavor, api_base, api_key)
        request = SummaryRequest(
            template=plan.template, fields=plan.service.fields, flavor=flavor,
            temperature=job.params.get("temperature", flavor.temperature),
            top_p=job.params.get("top_p", flavor.top_p), reduce_template=reduce_template, concurrency=concurrency,
            retry_policy=RetryPolicy(max_retries=self.settings.engine_retries,
                                     base_delay=self.settings.engine_retry_delay),
            job_retries=self.settings.engine_job_retries, output=plan.service.output)
        # Checkpoints append only what they add to the last one (summarize's Checkpoint), at most
        # once per interval (CheckpointWriter): both keep the bytes written near the input's size.
        writer = self._writers[job.id]
        hooks = Hooks(on_checkpoint=writer.save,
                      on_message=lambda message: self.store.set_message(job.id, message, owner=job.owner),
                      should_stop=lambda: self._should_stop(job))
        try:
            # The one call of the pipeline in the gateway.
            result = self.summarize_fn(turns, request, engine=engine, tokenizer=tokenizer, hooks=hooks,
                                       checkpoint=checkpoint)
        except BaseException:
            # Stopped, failed, or off to the fallback flavor (which resumes from the stored
            # checkpoint): the waiting state is stored first. A failing flush must not hide why.
            try:
                writer.flush()
            except Exception:
                log.exception("runner: job %s: its last checkpoint could not be saved", job.id)
            raise
        writer.flush()
        return result

    def _should_stop(self, job: Job) -> bool:
        """Checked between batches: a shutdown, a cancel, or the job taken over elsewhere."""
        return (self.stopping.is_set() or self.store.cancel_requested(job.id)
                or not self.store.holds(job.id, job.owner))
