"""Which text before a line's colon names a speaker: "Speaker : text" labels in transcripts.

Speech contains colons too ("Les analyses sont simples et partagées : il faut…"), so each
candidate label gets a strength (see `label_strength` for the rule and
tests/test_transcript.py for the data it was tuned on) and a weak one is trusted only when
the rest of the file corroborates it (`accepted_labels`).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_TS = r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d{1,3})?"
# "[00:01:23]", "(00:01:23)", "00:01:23 -", "[00:01:23 --> 00:01:30]" at the start of a line.
_LEADING_TS = re.compile(
    rf"^\s*(?:[\[(]\s*{_TS}(?:\s*(?:-->|-|–)\s*{_TS})?\s*[\])]|\d{{1,2}}:\d{{2}}:\d{{2}}(?:[.,]\d{{1,3}})?)"
    r"\s*[-–]?\s*"
)
# "Speaker 1 (00:01:23): text" / "Speaker 1 [00:01:23]: text" / "Speaker 1: text".
# The label cannot hold a colon; "(?!//)" keeps "http://…" out.
_LABELLED = re.compile(rf"^([^:]{{1,160}}?)\s*(?:[\[(]\s*{_TS}\s*[\])])?\s*:(?!//)\s*")
# Otter-style header line: "Speaker 1  0:03" or "Jaana Dogan (00:01:23)" alone on a line.
_HEADER = re.compile(rf"^([^:]{{1,80}}?)\s+[\[(]?{_TS}[\])]?\s*$")

_MAX_LABEL_CHARS = 150
_MAX_NAME_WORDS = 8      # longest seen: "Plusieurs députés du groupe UMP" (5)
_MAX_ROLE_WORDS = 20     # "ministre du travail, de l'emploi, de la formation …" (13)
_MAX_WEAK_WORDS = 3      # "Audience member", "Un député": trusted if they recur
# Honorifics that make a label by themselves ("M. le président", "Mme la présidente").
_HONORIFICS = {
    "m.", "mm.", "mme", "mme.", "mmes", "mlle", "mlle.", "me", "me.", "dr", "dr.", "pr", "pr.",
    "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "sir", "dame", "lord", "prof.", "prof",
}
# Lower-case words allowed inside a name ("Charles de La Verpillière", "Minister of Finance").
_PARTICLES = {
    "de", "du", "des", "la", "le", "les", "d'", "l'", "van", "von", "der", "den", "da", "di",
    "del", "della", "dos", "das", "do", "y", "e", "bin", "ibn", "al", "el", "ben", "zu", "ter",
    "of", "the", "and", "for", "et", "au", "aux", "en",
}
# Collective labels of a parliament record start with one of these ("Un député du groupe UMP").
_DETERMINERS = {
    "un", "une", "plusieurs", "des", "de", "quelques", "nombreux", "le", "la", "les", "l'",
    "a", "an", "the", "several", "some", "many", "all", "tous", "toutes",
}
# Sentence punctuation never appears in a label; a "." only ends an abbreviation or initial.
_SENTENCE_PUNCT = re.compile(r"[?!;«»\"“”…]|\.\.|\.(?!\s|$)")
# Diarization ids, in any case: "Speaker 1", "spk1", "spk_2", "speaker_0", "SPEAKER_00". LinTO
# Studio writes "speaker" for a segment without a speaker id and "undefined" for one whose id it
# cannot map to a name: labels too.
_SPEAKER_ID = re.compile(
    r"^(?:(?:speaker|locuteur|intervenant|intervenante|participant|orateur|oratrice|interviewer|"
    r"interviewee|person|personne|spk|p|s)[ _-]?\d{1,3}|speaker|undefined)$",
    re.IGNORECASE,
)
# A lower-case name ("marie", "jean-paul", "bob_2"): one or two words of letters, digits, "_" or "-".
_LOWER_NAME = re.compile(r"^[^\W\d_][\w-]{0,39}(?: [\w-]{1,40})?$")

STRONG, WEAK, LOWER = 2, 1, 3      # LOWER: a weak label in lower case (see accepted_labels)


def _is_capitalized(word: str) -> bool:
    """True for "Kosciusko-Morizet", "O'Brien", "d'Estaing", "UMP", "3", "P1"."""
    word = word.strip("()")
    if not word:
        return False
    if word[0].isupper() or word[0].isdigit():
        return True
    # d'Estaing, l'Hôpital: an elided particle before a capitalised name.
    return len(word) > 2 and word[1] in "'’" and word[2].isupper()


@functools.lru_cache(maxsize=8192)  # labels repeat: a long transcript has few distinct ones
def label_strength(label: str) -> int:
    """How sure we are that `label` (the text before a line's first colon) names a speaker.

    STRONG: looks like a name or a speaker id (any case), accepted wherever it occurs.
    WEAK: label-shaped but could be speech ("Cependant, il faudra …"); accepted only if the
    same label occurs again, or its name part is a strong label elsewhere in the file.
    LOWER: a lower-case name ("marie"); accepted if it recurs or most lines are labelled.
    0: not a label (sentence punctuation, too long, lower-case start, …).
    """
    if not label or len(label) > _MAX_LABEL_CHARS:
        return 0
    if _SPEAKER_ID.match(label):
        return STRONG
    if not (label[0].isupper() or label[0].isdigit()):
        # A speaker renamed in lower case ("marie : …"): trusted if it recurs, or in a file whose
        # lines are mostly labelled (see accepted_labels); speech rarely starts "word : ".
        return LOWER if _LOWER_NAME.match(label) else 0
    if _SENTENCE_PUNCT.search(label):
        return 0
    # "." is only allowed after an initial or a known abbreviation: "M.", "B. Dogan".
    for word in label.split():
        if word.endswith(".") and len(word.rstrip(".")) > 1 and word.lower() not in _HONORIFICS:
            return 0
    name, _, role = label.partition(",")
    words = name.split()
    if not words or len(words) > _MAX_NAME_WORDS or len(role.split()) > _MAX_ROLE_WORDS:
        return 0
    if role and not role.strip():
        return 0
    first = words[0].lower()
    if first in _HONORIFICS or _SPEAKER_ID.match(name.strip()):
        return STRONG
    if len(words) == 1 and len(label) == 1 and label.isupper():
        return STRONG      # "E : …", "Y : …": one-letter speakers, though "e" and "y" are particles
    significant = [w for w in words if w.lower() not in _PARTICLES]
    all_caps = bool(significant) and all(_is_capitalized(w) for w in significant)
    if all_caps and not role:
        return STRONG
    if all_caps and len(words) >= 2:
        # "Jean-Marc Ayrault, Premier ministre"; a one-word name before a comma is too often
        # a sentence opener ("Cependant, il faudra …").
        return STRONG
    if first in _DETERMINERS and len(words) <= 6 and any(
        _is_capitalized(w) for w in words[1:]
    ):
        return STRONG  # "Un député du groupe UMP", "Plusieurs députés du groupe SRC"
    if len(words) <= _MAX_WEAK_WORDS and not role:
        return WEAK
    if all_caps:
        return WEAK  # "Macron, président": trusted only if "Macron" is a label elsewhere
    return 0


@dataclass
class Line:
    """One line of a transcript (or subtitle cue), split into its candidate label and text."""

    label: str | None      # candidate label, None when the line has none
    strength: int
    text: str              # the text after the label
    raw: str               # the whole line, used when the label is not trusted


def split_label(line: str) -> Line:
    """Split one line into a candidate label and its text."""
    if line[:1] in "[(0123456789":
        line = _LEADING_TS.sub("", line, count=1)
    line = line.strip()
    # Fast path: most continuation lines have no colon near their start.
    if ":" not in line[:170]:
        return Line(None, 0, line, line)
    header = _HEADER.match(line) if len(line) < 100 else None
    if header:
        label = header.group(1).strip().rstrip(",")
        strength = label_strength(label)
        return Line(label, strength, "", line) if strength else Line(None, 0, line, line)
    match = _LABELLED.match(line)
    if not match:
        return Line(None, 0, line, line)
    label = match.group(1).strip().rstrip(",").strip()
    strength = label_strength(label)
    if not strength:
        return Line(None, 0, line, line)
    return Line(label, strength, line[match.end():], line)


def accepted_labels(lines: list[Line]) -> set[str]:
    """Labels to trust: every strong one, and weak ones corroborated elsewhere in the file."""
    strong = {ln.label for ln in lines if ln.strength == STRONG}
    names = {label.partition(",")[0].strip() for label in strong}
    seen: dict[str, int] = {}
    lower: dict[str, int] = {}
    for ln in lines:
        if ln.strength == WEAK:
            seen[ln.label] = seen.get(ln.label, 0) + 1
        elif ln.strength == LOWER:
            lower[ln.label] = lower.get(ln.label, 0) + 1
    # A short label without a role may recur ("Audience member"); one with a role
    # ("Macron, président") needs its name as a strong label elsewhere.
    weak = {
        label for label, n in seen.items()
        if (n >= 2 and "," not in label) or label.partition(",")[0].strip() in names
    }
    # A lower-case name is trusted where it recurs, or where most lines carry a strong label
    # (a LinTO Studio export: every line is "<speaker> : <segment>").
    labelled = sum(1 for ln in lines if ln.strength == STRONG) * 2 >= len(lines)
    weak |= {label for label, n in lower.items() if n >= 2 or labelled}
    return strong | weak
