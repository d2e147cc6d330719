"""One summarize() run: the context every stage works on.

It holds what was asked (the request), what answers (engine, tokenizer), the plan's facts (the
context reserve, the number of virtual turns and their fingerprint, the transcript's speakers)
and the hooks, all given at construction; and what the run accumulates: engine usage (with the
prompt tokens the engine took from its prefix cache, when it says), the answer checks' tally,
warnings and progress. Worker threads (the concurrent
schedule) never call the hooks: they queue their messages here and read a stop flag that the
calling thread keeps up to date.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from app.pipeline.checks import MAX_WARNINGS, Tally
from app.pipeline.engine import Completion
from app.pipeline.request import Hooks, SummaryRequest

log = logging.getLogger(__name__)

_SLEEP_SLICE = 1.0      # backoff sleeps are cut in slices so a stop is not held up
_FINDING = "check: "    # the answer checks' warnings start so (and are counted so against MAX_WARNINGS)


def cache_figures(cached_tokens: int, prompt_tokens: int) -> dict[str, Any]:
    """The usage keys of the engine's prefix cache: the prompt tokens it served, and their share."""
    return {"cached_prompt_tokens": cached_tokens,
            "cached_share": round(cached_tokens / prompt_tokens, 4) if prompt_tokens else 0.0}


class JobInterrupted(Exception):
    """should_stop() asked to stop; the last checkpoint saved is where the job resumes."""


class Run:
    """The state of one summarize() run, shared by its stages and its worker threads."""

    def __init__(self, request: SummaryRequest, *, engine, tokenizer, hooks: Hooks,
                 reserve: int, total: int, turns_digest: str, speakers: list[frozenset[str]] = ()):
        self.request, self.engine, self.tokenizer, self.hooks = request, engine, tokenizer, hooks
        self.reserve = reserve            # tokens of each prompt kept for the summary so far
        self.total, self.turns_digest = total, turns_digest
        self.speakers = list(speakers)    # every speaker of the transcript (checks.speaker_key)
        self.checks = Tally()             # the answer checks of the finished batches
        self.findings_unworded = 0        # findings past MAX_WARNINGS: counted, not worded
        self.usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "engine_seconds": 0.0, "retries": 0, "failed_calls": 0, "check_seconds": 0.0}
        # Prompt tokens the engine served from its prefix cache, and how many answers said so:
        # a share is only true when every answer reported it (an engine that says nothing is
        # not one that cached nothing), so the report leaves both out otherwise.
        self.cached_tokens = 0
        self.cached_calls = 0
        self.warnings: list[str] = []
        self.progress = 0
        self.lock = threading.Lock()
        self.main_thread = threading.current_thread()
        self.messages: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()

    # --- messages and warnings -------------------------------------------------------------

    def post(self, message: str) -> None:
        """Tell the user: at once from the calling thread, at the next delivery from a worker."""
        if threading.current_thread() is self.main_thread:
            self.hooks.on_message(message)
        else:
            self.messages.put(message)

    def deliver_messages(self) -> None:
        """Hand the workers' queued messages to on_message (from the calling thread)."""
        while True:
            try:
                self.hooks.on_message(self.messages.get_nowait())
            except queue.Empty:
                return

    def warn(self, warning: str) -> None:
        """A warning the user must see with the summary."""
        log.warning("summarize: %s", warning)
        with self.lock:
            self.warnings.append(warning)

    def finish_batch(self, tally: Tally) -> None:
        """Add a finished batch's checks (from the calling thread, before its checkpoint): its
        findings become warnings, up to MAX_WARNINGS per job; past that they are only counted.
        The worded ones are counted from the warnings, which a resumed run carries over."""
        worded = sum(1 for w in self.warnings if w.startswith(_FINDING))
        room = max(0, MAX_WARNINGS - worded)
        for warning in tally.warnings[:room]:
            self.warn(_FINDING + warning)
        self.findings_unworded += max(0, len(tally.warnings) - room)
        tally.warnings = []       # worded above: the job's tally keeps counts only
        self.checks.add(tally)
        tally.clear()

    def checks_report(self) -> dict[str, int]:
        """The `checks` counts of GET /results."""
        return self.checks.counts()

    # --- stopping --------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Whether to stop: should_stop() asked from the calling thread, the flag from a worker."""
        if threading.current_thread() is self.main_thread and self.hooks.should_stop():
            self.stopping.set()
        return self.stopping.is_set()

    def check_stop(self) -> None:
        """Raise JobInterrupted when asked to stop."""
        if self.stop_requested():
            raise JobInterrupted(f"stopped at {self.progress}%")

    def backoff_sleep(self, seconds: float) -> None:
        """Wait between retries, giving up early when the job is asked to stop."""
        while seconds > 0:
            self.check_stop()
            step = min(_SLEEP_SLICE, seconds)
            self.hooks.sleep(step)
            seconds -= step
        self.check_stop()

    # --- usage -----------------------------------------------------------------------------

    def add_usage(self, **amounts: float) -> None:
        """Count calls, tokens, seconds or failures (from any thread)."""
        with self.lock:
            for key, amount in amounts.items():
                self.usage[key] += amount

    def count_answer(self, completion: Completion) -> None:
        """Count one answered call: its tokens, seconds and, when the engine reported them, the
        prompt tokens it took from its cache (one lock: a checkpoint never sees half of it)."""
        with self.lock:
            self.usage["calls"] += 1
            self.usage["prompt_tokens"] += completion.prompt_tokens
            self.usage["completion_tokens"] += completion.completion_tokens
            self.usage["engine_seconds"] += completion.seconds
            if completion.cached_tokens is not None:
                self.cached_tokens += completion.cached_tokens
                self.cached_calls += 1

    def take_retry(self) -> bool:
        """Count one retry, unless the job's retry budget is spent (then False)."""
        with self.lock:
            budget = self.request.job_retries
            if budget is not None and self.usage["retries"] >= budget:
                return False
            self.usage["retries"] += 1
            return True

    def carry_over(self, usage: dict[str, Any], warnings: list[str], checks: dict[str, int] | None = None,
                   findings_unworded: int = 0) -> None:
        """Add what the run this one resumes had spent, warned and found."""
        with self.lock:
            self.checks.add(Tally.from_counts(checks or {}))
            self.findings_unworded += findings_unworded
            for key, value in usage.items():
                if key in self.usage:
                    self.usage[key] += value
            # The earlier run reported cached tokens only if every one of its calls had them.
            if "cached_prompt_tokens" in usage:
                self.cached_tokens += usage["cached_prompt_tokens"]
                self.cached_calls += usage.get("calls", 0)
            self.warnings.extend(warnings)

    def usage_report(self) -> dict[str, Any]:
        """The usage totals as reported to the user; with `cached_prompt_tokens` and
        `cached_share` (of prompt_tokens) when the engine reported its cache on every call."""
        with self.lock:
            report = {**self.usage, "engine_seconds": round(self.usage["engine_seconds"], 3),
                      "check_seconds": round(self.usage["check_seconds"], 4)}
            calls = self.usage["calls"]
            if calls and self.cached_calls == calls:
                report.update(cache_figures(self.cached_tokens, self.usage["prompt_tokens"]))
            return report

    # --- progress and checkpoints ----------------------------------------------------------

    def advance(self, done: int) -> int:
        """Progress after `done` virtual turns: only grows, and 100 is the caller's to set."""
        if self.total:
            self.progress = max(self.progress, min(99, done * 100 // self.total))
        return self.progress

    def save(self, state: dict[str, Any], done: int) -> None:
        """Hand a checkpoint to on_checkpoint, with the usage and warnings so far."""
        state.update(usage=self.usage_report(), warnings=list(self.warnings), checks=self.checks_report(),
                     findingsUnworded=self.findings_unworded)
        self.hooks.on_checkpoint(self.advance(done), state)
