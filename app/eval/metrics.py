"""What the evaluation measures, as pure functions of text: ROUGE with a Unicode word tokenizer, and how
much of a summary its transcript supports (figures, names, new wording, length).

No files and no network here: app/eval/scores.py reads the folders, app/eval/runs.py talks to a gateway.
"""
from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from typing import Any, Iterable

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")


class WordTokenizer:
    """Lower-cased runs of Unicode word characters, no stemming: "Démocratie, 2022 !" → ["démocratie", "2022"].

    rouge-score's default tokenizer keeps only [a-z0-9], so "démocratie" would count as "d" + "mocratie".
    """

    WORD = re.compile(r"\w+")

    def tokenize(self, text: str) -> list[str]:
        """The words of `text`, lower-cased."""
        # NFC first: in a decomposed "é" (e + combining accent) the accent is not \w and would cut the word.
        return self.WORD.findall(unicodedata.normalize("NFC", text).lower())


TOKENIZER = WordTokenizer()


def rouge_scorer() -> Any:
    """rouge-score's scorer for ROUGE-1, ROUGE-2 and ROUGE-L with the Unicode tokenizer."""
    from rouge_score import rouge_scorer as rouge  # imported when used: importing this module stays cheap

    return rouge.RougeScorer(list(ROUGE_METRICS), use_stemmer=False, tokenizer=TOKENIZER)


def best_rouge(scorer: Any, prediction: str, references: Iterable[str]) -> dict[str, float]:
    """ROUGE F1 × 100 against the best reference, per metric (each metric may pick a different reference)."""
    best = dict.fromkeys(ROUGE_METRICS, 0.0)
    for reference in references:
        for metric, score in scorer.score(reference, prediction).items():
            best[metric] = max(best[metric], 100 * score.fmeasure)
    return best


# --- figures ------------------------------------------------------------------------------------

# A grouped number is 1–3 digits then groups of exactly 3 digits, each after the same separator
# ("3 300 000", "3.300.000", "1,500"), with an optional decimal part ("3 300,5"); any other number is
# digits with an optional decimal part ("12,5", "12.5", "2022"). Spaces include the no-break and thin
# spaces French typography puts between groups. A number glued to a letter ("COP21") is a name, not a figure.
NUMBER = re.compile(
    r"(?<!\w)(?:"
    r"(?P<head>\d{1,3})(?P<sep>[ \u00a0\u202f\u2009.,])(?P<groups>\d{3}(?:(?P=sep)\d{3})*)(?:[.,](?P<tail>\d+))?"
    r"|(?P<whole>\d+)(?:[.,](?P<fraction>\d+))?"
    r")(?!\d)")
# "1. " or "2) " starting a line numbers a list: layout, not a claim to check.
LIST_MARKER = re.compile(r"^(\s*)\d+[.)](?=\s)", re.MULTILINE)


def _number(whole: str, fraction: str | None) -> Decimal:
    # normalize(): "12.50" and "12.5" are one figure, and so are "02" and "2".
    return Decimal(f"{whole}.{fraction}" if fraction else whole).normalize()


def _readings(match: re.Match) -> frozenset[Decimal]:
    """The values a written number may mean."""
    if not match["sep"]:
        return frozenset({_number(match["whole"], match["fraction"])})
    groups = match["groups"].replace(match["sep"], "")
    readings = {_number(match["head"] + groups, match["tail"])}
    # One group after a point or a comma ("3.300", "1,500") is thousands in one language and a
    # decimal part in another: both readings stand, and either may match the transcript.
    if match["sep"] in ".," and len(match["groups"]) == 3 and not match["tail"]:
        readings.add(_number(match["head"], match["groups"]))
    return frozenset(readings)


def figures(text: str) -> set[frozenset[Decimal]]:
    """The distinct numbers written in `text`, each as the set of values it may mean."""
    text = LIST_MARKER.sub(r"\1", unicodedata.normalize("NFC", text))
    return {_readings(match) for match in NUMBER.finditer(text)}


def figure_support(prediction: str, transcript: str) -> tuple[float | None, int]:
    """(share × 100 of the prediction's distinct numbers that the transcript also has, how many numbers);
    the share is None when the prediction has no number."""
    said = set().union(*figures(transcript))
    claimed = figures(prediction)
    return _share(sum(bool(readings & said) for readings in claimed), len(claimed)), len(claimed)


# --- names --------------------------------------------------------------------------------------

LETTERS = re.compile(r"[^\W\d_]+")
# What may stand between a sentence's end and its first word: spaces, markdown, quotes, dashes, bullets.
OPENERS = " \t*_#>-–—•\"«“‘'(["
SENTENCE_END = tuple(".!?:…")
# Abbreviations ending in "." that come before a name, not at the end of a sentence ("M. Chirac").
TITLES = {"m", "mm", "mme", "mmes", "mlle", "me", "dr", "pr", "mr", "mrs", "ms", "st"}
# Capitalised before a name, but a form of address, not a name.
ADDRESSES = TITLES | {"monsieur", "madame", "mademoiselle", "messieurs", "mesdames"}
LAST_WORD = re.compile(r"([^\W\d_]+)\.$")


def _starts_sentence(before: str) -> bool:
    """Whether a word with `before` to its left on its line begins a sentence (or a list item)."""
    before = before.rstrip(OPENERS)
    if not before:
        return True
    if not before.endswith(SENTENCE_END):
        return False
    title = LAST_WORD.search(before)
    return not (title and (title[1].lower() in TITLES or (len(title[1]) == 1 and title[1].isupper())))


def names(text: str) -> set[str]:
    """The distinct capitalised words (lower-cased) of `text` that do not begin a sentence: mostly proper names.

    A sentence's first word is left out because it is capitalised whatever it is ("Dans", "Il"); a
    name there is missed, which costs less than counting every "Le" as a name.
    """
    found = set()
    for line in unicodedata.normalize("NFC", text).splitlines():
        for match in LETTERS.finditer(line):
            word = match.group()
            if (len(word) > 1 and word[0].isupper() and word.lower() not in ADDRESSES
                    and not _starts_sentence(line[:match.start()])):
                found.add(word.lower())
    return found


def unaccented(word: str) -> str:
    """`word` without its accents: "état" → "etat"."""
    return "".join(char for char in unicodedata.normalize("NFD", word) if not unicodedata.combining(char))


def name_support(prediction: str, transcript: str) -> tuple[float | None, int]:
    """(share × 100 of the prediction's names that are words of the transcript, how many names); None
    when there is none. Matched without case or accents: transcripts often write speakers in capitals
    ("M. DURAND") and capitals without their accents ("l'Etat" for "l'État")."""
    said = {unaccented(word) for word in TOKENIZER.tokenize(transcript)}
    claimed = {unaccented(name) for name in names(prediction)}
    return _share(len(claimed & said), len(claimed)), len(claimed)


# --- wording ------------------------------------------------------------------------------------

def trigrams(words: list[str]) -> set[tuple[str, str, str]]:
    """The distinct word trigrams of a word list."""
    return set(zip(words, words[1:], words[2:]))


def novel_trigrams(prediction: str, transcript: str) -> float | None:
    """Share × 100 of the prediction's distinct word trigrams that never occur in the transcript (how
    much the summary rewords rather than copies); None for a prediction under 3 words."""
    written = trigrams(TOKENIZER.tokenize(prediction))
    return _share(len(written - trigrams(TOKENIZER.tokenize(transcript))), len(written))


def compression(prediction: str, transcript: str) -> float | None:
    """Prediction words ÷ transcript words; None for an empty transcript."""
    total = len(TOKENIZER.tokenize(transcript))
    return len(TOKENIZER.tokenize(prediction)) / total if total else None


def support(prediction: str, transcript: str) -> dict[str, Any]:
    """Every transcript-based figure for one prediction."""
    figure_share, figure_count = figure_support(prediction, transcript)
    name_share, name_count = name_support(prediction, transcript)
    return {"figure_support": figure_share, "figures": figure_count, "name_support": name_share,
            "names": name_count, "compression": compression(prediction, transcript),
            "novel_trigrams": novel_trigrams(prediction, transcript)}


def _share(part: int, whole: int) -> float | None:
    return 100 * part / whole if whole else None
