"""Parsing transcripts (plain text, SRT, WebVTT, JSON segments) into speaker turns.

Plain text is one `Speaker : text` (or `Speaker: text`) turn per line; a line without a
speaker label continues the previous turn. Deciding what is a label is the hard part:
speech contains colons too ("Les analyses sont simples et partagées : il faut…"). See
`_label_strength` for the rule and tests/test_transcript.py for the data it was tuned on.
"""
from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    """One speaker turn. `speaker` is "" when the transcript names nobody."""

    speaker: str
    text: str


class TranscriptError(ValueError):
    """The input cannot be read as a transcript; the message is meant for the user."""


# --- decoding ---------------------------------------------------------------------------

_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (a .docx or .odt document is one)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"RIFF", "an audio or video file"),
    (b"ID3", "an MP3 file"),
    (b"OggS", "an Ogg audio file"),
)
# C0 control characters other than tab, newlines and form feed never occur in real text.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def decode_bytes(data: bytes) -> str:
    """Decode uploaded bytes as UTF-8 (with or without BOM), UTF-16 with BOM, or Windows-1252."""
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise TranscriptError(f"The file looks like {what}, not a text transcript.")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise TranscriptError("The file starts like UTF-16 text but cannot be decoded.") from None
    if b"\x00" in data:
        raise TranscriptError("The file contains binary data (NUL bytes); send UTF-8 text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Mostly UTF-8 with a few broken bytes (a file cut mid-character, two files pasted
    # together): keep the UTF-8 reading rather than turn every accent into mojibake.
    lenient = data.decode("utf-8-sig", errors="replace")
    broken = lenient.count("\ufffd")
    non_ascii = len(lenient) - len(lenient.encode("ascii", "ignore"))
    if non_ascii - broken > 5 * broken:
        return lenient
    try:
        # Word and old Windows tools still save French text this way (see aw07b).
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise TranscriptError(
            "The file is neither UTF-8 nor Windows-1252 text; save it as UTF-8 and retry."
        ) from None


def _clean_text(text: str) -> str:
    """Normalise decoded text and reject what is clearly not a transcript."""
    if "\ufeff" in text:  # a BOM, or several when files were concatenated
        text = text.replace("\ufeff", "")
    if not text.strip():
        raise TranscriptError("The transcript is empty.")
    sample = text[:100_000]
    if len(_CONTROL.findall(sample)) > max(2, len(sample) // 1000):
        raise TranscriptError("The file contains binary data, not text.")
    return unicodedata.normalize("NFC", text)


# --- speaker labels ----------------------------------------------------------------------

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

STRONG, WEAK, LOWER = 2, 1, 3      # LOWER: a weak label in lower case (see _accepted_labels)


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
def _label_strength(label: str) -> int:
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
        # lines are mostly labelled (see _accepted_labels); speech rarely starts "word : ".
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
class _Line:
    label: str | None      # candidate label, None when the line has none
    strength: int
    text: str              # the text after the label
    raw: str               # the whole line, used when the label is not trusted


def _split_label(line: str) -> _Line:
    """Split one line into a candidate label and its text."""
    if line[:1] in "[(0123456789":
        line = _LEADING_TS.sub("", line, count=1)
    line = line.strip()
    # Fast path: most continuation lines have no colon near their start.
    if ":" not in line[:170]:
        return _Line(None, 0, line, line)
    header = _HEADER.match(line) if len(line) < 100 else None
    if header:
        label = header.group(1).strip().rstrip(",")
        strength = _label_strength(label)
        return _Line(label, strength, "", line) if strength else _Line(None, 0, line, line)
    match = _LABELLED.match(line)
    if not match:
        return _Line(None, 0, line, line)
    label = match.group(1).strip().rstrip(",").strip()
    strength = _label_strength(label)
    if not strength:
        return _Line(None, 0, line, line)
    return _Line(label, strength, line[match.end():], line)


def _accepted_labels(lines: list[_Line]) -> set[str]:
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


# --- building turns ----------------------------------------------------------------------

# QMSum / AMI / ICSI corpus markers; a generic "{word}" pattern would eat code in tech talks.
_MARKUP = re.compile(
    r"\{(?:disfmarker|vocalsound|nonvocalsound|gap|pause|comment|laughter|laugh|noise|"
    r"inaudible|unintelligible|sil|silence|breath|cough)\}",
    re.IGNORECASE,
)
_SPACES = re.compile(r"[ \t\u00a0\u202f]{2,}")
# A turn left with no letter or digit ("{vocalsound} ." in QMSum) says nothing: drop it.
_WORDY = re.compile(r"[^\W_]")


def _tidy(text: str) -> str:
    """Remove corpus markers and the double spaces they leave behind."""
    if "{" in text:
        text = _MARKUP.sub(" ", text)
    if "  " in text or "\t" in text:
        text = _SPACES.sub(" ", text)
    return text.strip()


def _turns_from_lines(lines: list[_Line], merge_same_speaker: bool) -> list[Turn]:
    """Group lines (or subtitle cues) into turns; unlabelled lines continue the current turn."""
    accepted = _accepted_labels(lines)
    if not accepted and not merge_same_speaker:
        # No speaker names at all (aw02): one unnamed turn per line.
        return [Turn("", t) for t in (_tidy(ln.raw) for ln in lines) if _WORDY.search(t)]
    speakers: list[str] = []
    parts: list[list[str]] = []
    for ln in lines:
        if ln.label is not None and ln.label in accepted:
            if merge_same_speaker and speakers and speakers[-1] == ln.label:
                parts[-1].append(ln.text)
            else:
                speakers.append(ln.label)
                parts.append([ln.text])
        else:
            if not parts:
                speakers.append("")
                parts.append([])
            parts[-1].append(ln.raw)
    turns = (Turn(s, _tidy(" ".join(p for p in ps if p))) for s, ps in zip(speakers, parts))
    return [t for t in turns if _WORDY.search(t.text)]


# --- subtitles -----------------------------------------------------------------------------

_CUE_TIME = r"(?:\d{1,2}:)?\d{2}:\d{2}[.,]\d{1,3}"
_CUE_TIMING = re.compile(rf"^\s*{_CUE_TIME}\s*-->\s*{_CUE_TIME}")
_VOICE = re.compile(r"<v(?:\.[^ >]*)?\s+([^>]*)>")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>|<\d{1,2}:\d{2}[^>]*>")


def _cue_texts(text: str) -> list[list[str]]:
    """The text lines of each SRT/WebVTT cue, in order (numbers, timings, NOTE blocks dropped)."""
    cues: list[list[str]] = []
    current: list[str] | None = None
    skipping = False
    for line in text.splitlines():
        if not line.strip():
            current, skipping = None, False
            continue
        if skipping:
            continue
        if _CUE_TIMING.match(line):
            current = []
            cues.append(current)
        elif current is not None:
            current.append(line.strip())
        elif line.startswith(("NOTE", "STYLE", "REGION")):
            skipping = True
        # anything else outside a cue: the WEBVTT header, a cue number or identifier
    return cues


def _parse_subtitles(text: str) -> list[Turn]:
    """SRT or WebVTT: cues become lines; `<v Name>` tags or `Name:` prefixes set the speaker."""
    lines: list[_Line] = []
    for cue in _cue_texts(text):
        for line in cue:
            voice = _VOICE.search(line)
            if voice:
                # A voice tag names the speaker explicitly: trust it whatever its shape.
                speech = _TAG.sub("", line[voice.end():]).strip()
                lines.append(_Line(voice.group(1).strip(), STRONG, speech, speech))
            else:
                lines.append(_split_label(_TAG.sub("", line) if "<" in line else line))
    return _turns_from_lines([ln for ln in lines if ln.raw], merge_same_speaker=True)


# --- JSON ----------------------------------------------------------------------------------

def _parse_json(text: str) -> list[Turn]:
    """`[{"speaker", "text"}, …]` or `{"segments": [...]}`; consecutive segments of one speaker merge."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise TranscriptError(f"The JSON transcript is not valid JSON: {exc}.") from None
    except RecursionError:
        raise TranscriptError("The JSON transcript is nested too deeply to be a list of segments.") from None
    segments = body.get("segments") if isinstance(body, dict) else body
    if not isinstance(segments, list):
        raise TranscriptError('A JSON transcript must be a list of segments or {"segments": [...]}.')
    turns: list[Turn] = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
            raise TranscriptError(f'JSON segment {i} has no "text" string.')
        speaker = seg.get("speaker")
        speaker = "" if speaker is None else str(speaker).strip()
        words = _tidy(" ".join(seg["text"].split()))
        if not words:
            continue
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(speaker, f"{turns[-1].text} {words}")
        else:
            turns.append(Turn(speaker, words))
    return turns


# --- entry point ---------------------------------------------------------------------------

def _sniff(text: str) -> str:
    """Guess the format of undeclared input from its first bytes."""
    head = text.lstrip()[:2000]
    if head.startswith("WEBVTT"):
        return "vtt"
    if head[:1] in "[{":
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
        except RecursionError:
            return "json"          # JSON, too deep to be segments: _parse_json says so
    first = [ln for ln in head.splitlines()[:4] if ln.strip()]
    if len(first) >= 2 and first[0].strip().isdigit() and _CUE_TIMING.match(first[1]):
        return "srt"
    if first and _CUE_TIMING.match(first[0]):
        return "srt"
    return "text"


def parse_transcript(data: bytes | str, filename: str | None = None) -> list[Turn]:
    """Parse a transcript (plain text, SRT, WebVTT or JSON segments) into speaker turns."""
    text = decode_bytes(data) if isinstance(data, (bytes, bytearray)) else data
    text = _clean_text(text)
    ext = os.path.splitext(filename or "")[1].lower().lstrip(".")
    fmt = {"srt": "srt", "vtt": "vtt", "webvtt": "vtt", "json": "json"}.get(ext) or _sniff(text)
    if fmt == "json":
        turns = _parse_json(text)
    elif fmt in ("srt", "vtt"):
        turns = _parse_subtitles(text)
    else:
        lines = [_split_label(line) for line in text.splitlines() if line.strip()]
        turns = _turns_from_lines(lines, merge_same_speaker=False)
    if not any(ch.isalpha() for turn in turns for ch in turn.text[:1000]):
        raise TranscriptError("The transcript contains no words.")
    return turns
