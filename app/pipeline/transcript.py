"""Parsing transcripts (plain text, SRT, WebVTT, JSON segments) into speaker turns.

Plain text is one `Speaker : text` (or `Speaker: text`) turn per line; a line without a
speaker label continues the previous turn. Deciding what is a label is the hard part:
speech contains colons too ("Les analyses sont simples et partagées : il faut…"); that rule
is app/pipeline/speakers.py's.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass

from app.pipeline.speakers import STRONG, Line, accepted_labels, split_label


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


def _turns_from_lines(lines: list[Line], merge_same_speaker: bool) -> list[Turn]:
    """Group lines (or subtitle cues) into turns; unlabelled lines continue the current turn."""
    accepted = accepted_labels(lines)
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
    lines: list[Line] = []
    for cue in _cue_texts(text):
        for line in cue:
            voice = _VOICE.search(line)
            if voice:
                # A voice tag names the speaker explicitly: trust it whatever its shape.
                speech = _TAG.sub("", line[voice.end():]).strip()
                lines.append(Line(voice.group(1).strip(), STRONG, speech, speech))
            else:
                lines.append(split_label(_TAG.sub("", line) if "<" in line else line))
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
        lines = [split_label(line) for line in text.splitlines() if line.strip()]
        turns = _turns_from_lines(lines, merge_same_speaker=False)
    if not any(ch.isalpha() for turn in turns for ch in turn.text[:1000]):
        raise TranscriptError("The transcript contains no words.")
    return turns
