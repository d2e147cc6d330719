"""The model's answers made into summary lines: fences, blank lines, echoed instructions and
stutters dropped (clean_output); consecutive lines of one speaker merged (consolidate)."""
from __future__ import annotations

import difflib
import re

_SPEAKER_LINE = re.compile(r"^([^:\n]{1,100}?)\s*:(?:\s+(.*))?$")   # "12:30" is no speaker
_FENCE = re.compile(r"^```[\w-]*\s*$")
_FUZZY_ECHO = 0.9       # a line this similar to a template line (difflib ratio) is an echo
_FUZZY_ECHO_MIN = 30    # ... if the template line is this long: short lines must match exactly


def clean_output(text: str, template: str = "") -> list[str]:
    """The model's answer as summary lines: no wrapping code fence, no blank lines, stripped,
    no line that repeats a line of the prompt template (small models echo their instructions,
    sometimes with a letter changed), and no line twice in a row (a model stuttering)."""
    lines = text.strip().splitlines()
    if lines and _FENCE.match(lines[0].strip()):
        lines = lines[1:]
    if lines and lines[-1].strip() == "```":
        lines = lines[:-1]
    instructions = [line.strip() for line in template.replace("{}", "").splitlines() if line.strip()]
    kept: list[str] = []
    for line in (line.strip() for line in lines):
        if line and not _echoes(line, instructions) and not (kept and kept[-1] == line):
            kept.append(line)
    return kept


def _echoes(line: str, instructions: list[str]) -> bool:
    """The line is one of the template's lines, word for word or nearly (a long line only)."""
    for instruction in instructions:
        if line == instruction:
            return True
        if len(instruction) >= _FUZZY_ECHO_MIN:
            matcher = difflib.SequenceMatcher(None, line, instruction, autojunk=False)
            # The two cheap upper bounds first: most lines differ at once in length or letters.
            if (matcher.real_quick_ratio() >= _FUZZY_ECHO and matcher.quick_ratio() >= _FUZZY_ECHO
                    and matcher.ratio() >= _FUZZY_ECHO):
                return True
    return False


def consolidate(lines: list[str]) -> list[str]:
    """Merge consecutive lines of the same speaker: "Alice : a" + "Alice : b" -> "Alice : a b"."""
    merged: list[str] = []
    last_speaker = None
    for line in lines:
        match = _SPEAKER_LINE.match(line)
        speaker = match.group(1).strip() if match else None
        if speaker and speaker == last_speaker:
            text = (match.group(2) or "").strip()
            if text:
                merged[-1] = f"{merged[-1]} {text}"
            continue
        merged.append(line)
        last_speaker = speaker
    return merged
