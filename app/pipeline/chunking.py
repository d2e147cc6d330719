"""Virtual turns, rendering turns, filling templates, and planning batches under a token budget.

Counting is the expensive part, so every sentence is counted once (in one batched call),
turn lengths are sums of sentence counts, and only what could be over a limit is recounted
for real: pieces near `max_tokens` and every batch's final prompt. Where text is cut (sentences,
words, characters) is app/pipeline/splitting.py's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from app.pipeline import splitting
from app.pipeline.splitting import go_on
from app.pipeline.transcript import Turn

# Fewest tokens a batch must leave for turns; below this no transcript could ever be sent.
MIN_TURN_ROOM = 16


class BudgetError(ValueError):
    """The template, chat overhead, context reserve and generation leave no room for turns."""


@dataclass(frozen=True)
class Batch:
    """Consecutive virtual turns sent in one engine call; `start` is the first one's index."""

    start: int
    turns: tuple[Turn, ...]


def render_turn(turn: Turn) -> str:
    """The line a turn becomes in a prompt: "Speaker : text", or the text when unnamed."""
    return f"{turn.speaker} : {turn.text}" if turn.speaker else turn.text


def fill_template(template: str, values: Sequence[str]) -> str:
    """Replace each "{}" of `template` by the next value (never str.format: braces stay)."""
    parts = template.split("{}")
    if len(parts) - 1 != len(values):
        raise ValueError(f"template has {len(parts) - 1} '{{}}' placeholders, "
                         f"{len(values)} values given")
    out = [parts[0]]
    for value, part in zip(values, parts[1:]):
        out.append(value)
        out.append(part)
    return "".join(out)


_JOIN_ALLOWANCE = 2    # tokens a join between two rendered turns costs with the tokenizers we know


def default_context_reserve(flavor) -> int:
    """Tokens kept for the context: one virtual turn's worth per summary line or previous turn.

    A previous turn's rendered line is at most createNewTurnAfter tokens (virtual turns are cut
    there), so with contextSource "transcript" the reserve also pays the joins between them (a
    newline and how the next line starts): previous turns of full length then fit whole. What
    still passes the budget is cut from the context by prompts.turns_prompt, never sent."""
    if flavor.summary_turns <= 0:
        return 0
    per_turn = flavor.create_new_turn_after
    if flavor.context_source == "transcript":
        per_turn += _JOIN_ALLOWANCE
    return flavor.summary_turns * per_turn


# --- virtual turns -----------------------------------------------------------------------

def _margin(limit: int) -> int:
    """How far under a limit a summed estimate must be to be trusted without a recount."""
    return 2 + limit // 100


@dataclass
class _Piece:
    """A virtual turn being built: its raw text (trailing space kept) and line token count."""

    speaker: str
    text: str
    tokens: int          # tokens of the rendered line: an estimate unless `exact`
    joins: int = 0       # places where separately counted parts meet (label, sentences)
    exact: bool = False

    def line(self) -> str:
        return render_turn(Turn(self.speaker, self.text.strip()))


def _settle(pieces: list[_Piece], tokenizer, limit: int, prefix: dict[str, int],
            check: Callable[[], None] = go_on) -> list[_Piece]:
    """Recount pieces whose estimate could exceed `limit` and cut again those that do.

    A sum of counts is exact for sentencepiece-style tokenizers; others may differ by about a
    token where two counted parts meet, hence the allowance per join."""
    suspects = [p for p in pieces
                if not p.exact and p.tokens + p.joins > limit - _margin(limit)]
    for p, n in zip(suspects, tokenizer.count_many([p.line() for p in suspects])):
        p.tokens, p.exact = n, True
    out: list[_Piece] = []
    for p in pieces:
        if p.tokens <= limit or len(p.text.strip()) <= 1:
            out.append(p)
            continue
        check()
        # Over by a few tokens (tokenization across sentence boundaries): cut tighter.
        room = limit - prefix[p.speaker] - (p.tokens - limit)
        if room < 1:  # the label alone is about the limit: cutting the text cannot help
            out.append(p)
            continue
        cut = splitting.split(p.text, tokenizer, room, check)
        if len(cut) == 1:  # the sums say it fits, the tokenizer disagrees: halve it
            cut = splitting.halve(p.text, p.tokens)
        if len(cut) <= 1:
            out.append(p)
            continue
        joins = 1 if p.speaker else 0
        parts = [_Piece(p.speaker, t, prefix[p.speaker] + n, joins + j) for t, n, j in cut]
        out.extend(_settle(parts, tokenizer, limit, prefix, check))
    return out


def _prefix_costs(speakers, tokenizer) -> dict[str, int]:
    """Tokens that "Speaker :" adds to a line, per speaker ("" costs nothing)."""
    names = sorted({s for s in speakers if s})
    costs = dict(zip(names, tokenizer.count_many([f"{s} :" for s in names])))
    costs[""] = 0
    return costs


def _virtual_pieces(turns: Sequence[Turn], tokenizer, max_tokens: int,
                    prefix: dict[str, int] | None = None,
                    check: Callable[[], None] = go_on) -> list[_Piece]:
    """Cut turns whose line exceeds `max_tokens`; every sentence is counted once, in one call."""
    if prefix is None:
        prefix = _prefix_costs((t.speaker for t in turns), tokenizer)
    per_turn = [splitting.sentences(t.text) for t in turns]
    flat = [u.strip() for units in per_turn for u in units]
    check()
    counts = iter(tokenizer.count_many(flat))
    pieces: list[_Piece] = []
    for turn, units in zip(turns, per_turn):
        check()
        unit_counts = [next(counts) for _ in units]
        est = prefix[turn.speaker] + sum(unit_counts)
        label_join = 1 if turn.speaker else 0
        if est <= max_tokens:
            pieces.append(_Piece(turn.speaker, turn.text, est, label_join + len(units) - 1))
            continue
        # When the label takes most of the limit the line cannot fit anyway: keep pieces of
        # a quarter of the limit rather than crumbs of a word or two.
        room = max(1, max_tokens // 4, max_tokens - prefix[turn.speaker])
        for text, n, joins in splitting.split_units(units, unit_counts, tokenizer, room, check):
            pieces.append(_Piece(turn.speaker, text, prefix[turn.speaker] + n, label_join + joins))
    return _settle(pieces, tokenizer, max_tokens, prefix, check)


def split_text(text: str, tokenizer, max_tokens: int) -> list[str]:
    """Cut text greedily at sentence (else word, else character) ends into pieces of <= max_tokens."""
    # Each piece, stripped, counts at most max_tokens; whitespace stays with the piece before
    # it, so "".join(pieces) == text.
    if not text.strip():
        return [text] if text else []
    pieces = [_Piece("", t, n, j) for t, n, j in splitting.split(text, tokenizer, max_tokens)]
    return [p.text for p in _settle(pieces, tokenizer, max_tokens, {"": 0})]


def split_long_turns(turns: Sequence[Turn], tokenizer, max_tokens: int,
                     check: Callable[[], None] | None = None) -> list[Turn]:
    """Virtual turns: cut each turn whose rendered line exceeds max_tokens, keeping its speaker.

    `check` is called between pieces (often: it must be cheap) and raises to stop the cutting."""
    pieces = _virtual_pieces(turns, tokenizer, max_tokens, check=check or go_on)
    return [Turn(p.speaker, p.text.strip()) for p in pieces]


# --- batches -----------------------------------------------------------------------------

def _empty_values(fields: int) -> list[str]:
    if fields not in (1, 2):
        raise ValueError(f"a summary template has 1 or 2 fields, not {fields}")
    return [""] * fields


def _fill(template: str, fields: int, turns_text: str) -> str:
    """The prompt of one batch; for 2 fields the context (previous summary) comes first, empty."""
    return fill_template(template, ["", turns_text] if fields == 2 else [turns_text])


def prompt_limit(flavor, tokenizer, context_reserve: int = 0) -> int:
    """Most tokens the filled prompt may have (with context_reserve kept aside for the context)."""
    return (flavor.total_context_length - flavor.max_generation_length
            - tokenizer.chat_overhead() - context_reserve)


def prompt_room(template: str, fields: int, flavor, tokenizer, context_reserve: int = 0) -> int:
    """Tokens left for turns once template, chat overhead, context reserve and generation are paid."""
    base = tokenizer.count(fill_template(template, _empty_values(fields)))
    return prompt_limit(flavor, tokenizer, context_reserve) - base


def _newline_cost(tokenizer) -> int:
    """Tokens joining two lines costs: the newline, plus one for how the next line starts."""
    joined = tokenizer.count("Très bien.\nLa parole est à M. le ministre.")
    apart = tokenizer.count_many(["Très bien.", "La parole est à M. le ministre."])
    return max(1, joined - sum(apart)) + 1


def plan_batches(turns: Sequence[Turn], template: str, fields: int, flavor, tokenizer,
                 context_reserve: int = 0, check: Callable[[], None] | None = None) -> list[Batch]:
    """Cut long turns into virtual turns and pack consecutive ones into batches that fit the context.

    `check` is called between pieces and batches (often: it must be cheap) and raises to stop
    planning: a cancel or a shutdown need not wait for a huge transcript to be planned."""
    # A batch fits when count(filled prompt) + chat overhead + context_reserve +
    # max_generation_length <= total_context_length, and it has at most max_new_turns turns.
    check = check or go_on
    room = prompt_room(template, fields, flavor, tokenizer, context_reserve)
    if room < MIN_TURN_ROOM:
        raise BudgetError(
            f"flavor {flavor.name!r}: the template, chat overhead ({tokenizer.chat_overhead()}), "
            f"context reserve ({context_reserve}) and generation ({flavor.max_generation_length}) "
            f"leave {room} tokens of {flavor.total_context_length} for the transcript")
    limit = prompt_limit(flavor, tokenizer, context_reserve)
    base = limit - room
    cut_at = min(flavor.create_new_turn_after, room) if flavor.create_new_turn_after > 0 else room
    prefix = _prefix_costs((t.speaker for t in turns), tokenizer)
    pieces = _virtual_pieces(turns, tokenizer, cut_at, prefix, check)
    max_turns = flavor.max_new_turns if flavor.max_new_turns > 0 else len(pieces)
    lines = [p.line() for p in pieces]
    newline = _newline_cost(tokenizer)

    def prompt(start: int, end: int) -> str:
        return _fill(template, fields, "\n".join(lines[start:end]))

    def greedy(start: int, most: int) -> list[tuple[int, int, int]]:
        ranges = []
        while start < len(pieces) and len(ranges) < most:
            end, total = start + 1, base + pieces[start].tokens
            while (end < len(pieces) and end - start < max_turns
                   and total + newline + pieces[end].tokens <= limit):
                total += newline + pieces[end].tokens
                end += 1
            ranges.append((start, end, total))
            start = end
        return ranges

    spans: list[tuple[int, int]] = []
    start = 0
    trusted = limit - _margin(limit)
    # Ranges are planned and counted a round at a time, each round twice as many as the last. A
    # short estimate ends the round (the ranges after it would start elsewhere) and the next one
    # plans a single range again: planning the whole rest at every short estimate recounted it
    # each time, quadratic when many are short (one long line cut to the whole room).
    ahead = 1
    while start < len(pieces):
        check()
        ranges = greedy(start, ahead)
        ahead *= 2
        # Only a prompt whose estimate is near the limit is counted for real: one well under it
        # (most are, when maxNewTurns ends the batch) cannot be over it.
        near = [(s, e) for s, e, total in ranges if total > trusted]
        real = dict(zip(near, tokenizer.count_many([prompt(s, e) for s, e in near])))
        for s, e, total in ranges:
            n = real.get((s, e), total)
            if n <= limit:
                spans.append((s, e))
                start = e
                continue
            # The estimate was short: drop about the excess, then one turn at a time.
            ahead = 1
            excess = n - limit
            while e - s > 1 and excess > 0:
                e -= 1
                excess -= pieces[e].tokens + newline
            n = tokenizer.count(prompt(s, e))
            while e - s > 1 and n > limit:
                e -= 1
                n = tokenizer.count(prompt(s, e))
            if n <= limit:
                spans.append((s, e))
                start = e
            else:  # one virtual turn alone is too long here: cut it further, never skip it
                piece = pieces[s]
                if not piece.exact:
                    piece.tokens, piece.exact = tokenizer.count(piece.line()), True
                budget = piece.tokens - (n - limit) - 1
                if budget < 1:
                    raise BudgetError(f"flavor {flavor.name!r}: a turn cannot fit in {room} tokens")
                smaller = _settle([piece], tokenizer, budget, prefix, check)
                if len(smaller) == 1:
                    raise BudgetError(f"flavor {flavor.name!r}: a turn cannot fit in {room} tokens")
                pieces[s:s + 1] = smaller
                lines[s:s + 1] = [p.line() for p in smaller]
                start = s
            break  # the later ranges were planned on stale numbers: plan again from `start`
    return [Batch(s, tuple(Turn(p.speaker, p.text.strip()) for p in pieces[s:e]))
            for s, e in spans]
