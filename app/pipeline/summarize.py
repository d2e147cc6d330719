"""The pipeline: turns -> batches -> engine calls -> summary, with progress and checkpoints.

summarize() runs named stages over one Run (app/pipeline/run.py): plan the batches (chunking),
resume from the checkpoint (checkpoint), summarize the batches in order or concurrently
(schedules: concurrently for fields 1 and for contextSource "transcript"; each batch halved as
needed: halving), reduce (reduce), consolidate (output).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from app.pipeline import checks, chunking, schedules
from app.pipeline.checkpoint import Checkpoint, digest_turns, partial_lines, resume_state
from app.pipeline.engine import EngineClient, EngineError
from app.pipeline.output import clean_output, consolidate
from app.pipeline.prompts import uses_transcript_context
from app.pipeline.reduce import reduce_summary
from app.pipeline.request import Hooks, SummaryRequest
from app.pipeline.run import JobInterrupted, Run
from app.pipeline.transcript import Turn

__all__ = ["summarize", "SummaryRequest", "Hooks", "SummaryResult", "JobInterrupted", "Checkpoint",
           "partial_lines", "clean_output", "consolidate"]

_PLAN_CHECK_SECONDS = 0.25   # how often planning asks should_stop (it may query the job store)


@dataclass
class SummaryResult:
    """The summary text, engine usage totals, warnings the user must see, and the answer checks'
    counts (app/pipeline/checks.py)."""

    text: str
    usage: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)


def summarize(turns: Sequence[Turn], request: SummaryRequest, *, engine: EngineClient, tokenizer,
              hooks: Hooks = Hooks(), checkpoint: dict | None = None) -> SummaryResult:
    """Summarize `turns` as `request` says; resumes from `checkpoint` when given.

    Raises JobInterrupted when hooks.should_stop() asks; an EngineError carries the usage spent
    (`error.usage`), so a fallback flavor can add it to its own.
    """
    if request.fields not in (1, 2):
        raise ValueError(f"a template must have 1 or 2 fields, not {request.fields}")
    flavor = request.flavor
    reserve = chunking.default_context_reserve(flavor) if request.fields == 2 else 0
    batches = chunking.plan_batches(list(turns), request.template, request.fields, flavor, tokenizer,
                                    context_reserve=reserve, check=_planning_check(hooks.should_stop))
    speakers = {checks.speaker_key(turn.speaker) for turn in turns if turn.speaker}
    run = Run(request, engine=engine, tokenizer=tokenizer, hooks=hooks, reserve=reserve,
              total=sum(len(b.turns) for b in batches), turns_digest=digest_turns(batches),
              speakers=sorted(speakers, key=sorted))
    state = resume_state(run, checkpoint)
    try:
        if request.fields == 2 and not uses_transcript_context(request):
            lines = schedules.in_order(run, batches, state)
        else:
            lines = schedules.concurrently(run, batches, state)
        if flavor.reduce_summary and lines:
            lines = reduce_summary(run, lines)
    except EngineError as error:
        error.usage = run.usage_report()    # a failed job still reports the calls and retries it spent
        raise
    if flavor.consolidate_summary:
        lines = consolidate(lines)
    if run.findings_unworded:
        run.warn(f"check: {run.findings_unworded} more findings of the answer checks are counted in "
                 "`checks` but not listed here")
    return SummaryResult("\n".join(lines), run.usage_report(), list(run.warnings), run.checks_report())


def _planning_check(should_stop: Callable[[], bool]) -> Callable[[], None]:
    """The `check` planning calls at every piece: it asks should_stop a few times a second
    (often enough that a cancel or a shutdown need not wait for a huge transcript to be planned,
    seldom enough that the store's queries cost nothing) and raises JobInterrupted when told."""
    asked = [float("-inf")]

    def check() -> None:
        now = time.monotonic()
        if now - asked[0] < _PLAN_CHECK_SECONDS:
            return
        asked[0] = now
        if should_stop():
            raise JobInterrupted("stopped while planning the batches")
    return check
