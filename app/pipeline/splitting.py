"""Cutting text under a token budget: at sentence ends, else between words, else by characters.

Pure functions of (text, tokenizer, room): chunking.py turns their pieces into virtual turns.
Every piece comes with its summed count and how many separately counted units it joins, so
the caller knows which estimates to trust and which to recount.
"""
from __future__ import annotations

import re
from typing import Callable


def go_on() -> None:
    """The default `check` of cutting and planning: never asks it to stop."""


# --- sentences and words --------------------------------------------------------------

# A sentence ends at . ! ? … (with closing quotes/brackets) followed by whitespace; the
# caller checks that what follows does not start in lower case and that "." does not end an
# abbreviation ("M. le président", "art. 3", "etc.").
_END = re.compile(r"[.!?…]+(?:[»\"”’)\]]|[ \u00a0\u202f]+[»”])*(\s+)")
_ABBREVIATIONS = {
    "m", "mm", "mme", "mmes", "mlle", "mlles", "dr", "pr", "me", "mgr", "st", "ste", "art",
    "al", "p", "pp", "etc", "cf", "ex", "vol", "chap", "éd", "ed", "fig", "n", "no", "n°",
    "nos", "av", "apr", "env", "min", "max", "mr", "mrs", "ms", "prof", "jr", "sr", "vs",
    "i.e", "e.g", "c.-à-d", "tél", "hab", "op", "cit", "ibid", "coll", "gén", "sq", "ss",
    "mt", "bd", "dép", "inc", "ltd", "co", "corp", "dept", "approx",
}
_WORD = re.compile(r"\s*\S+\s*")
# How far back from a "." its word is looked for: past any abbreviation's length, and bounded,
# or a text without spaces (one long line) is scanned back to its start at every ".".
_WORD_LOOKBACK = 32


def _is_boundary(text: str, match: re.Match) -> bool:
    """Whether the terminator matched at `match` really ends a sentence."""
    after = match.end()
    if after >= len(text):
        return True
    if "\n" in match.group(1):
        return True
    if text[after].islower():
        return False
    terminator = match.group(0).rstrip()
    if terminator != ".":
        return True
    # The word before a lone ".": an abbreviation or an initial does not end a sentence.
    start = match.start()
    floor = max(0, start - _WORD_LOOKBACK)
    word_start = max(text.rfind(" ", floor, start), text.rfind("(", floor, start),
                     text.rfind("«", floor, start), text.rfind("\u00a0", floor, start), floor - 1) + 1
    word = text[word_start:start].lower()
    word = word[max(word.rfind("'"), word.rfind("’")) + 1:]  # "l'art." -> "art"
    if len(word) == 1 and word.isalpha():
        return False  # "M.", "B. Dogan"
    return word not in _ABBREVIATIONS


def sentences(text: str) -> list[str]:
    """Sentences of `text`, each with the whitespace after it; they join back to `text`."""
    pieces, start = [], 0
    for match in _END.finditer(text):
        if _is_boundary(text, match):
            pieces.append(text[start:match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def words(text: str) -> list[str]:
    """Words of `text`, each with the whitespace after it; they join back to `text`."""
    return _WORD.findall(text) or [text]


# --- packing and cutting ---------------------------------------------------------------

def _pack(units: list[str], counts: list[int], room: int) -> list[tuple[str, int, int]]:
    """Greedily join consecutive units while their summed counts fit `room`:
    (piece, summed count, number of joins between units)."""
    out: list[tuple[str, int, int]] = []
    buf: list[str] = []
    total = 0
    for unit, n in zip(units, counts):
        if buf and total + n > room:
            out.append(("".join(buf), total, len(buf) - 1))
            buf, total = [], 0
        buf.append(unit)
        total += n
    if buf:
        out.append(("".join(buf), total, len(buf) - 1))
    return out


def _cut_chars(text: str, tokenizer, room: int, tokens: int = 0,
               check: Callable[[], None] = go_on) -> list[tuple[str, int]]:
    """Cut one over-long word by characters: each time the longest prefix that fits.

    Each cut counts only about one piece's worth of text, around a guess of where it ends
    (the last piece's length): counting the whole rest at every cut made a long line
    without spaces quadratic (a 1 MB line took minutes, 5 MB hours)."""
    out = []
    start = 0
    # Before any piece is measured: the word's own characters per token (`tokens`, when the
    # caller counted it), else a generous 4.
    guess = len(text) * room // tokens if tokens > 0 else 4 * room
    while start < len(text):
        check()
        end, n = _longest_fit(text, start, tokenizer, room, max(1, guess))
        out.append((text[start:end], n))
        guess = end - start
        start = end
    return out


def _longest_fit(text: str, start: int, tokenizer, room: int, guess: int) -> tuple[int, int]:
    """(end, count) of the longest text[start:end] whose stripped count fits `room`; at least
    one character, so that cutting always moves on.

    Counts grow with the length at about a steady rate (a tokenizer may merge a token away here
    and there; the caller recounts what it keeps), so each count after the first, at `guess`,
    aims where the counts seen so far put the limit: a little past it until the end is
    bracketed, then inside the bracket, halving it instead when aiming did not. About six counts
    of about one piece each, however large the piece."""
    size = len(text) - start

    def count(length: int) -> int:
        return tokenizer.count(text[start:start + length].strip())

    lo, lo_count = 0, 0          # the longest length known to fit (0: none yet)
    hi, hi_count = size + 1, 0   # the shortest length known not to fit (size + 1: none yet)
    probe = min(guess, size)
    slack = 4                    # characters aimed past the estimate; doubled at each miss
    while True:
        width = hi - lo
        n = count(probe)
        if n <= room:
            lo, lo_count = probe, n
        else:
            hi, hi_count = probe, n
        if hi - lo <= 1:
            break
        if hi > size:            # everything fits so far: aim just past room + 1 tokens
            probe = min(size, max(lo + 1, lo * (room + 1) // max(1, lo_count) + slack))
            slack *= 2
        elif lo == 0:            # nothing fits so far: aim just short of room tokens
            probe = max(1, min(hi - 1, hi * room // hi_count - slack))
            slack *= 2
        elif hi - lo <= 8 or 2 * (hi - lo) > width:   # within a token or two, or aiming missed
            probe = (lo + hi) // 2
        else:                    # where room + 1/2 tokens falls between the two counts
            aim = lo + (2 * (room - lo_count) + 1) * (hi - lo) // (2 * (hi_count - lo_count))
            probe = min(hi - 1, max(lo + 1, aim))
    if lo == 0:                  # not even one character fits: keep one (count(1) was the last probe)
        return start + 1, n
    return start + lo, lo_count


def split_units(units: list[str], counts: list[int], tokenizer, room: int,
                check: Callable[[], None] = go_on) -> list[tuple[str, int, int]]:
    """Pack units (sentences) greedily under `room`; a sentence over it is packed word by
    word, and a word over it character by character, so pieces stay full."""
    flat_units: list[str] = []
    flat_counts: list[int] = []
    for unit, n in zip(units, counts):
        if n <= room:
            flat_units.append(unit)
            flat_counts.append(n)
            continue
        check()
        unit_words = words(unit)
        # A sentence of one word (a line without spaces) is counted already: not again.
        word_counts = [n] if len(unit_words) == 1 else tokenizer.count_many([w.strip() for w in unit_words])
        for word, m in zip(unit_words, word_counts):
            if m <= room:
                flat_units.append(word)
                flat_counts.append(m)
            else:
                for chunk, k in _cut_chars(word, tokenizer, room, m, check):
                    flat_units.append(chunk)
                    flat_counts.append(k)
    return _pack(flat_units, flat_counts, room)


def _units(text: str) -> list[str]:
    """The sentences of `text`, or its words when it is one sentence."""
    units = sentences(text)
    return words(text) if len(units) == 1 else units


def split(text: str, tokenizer, room: int,
          check: Callable[[], None] = go_on) -> list[tuple[str, int, int]]:
    """Cut `text` into pieces whose summed sentence (or word) counts fit `room`."""
    units = _units(text)
    return split_units(units, tokenizer.count_many([u.strip() for u in units]), tokenizer, room, check)


def halve(text: str, tokens: int) -> list[tuple[str, int, int]]:
    """Two pieces cut at the sentence (else word, else character) boundary nearest the middle;
    their count is unknown, so `tokens` (the whole's) is given to make them be recounted."""
    units = _units(text)
    if len(units) == 1:
        if len(text.strip()) <= 1:
            return []
        middle = len(text) // 2
        return [(text[:middle], tokens, 0), (text[middle:], tokens, 0)]
    ends, total = [], 0
    for unit in units[:-1]:
        total += len(unit)
        ends.append(total)
    cut = min(ends, key=lambda end: abs(2 * end - len(text)))
    return [(text[:cut], tokens, 0), (text[cut:], tokens, 0)]

