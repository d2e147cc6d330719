"""Answers that went into a loop: the same words repeated until the generation limit.

Small models decoding greedily (temperature 0) often fall into a loop: "je suis le ministre,
je suis le ministre, je suis le ministre, ..." until max_tokens cuts them. The summarizer
redoes a cut batch in smaller halves, which helps when a good answer was simply too long,
but not a loop: every smaller batch loops again, and a batch of 8 turns becomes 15 calls
that each run to the limit. So a cut answer is first checked for a loop; if it has one, the
repetition is cut off (one copy kept) and the batch is not redone.

A loop here is a run of `period` words repeated at least `_MIN_REPEATS` times in a row at the
very end of the answer (the last copy may be cut short), covering at least `_MIN_LOOP_WORDS`
words. Prose and minutes do not end like that: distinct lines differ in their words.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"\S+")
_MIN_REPEATS = 3
_MIN_LOOP_WORDS = 12


def trim_repetition(text: str) -> str | None:
    """`text` up to the end of the first copy of its final loop, or None if it has none."""
    spans = [m.span() for m in _WORD.finditer(text)]
    words = [text[a:b] for a, b in spans]
    n = len(words)
    for period in range(1, n // _MIN_REPEATS + 1):
        # Walk back from the end while each word equals the word one period later.
        i = n - period - 1
        while i >= 0 and words[i] == words[i + period]:
            i -= 1
        start = i + 1                      # the loop's first word
        looped = n - start                 # words from there to the end
        if looped >= _MIN_REPEATS * period - (period - 1) and looped >= _MIN_LOOP_WORDS:
            return text[:spans[start + period - 1][1]]
    return None
