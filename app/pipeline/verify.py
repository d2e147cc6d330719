"""A batch's answer checked before it joins the report (app/pipeline/checks.py says what is
checked): for per-turn services, the interventions it left out are asked again once, together,
with the same template and context, and their lines put in their place.

Findings go to the batch's Tally, which the schedule hands to the run once the batch is done
(and saved with it): a batch redone after a kill -9 counts its findings once.
"""
from __future__ import annotations

import time
from typing import Sequence

from app.pipeline import checks, chunking, prompts
from app.pipeline.calls import call
from app.pipeline.engine import EmptyAnswerError
from app.pipeline.facts import Source
from app.pipeline.output import clean_output
from app.pipeline.run import Run
from app.pipeline.transcript import Turn


def checked(run: Run, start: int, turns: Sequence[Turn], prior: list[str] | None, lines: list[str],
            tally: checks.Tally, label: str) -> list[str]:
    """The lines of one answer for these turns (virtual turns from `start`), checked; for a
    per-turn service, aligned in transcript order with the left-out interventions asked again.
    The CPU time of the checks (the asked-again call aside) is counted in usage `check_seconds`."""
    started = time.perf_counter()
    lines = _checked(run, start, turns, prior, lines, tally, label)
    run.add_usage(check_seconds=time.perf_counter() - started - tally.asking_seconds)
    tally.asking_seconds = 0.0
    return lines


def _checked(run: Run, start: int, turns: Sequence[Turn], prior: list[str] | None, lines: list[str],
             tally: checks.Tally, label: str) -> list[str]:
    # What the prompt held besides the turns: the last summaryTurns lines of the context (the
    # prompt may hold fewer; never more), not the whole summary so far.
    given = (prior or [])[-run.request.flavor.summary_turns:] if run.request.flavor.summary_turns > 0 else []
    source = Source(*(chunking.render_turn(t) for t in turns), *given)
    if run.request.output != "turns":
        checks.check_summary_speakers(lines, run.speakers, run.request.template, label, tally)
        checks.check_facts(lines, source, label, tally)
        return lines
    items = checks.interventions(start, turns)
    alignment = checks.align(lines, items, run.speakers)
    for line in alignment.invented:
        tally.invented_speakers += 1
        tally.warnings.append(checks.word_invented(line, label))
    wanted = [item for item in alignment.missing if not item.brief]
    if wanted:
        _ask_again(run, wanted, prior, alignment, tally)
    tally.turns += len(items)
    tally.brief_omitted += sum(1 for item in alignment.missing if item.brief)
    tally.turns_in_report += len(items) - len(alignment.missing)
    for item in alignment.missing:
        if not item.brief:
            tally.missing += 1
            tally.warnings.append(f"{item.label()} has no line in the report: the engine left it out, "
                                  "and again when asked once more")
    kept = checks.in_order(alignment)
    checks.check_facts(kept, source, label, tally)
    return kept


def _ask_again(run: Run, wanted: list[checks.Intervention], prior: list[str] | None,
               alignment: checks.Alignment, tally: checks.Tally) -> None:
    """One more call for the interventions the answer left out, all of them together; the lines
    that come back take their place in `alignment` (what stays missing stays in alignment.missing)."""
    tally.asked_again += len(wanted)
    run.post(f"asking again for {len(wanted)} turn(s) the answer left out")
    turns = [turn for item in wanted for turn in item.turns]
    what = ", ".join(item.label() for item in wanted)
    asked = time.perf_counter()
    try:
        completion = call(run, lambda: prompts.turns_prompt(run.request, run.tokenizer, run.reserve, turns, prior),
                          what)
    except EmptyAnswerError:
        return                      # still missing: reported as such
    finally:
        tally.asking_seconds += time.perf_counter() - asked
    again = checks.align(clean_output(completion.text, run.request.template), _renumbered(wanted), run.speakers)
    for line in again.invented:
        tally.invented_speakers += 1
        tally.warnings.append(checks.word_invented(line, what))
    found = {index for index in again.slots} - {item.index for item in again.missing}
    for position in sorted(found):
        item = wanted[position]
        alignment.slots.setdefault(item.index, []).extend(again.slots[position])
    placed = {wanted[position].index for position in found}
    alignment.missing = [item for item in alignment.missing if item.index not in placed]


def _renumbered(items: list[checks.Intervention]) -> list[checks.Intervention]:
    """The interventions asked again, numbered 0.. as in the new answer."""
    return [checks.Intervention(position, item.first, item.turns, item.key, item.words)
            for position, item in enumerate(items)]
