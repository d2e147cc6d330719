"""The reduce pass (a flavor's reduceSummary): the summary condensed with the reduce prompt, in
groups of consecutive lines, pass after pass until it fits one call."""
from __future__ import annotations

from app.pipeline import prompts
from app.pipeline.calls import call, cut_at
from app.pipeline.engine import ContextOverflowError
from app.pipeline.output import clean_output
from app.pipeline.repetition import trim_repetition
from app.pipeline.run import Run

_MAX_REDUCE_PASSES = 8


def reduce_summary(run: Run, lines: list[str]) -> list[str]:
    """The summary condensed with the request's reduce template (a warning when there is none)."""
    template = run.request.reduce_template
    if not template:
        run.warn("reduceSummary is set but the flavor has no reduce prompt; not reduced")
        return lines
    tokenizer = run.tokenizer
    budget = prompts.reduce_budget(template, run.request.flavor, tokenizer)
    for _ in range(_MAX_REDUCE_PASSES):
        if tokenizer.count("\n".join(lines)) <= budget:
            return _reduce_lines(run, lines, template)
        groups = _group_lines(lines, budget, tokenizer)
        run.post(f"reducing the summary in {len(groups)} parts")
        reduced = [out for group in groups for out in _reduce_lines(run, group, template)]
        if tokenizer.count("\n".join(reduced)) >= tokenizer.count("\n".join(lines)):
            run.warn("the summary did not get shorter when reduced; kept the last pass")
            return reduced
        lines = reduced
    run.warn(f"the summary still did not fit one call after {_MAX_REDUCE_PASSES} reduce passes")
    return lines


def _reduce_lines(run: Run, lines: list[str], template: str) -> list[str]:
    """One reduce call over these lines; halves them when the answer is cut or too long."""
    try:
        completion = call(run, prompts.reduce_prompt(template, lines),
                          f"a reduce of {len(lines)} summary line{'s' if len(lines) > 1 else ''}")
    except ContextOverflowError:
        if len(lines) < 2:
            raise
        return _reduce_halves(run, lines, template)
    if completion.finish_reason == "length":
        looped = trim_repetition(completion.text)
        if looped is not None:
            run.warn("a reduced part of the summary went into a loop; the repetition was cut off")
            return clean_output(looped, template)
        if len(lines) > 1:
            return _reduce_halves(run, lines, template)
        run.warn(f"a reduced part of the summary was cut at {cut_at(run.request.flavor, completion)}; kept as is")
    return clean_output(completion.text, template)


def _reduce_halves(run: Run, lines: list[str], template: str) -> list[str]:
    middle = len(lines) // 2
    return _reduce_lines(run, lines[:middle], template) + _reduce_lines(run, lines[middle:], template)


def _group_lines(lines: list[str], budget: int, tokenizer) -> list[list[str]]:
    """Consecutive groups of lines, each within budget tokens (a longer line goes alone)."""
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        cost = tokenizer.count(line) + 1      # + the line break; an overflow halves the group
        if current and size + cost > budget:
            groups.append(current)
            current, size = [], 0
        current.append(line)
        size += cost
    if current:
        groups.append(current)
    return groups
