"""The answer checks: what an engine answer says compared with the turns it was sent (CPU only).

Per-turn services (manifest "output": "turns", e.g. `cra`) write one "Speaker : text" line per
speaker turn. Their answer is aligned with the batch's *interventions* (consecutive turns of one
speaker: a long speech cut into virtual turns is one intervention, written as one line): lines
and interventions of the same speaker matched in order, with the most words in common (see
`align`), so an answer in another order is put back in transcript order.
An intervention with no line is missing (the caller asks again once); one of a few words
("Très bien !", the template lets the model leave those out) may be left out.

Every service: a line whose speaker is in neither the batch nor the transcript is an invented
speaker (a per-turn service drops it: it is no turn of the sitting); a figure or a name that
neither the batch's turns nor the context given with it hold is unsupported (app/pipeline/facts.py
says what counts as one). Each finding is a warning a person can act on, and a count in `Tally`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from app.pipeline.facts import Source, unaccented, unsupported_figures, unsupported_names
from app.pipeline.transcript import Turn

BRIEF_WORDS = 3         # an intervention of at most this many words may be left out of a report
MAX_WARNINGS = 50       # findings worded as warnings per job; the rest are only counted
_LABEL = re.compile(r"^\W*([^:\n]{1,250}?)\s*:(?:\s+(.*))?$")   # "Speaker : text", markdown allowed
_WORD = re.compile(r"[^\W\d_]{4,}")      # words that carry meaning: articles and "est" don't align
# Forms of address and articles that may stand before a name or not: "M. le président" and
# "Le Président" are one speaker, and so are "Mme DUPONT" and "Dupont".
_ADDRESS = {"m", "mm", "mme", "mmes", "mlle", "monsieur", "madame", "mr", "mrs", "ms", "dr", "pr",
            "le", "la", "les", "l", "the"}
# Lowercase words that may stand inside a person's name ("Charles de Gaulle", "Ursula von der Leyen").
_PARTICLES = {"de", "du", "des", "d", "la", "le", "van", "von", "der", "den", "di", "da", "del", "y", "e"}


@dataclass
class Tally:
    """The checks of some batches: counts, and the warnings that word them."""

    turns: int = 0                  # interventions of per-turn services that were checked
    turns_in_report: int = 0        # ... that have a line in the report (asked-again ones included)
    asked_again: int = 0            # ... that had no line and were asked again
    missing: int = 0                # ... still without a line after that
    brief_omitted: int = 0          # ... of a few words, left out as the template allows
    invented_speakers: int = 0
    unsupported_figures: int = 0
    unsupported_names: int = 0
    warnings: list[str] = field(default_factory=list)
    asking_seconds: float = 0.0     # time in asked-again calls (not the checks' own cost)

    COUNTS = {"turns": "turns", "turns_in_report": "turnsInReport", "asked_again": "askedAgain",
              "missing": "missing", "brief_omitted": "briefOmitted", "invented_speakers": "inventedSpeakers",
              "unsupported_figures": "unsupportedFigures", "unsupported_names": "unsupportedNames"}

    def add(self, other: "Tally") -> None:
        for attr in self.COUNTS:
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        self.warnings.extend(other.warnings)

    def clear(self) -> None:
        """Back to nothing found (a tally that goes on after its findings were handed over)."""
        self.__init__()

    def counts(self) -> dict[str, int]:
        """The counts as GET /results shows them (`checks`)."""
        return {key: getattr(self, attr) for attr, key in self.COUNTS.items()}

    @classmethod
    def from_counts(cls, counts: dict) -> "Tally":
        """A tally of the counts a checkpoint saved (its warnings are saved with the run's)."""
        return cls(**{attr: int(counts.get(key, 0)) for attr, key in cls.COUNTS.items()})


@dataclass(frozen=True)
class Line:
    """One line of an answer: its text, and its speaker label and what follows it, if any."""

    text: str
    label: str | None
    body: str


def parse_line(text: str) -> Line:
    match = _LABEL.match(text)
    if match and not match.group(1).strip().isdigit():
        return Line(text, match.group(1).strip(" *_"), (match.group(2) or "").strip())
    return Line(text, None, text)


def speaker_key(name: str) -> frozenset[str]:
    """The words that name a speaker, without case, accents or forms of address."""
    words = re.findall(r"[^\W_]+", unaccented(name).casefold())
    return frozenset(word for word in words if word not in _ADDRESS)


def same_speaker(label: frozenset[str], speaker: frozenset[str]) -> bool:
    """"Dupont" is "M. Jean Dupont": one name's words hold the other's."""
    return bool(label) and bool(speaker) and (label <= speaker or speaker <= label)


def looks_like_a_person(label: str) -> bool:
    """A label written as a person's name: capitalised words (particles aside), at least two of
    them or a form of address and one ("M. Durand"), no digits. "Points clés" and "Décision"
    are headings, not people."""
    words = re.findall(r"[^\W_]+\.?", label)
    if not words or len(words) > 6 or any(ch.isdigit() for ch in label):
        return False
    capitalised = [w for w in words if w[0].isupper()]
    if any(not w[0].isupper() and w.lower().rstrip(".") not in _PARTICLES for w in words):
        return False
    titled = words[0].rstrip(".").lower() in _ADDRESS and len(words) > 1
    return len(capitalised) >= 2 or titled


@dataclass
class Intervention:
    """Consecutive turns of one speaker in a batch: what a per-turn report writes one line for."""

    index: int                     # in the batch, from 0
    first: int                     # the virtual turn it starts at (run-wide, from 0)
    turns: list[Turn]
    key: frozenset[str]
    words: frozenset[str]

    @property
    def speaker(self) -> str:
        return self.turns[0].speaker

    @property
    def brief(self) -> bool:
        return sum(len(t.text.split()) for t in self.turns) <= BRIEF_WORDS

    def label(self) -> str:
        return f"turn {self.first + 1} ({self.speaker})"


def interventions(start: int, turns: Sequence[Turn]) -> list[Intervention]:
    """The batch's interventions: its named turns grouped by consecutive speaker."""
    found: list[Intervention] = []
    for offset, turn in enumerate(turns):
        if not turn.speaker:
            continue
        if found and found[-1].speaker == turn.speaker and found[-1].first + len(found[-1].turns) == start + offset:
            found[-1].turns.append(turn)
            continue
        found.append(Intervention(len(found), start + offset, [turn], speaker_key(turn.speaker), frozenset()))
    for item in found:
        item.words = _content_words(" ".join(t.text for t in item.turns))
    return found


@dataclass
class Alignment:
    """A per-turn answer put in transcript order: lines by intervention, and what has no line."""

    slots: dict[int, list[str]]          # intervention index -> its lines, in the answer's order
    missing: list[Intervention]          # no line (brief ones included)
    invented: list[Line]                 # lines of a speaker in neither the batch nor the transcript


def align(lines: Sequence[str], items: Sequence[Intervention], known: Sequence[frozenset[str]]) -> Alignment:
    """Give each line of a per-turn answer its intervention.

    Labelled lines are matched with interventions of their speaker in order, as many as can be
    and with the most words in common (a weighted longest common subsequence), reading the
    answer forwards or backwards, whichever matches more; a labelled line left over (two lines
    swapped) then takes a free intervention of its speaker, the one it shares most words with.
    A further line of a placed speaker, or a line with no label, follows the line before it; a
    line of an unknown speaker is invented. Quadratic in the batch, which is small.
    """
    parsed = [parse_line(text) for text in lines]
    invented: list[Line] = []
    owner: list[int | None] = [None] * len(parsed)
    common: dict[int, dict[int, int]] = {}        # line -> {intervention of its speaker: words in common}
    for i, line in enumerate(parsed):
        if line.label is None:
            continue
        key = speaker_key(line.label)
        matches = [item for item in items if same_speaker(key, item.key)]
        if matches:
            words = _content_words(line.body)
            common[i] = {item.index: len(words & item.words) for item in matches}
        elif not any(same_speaker(key, speaker) for speaker in known):
            invented.append(line)
            owner[i] = -1
    labelled = sorted(common)
    forward, score = _in_order(labelled, len(items), common)
    backward, score_back = _in_order(labelled[::-1], len(items), common)
    for i, index in (backward if score_back > score else forward):
        owner[i] = index
    taken = {index for index in owner if index is not None and index >= 0}
    leftovers = sorted((-words, i, index) for i in labelled if owner[i] is None
                       for index, words in common[i].items() if index not in taken)
    for _, i, index in leftovers:
        if owner[i] is None and index not in taken:
            owner[i] = index
            taken.add(index)
    slots: dict[int, list[str]] = {}
    previous: int | None = None
    for i, line in enumerate(parsed):
        if owner[i] == -1:
            continue
        slot = owner[i] if owner[i] is not None else previous
        if slot is None:          # a line before any placed one: it leads the first intervention
            slot = _owner_of_first(owner)
        slots.setdefault(slot, []).append(line.text)
        previous = slot
    missing = [item for item in items if item.index not in taken]
    return Alignment(slots, missing, invented)


_MATCH = 1000      # a matched line outweighs any number of words in common


def _in_order(lines: list[int], items: int, common: dict[int, dict[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """The (line, intervention) pairs that keep both orders, the most of them and with the most
    words in common, and their score (dynamic programming over lines × interventions)."""
    rows, cols = len(lines), items
    best = [[0] * (cols + 1) for _ in range(rows + 1)]
    for r in range(rows - 1, -1, -1):
        mine = common[lines[r]]
        for c in range(cols - 1, -1, -1):
            value = max(best[r + 1][c], best[r][c + 1])
            if c in mine:
                value = max(value, _MATCH + mine[c] + best[r + 1][c + 1])
            best[r][c] = value
    pairs, r, c = [], 0, 0
    while r < rows and c < cols:
        mine = common[lines[r]]
        if c in mine and best[r][c] == _MATCH + mine[c] + best[r + 1][c + 1]:
            pairs.append((lines[r], c))
            r, c = r + 1, c + 1
        elif best[r][c] == best[r + 1][c]:
            r += 1
        else:
            c += 1
    return pairs, best[0][0] if rows and cols else 0


def _owner_of_first(owner: list[int | None]) -> int:
    placed = [o for o in owner if o is not None and o >= 0]
    return min(placed) if placed else 0


def in_order(alignment: Alignment) -> list[str]:
    """The aligned lines in transcript order."""
    return [text for index in sorted(alignment.slots) for text in alignment.slots[index]]


def check_facts(lines: Sequence[str], source: Source, where: str, tally: Tally) -> None:
    """Count and word the figures and names of these lines that the source does not hold."""
    for text in lines:
        body = parse_line(text).body
        for figure in unsupported_figures(body, source):
            tally.unsupported_figures += 1
            tally.warnings.append(f"the figure {figure} in the line «{_short(text)}» is not in {where} "
                                  "nor in the context given with them: check it against the transcript")
        for name in unsupported_names(body, source):
            tally.unsupported_names += 1
            tally.warnings.append(f"the name {name} in the line «{_short(text)}» is not in {where} "
                                  "nor in the context given with them: check it against the transcript")


def check_summary_speakers(lines: Sequence[str], known: Sequence[frozenset[str]], allowed: str,
                           where: str, tally: Tally) -> None:
    """A summary's lines labelled with a person's name that no speaker of the transcript bears
    (labels the template itself uses, such as « Décision : », are headings)."""
    allowed_words = {unaccented(w).casefold() for w in re.findall(r"[^\W\d_]+", allowed)}
    for text in lines:
        line = parse_line(text)
        if line.label is None or not looks_like_a_person(line.label):
            continue
        key = speaker_key(line.label)
        if key <= allowed_words or any(same_speaker(key, speaker) for speaker in known):
            continue
        tally.invented_speakers += 1
        tally.warnings.append(f"the line «{_short(text)}» ({where}) speaks for {line.label}, who is not a "
                              "speaker of the transcript")


def word_invented(line: Line, where: str) -> str:
    return (f"the line «{_short(line.text)}» ({where}) gives {line.label} as speaker, who is not a speaker "
            "of the transcript; it was left out of the report")


def _content_words(text: str) -> frozenset[str]:
    return frozenset(unaccented(word).casefold() for word in _WORD.findall(text))


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
