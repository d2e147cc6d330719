"""The prompts of a run, as pure functions of (request, tokenizer, text): a batch's prompt with
the end of the summary so far, and the reduce prompt with its budget."""
from __future__ import annotations

from typing import Sequence

from app.pipeline import chunking
from app.pipeline.request import SummaryRequest
from app.pipeline.transcript import Turn


def turns_prompt(request: SummaryRequest, tokenizer, reserve: int, turns: Sequence[Turn],
                 prior: list[str] | None) -> str:
    """The prompt of these turns; with 2 fields, after the context (`prior`) given up to `reserve`
    tokens: the end of the summary so far, or with contextSource "transcript" the rendered turns
    before these (transcript_before). Either is a list whose last summaryTurns items are kept."""
    new_turns = "\n".join(chunking.render_turn(t) for t in turns)
    if request.fields == 1:
        return chunking.fill_template(request.template, [new_turns])
    # The planner counted the batch with an empty context and the context on its own; where
    # the context meets the template, tokens can merge so that the whole costs a little more
    # than its parts. A prompt with a context is counted whole, and any excess comes off the
    # context: no prompt past the context length is ever sent (some engines cut it silently).
    limit = chunking.prompt_limit(request.flavor, tokenizer)
    while True:
        context = summary_tail(prior or [], reserve, request.flavor.summary_turns, tokenizer)
        prompt = chunking.fill_template(request.template, [context, new_turns])
        if not context:
            return prompt        # the very prompt the planner fitted: no need to count it again
        excess = tokenizer.count(prompt) - limit
        if excess <= 0:
            return prompt
        reserve -= excess


def summary_tail(lines: list[str], reserve: int, keep: int, tokenizer) -> str:
    """The last `keep` (summaryTurns) lines of the summary (or rendered previous turns), trimmed
    from the start to `reserve` tokens."""
    if keep <= 0 or not lines or reserve <= 0:
        return ""
    tail = lines[-keep:]
    while len(tail) > 1 and tokenizer.count("\n".join(tail)) > reserve:
        tail = tail[1:]
    text = "\n".join(tail)
    if tokenizer.count(text) > reserve:
        text = _keep_end(text, reserve, tokenizer)
    return text


def uses_transcript_context(request: SummaryRequest) -> bool:
    """Whether a 2-field template's context is the previous turns of the transcript: then every
    batch's prompt is known before any answer, and batches need not wait for each other."""
    return request.fields == 2 and request.flavor.context_source == "transcript"


def transcript_before(turns: Sequence[Turn], start: int, keep: int) -> list[str]:
    """The rendered last `keep` turns before virtual turn `start` of `turns` (all the virtual
    turns of the plan): a batch's context that depends on the plan alone, so a resumed job sends
    the very same prompts."""
    if keep <= 0:
        return []
    return [chunking.render_turn(t) for t in turns[max(0, start - keep):start]]


def _keep_end(text: str, max_tokens: int, tokenizer) -> str:
    """The longest end of `text`, cut at a word boundary, that fits max_tokens."""
    words = text.split(" ")
    low, high = 0, len(words)          # find the fewest leading words to drop
    while low < high:
        middle = (low + high) // 2
        if tokenizer.count(" ".join(words[middle:])) <= max_tokens:
            high = middle
        else:
            low = middle + 1
    return " ".join(words[low:])


def reduce_prompt(template: str, lines: list[str]) -> str:
    """The reduce prompt over these summary lines."""
    return chunking.fill_template(template, ["\n".join(lines)])


def reduce_budget(template: str, flavor, tokenizer) -> int:
    """Tokens of summary lines one reduce prompt may hold."""
    return (flavor.total_context_length - flavor.max_generation_length
            - tokenizer.chat_overhead() - tokenizer.count(chunking.fill_template(template, [""])))
