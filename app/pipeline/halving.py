"""A batch's summary lines: one engine call, or the batch redone in two halves (recursively) when
its answer is cut (finish_reason "length") or its prompt overflows the context. An answer cut
because the model went into a loop is trimmed instead: smaller batches would loop again (see
app/pipeline/repetition.py)."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

from app.pipeline import chunking, prompts
from app.pipeline.calls import call, cut_at
from app.pipeline.checks import Tally
from app.pipeline.engine import ContextOverflowError
from app.pipeline.output import clean_output
from app.pipeline.repetition import trim_repetition
from app.pipeline.run import Run
from app.pipeline.transcript import Turn
from app.pipeline.verify import checked

log = logging.getLogger(__name__)

OnHalf = Callable[[int, list[str]], None]


def summarize_turns(run: Run, start: int, turns: Sequence[Turn], prior: list[str] | None, tally: Tally,
                    on_half: OnHalf | None = None) -> list[str]:
    """Summary lines of these turns (the first is virtual turn `start`); halves them when the
    answer is cut or too long. Each answer is checked (app/pipeline/verify.py) into `tally`.

    `on_half(done, lines)` is called when the first half of a batch cut between whole turns
    is summarized (fields == 2: `lines` is the whole summary so far), to save a checkpoint.
    """
    template = run.request.template
    try:
        completion = call(run, lambda: prompts.turns_prompt(run.request, run.tokenizer, run.reserve, turns, prior),
                          _turns_label(start, turns))
    except ContextOverflowError:
        halves = _halve_turns(turns)
        if halves is None:
            raise
        log.info("summarize: prompt of turn %d (%d turns) overflows; halving", start, len(turns))
        # One turn halved is cut by words: its first half is not a whole turn done.
        return _summarize_halves(run, start, halves, prior, tally, on_half if len(turns) > 1 else None)
    label = _turns_label(start, turns)
    text = completion.text
    if completion.finish_reason == "length":
        looped = trim_repetition(completion.text)
        if looped is not None:
            run.warn(f"the answer for {label} went into a loop (the same words "
                     f"repeated up to maxGenerationLength); the repetition was cut off")
            text = looped
        elif len(turns) > 1:
            log.info("summarize: answer for turn %d (%d turns) cut; halving", start, len(turns))
            return _summarize_halves(run, start, _halve_turns(turns), prior, tally, on_half)
        else:
            run.warn(f"the summary of {label} was cut at "
                     f"{cut_at(run.request.flavor, completion)}; kept as is")
    return checked(run, start, turns, prior, clean_output(text, template), tally, label)


def _summarize_halves(run: Run, start: int, halves: tuple[Sequence[Turn], Sequence[Turn]],
                      prior: list[str] | None, tally: Tally, on_half: OnHalf | None) -> list[str]:
    first, second = halves
    out = summarize_turns(run, start, first, prior, tally, on_half)
    # With fields == 2 the second half's context is the summary including the first half, or
    # with the transcript as context, the turns before it: the first half's own.
    if prompts.uses_transcript_context(run.request):
        after = (prior or []) + [chunking.render_turn(t) for t in first]
    else:
        after = (prior or []) + out if run.request.fields == 2 else prior
    # A batch whose answers keep being cut can take many calls (a small model rambling to
    # maxGenerationLength): save the half that is done, and honour a stop or cancel here
    # rather than at the end of the whole batch.
    if on_half is not None:
        on_half(start + len(first), after)
    run.check_stop()
    return out + summarize_turns(run, start + len(first), second, after, tally, on_half)


def _turns_label(start: int, turns: Sequence[Turn]) -> str:
    """'turns 3-10' or 'turn 3 (Speaker)', numbered from 1 like the warnings users read."""
    if len(turns) == 1:
        return f"turn {start + 1}" + (f" ({turns[0].speaker})" if turns[0].speaker else "")
    return f"turns {start + 1}-{start + len(turns)}"


def _halve_turns(turns: Sequence[Turn]) -> tuple[Sequence[Turn], Sequence[Turn]] | None:
    """Two halves of the turns; a single turn is cut in two by words; None if it cannot be."""
    if len(turns) > 1:
        return turns[:len(turns) // 2], turns[len(turns) // 2:]
    words = turns[0].text.split()
    if len(words) < 2:
        return None
    middle = len(words) // 2
    speaker = turns[0].speaker
    return ((Turn(speaker, " ".join(words[:middle])),),
            (Turn(speaker, " ".join(words[middle:])),))
