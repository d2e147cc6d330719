"""What a caller hands summarize(): the request (what to summarize with) and the hooks (how the
run reports back and is stopped)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from app.pipeline.engine import RetryPolicy
from app.services.manifests import Flavor


@dataclass(frozen=True)
class SummaryRequest:
    """How to summarize: the template and its number of fields (1 or 2), the flavor and sampling,
    the reduce template, how many calls may be in flight (fields == 1, or the transcript as
    context: flavor.context_source), the retry budgets, and what the answers are checked as
    (`output`: app/pipeline/checks.py)."""

    template: str
    fields: int
    flavor: Flavor
    temperature: float
    top_p: float
    reduce_template: str | None = None
    concurrency: int = 8
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)   # the retries of one call
    job_retries: int | None = None       # the retries of the whole job, resumed runs included (None: no limit)
    output: str = "summary"              # the service's "output": "turns" checks a line per speaker turn


def _no_checkpoint(progress: int, state: dict) -> None:
    """The default on_checkpoint: the state is not kept."""


def _no_message(message: str) -> None:
    """The default on_message: nobody reads the messages."""


def _never() -> bool:
    """The default should_stop: the run goes to its end."""
    return False


@dataclass(frozen=True)
class Hooks:
    """The caller's side of a run. on_checkpoint(progress, state) after every batch (and after the
    first half of a batch redone in halves); on_message(text) for the user; should_stop() between
    batches, halves and while planning; sleep(seconds) between retries (tests pass a no-op).

    The first three are only ever called from the thread that called summarize() (they may touch
    SQLite, whose connections are per thread); sleep is called from the worker threads too."""

    on_checkpoint: Callable[[int, dict], None] = _no_checkpoint
    on_message: Callable[[str], None] = _no_message
    should_stop: Callable[[], bool] = _never
    sleep: Callable[[float], None] = time.sleep
