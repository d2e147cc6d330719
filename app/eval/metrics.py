"""What the evaluation measures, as pure functions of text: ROUGE with a Unicode word tokenizer, and how
much of a summary its transcript supports (figures, names, new wording, length).

No files and no network here: app/eval/scores.py reads the folders, app/eval/runs.py talks to a gateway.
"""
from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from typing import Any, Iterable

from app.pipeline import facts

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


# --- figures and names (read by app/pipeline/facts.py, which the answer checks use too) -----------

def figures(text: str) -> set[frozenset[Decimal]]:
    """The distinct numbers written in digits in `text`, each as the set of values it may mean."""
    return {values for _, values in facts.figures(text)}


def figure_support(prediction: str, transcript: str) -> tuple[float | None, int]:
    """(share × 100 of the prediction's distinct numbers that the transcript also says, in digits or
    in words, how many numbers); the share is None when the prediction has no number."""
    said = facts.Source(transcript).numbers
    claimed = figures(prediction)
    return _share(sum(not values.isdisjoint(said) for values in claimed), len(claimed)), len(claimed)


def names(text: str) -> set[str]:
    """The distinct words (lower-cased) of the names of `text`: capitalised words that do not begin a
    sentence, nor are titles ("M.", "Mme", "Monsieur").

    A sentence's first word is left out because it is capitalised whatever it is ("Dans", "Il"); a
    name there is missed, which costs less than counting every "Le" as a name.
    """
    return {word.lower() for name in facts.names(text) for word in facts.LETTERS.findall(name)}


unaccented = facts.unaccented


def name_support(prediction: str, transcript: str) -> tuple[float | None, int]:
    """(share × 100 of the prediction's name words that are words of the transcript, how many words);
    None when there is none. Matched without case or accents: transcripts often write speakers in
    capitals ("M. DURAND") and capitals without their accents ("l'Etat" for "l'État")."""
    said = facts.Source(transcript).words
    claimed = facts.folded_words(" ".join(names(prediction)))
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
