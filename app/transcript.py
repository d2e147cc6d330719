"""Parsing transcripts (plain text, SRT, WebVTT, JSON segments) into speaker turns."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    """One speaker turn. `speaker` is "" when the transcript names nobody."""

    speaker: str
    text: str
