"""Scoring a folder of summaries: `DIR/NAME.txt` against `references/<k>/NAME.txt` and, if given,
`transcripts/NAME.txt`; one row per file, and the means over the files.

A score is a plain dict, ready for JSON: {"count", "rouge1", "rouge2", "rougeL", …, "files": [{"name", …}]}.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

from app.eval import metrics

# The figures averaged over the files, in the order tables show them. ROUGE and the shares are × 100.
MEAN_KEYS = (*metrics.ROUGE_METRICS, "figure_support", "name_support", "compression", "novel_trigrams")


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a byte-order mark, as Windows editors write, is dropped)."""
    return path.read_text(encoding="utf-8-sig")


def reference_sets(references: Path) -> dict[str, Path]:
    """The reference sets by name: each sub-folder is one (FREDSum's 1, 2, 3); a folder holding only
    .txt files is one set on its own."""
    sets = {child.name: child for child in sorted(references.iterdir()) if child.is_dir()}
    return sets or {references.name: references}


def summaries(folder: Path, names: Iterable[str] | None = None) -> dict[str, Path]:
    """`NAME.txt` files of a folder by NAME, sorted; only `names` when given."""
    found = {path.stem: path for path in sorted(folder.glob("*.txt"))}
    return found if names is None else {name: found[name] for name in names if name in found}


def score_file(scorer: Any, prediction: str, references: dict[str, str], transcript: str | None) -> dict[str, Any]:
    """One file's row (without its name): the best ROUGE over its references, and its support by the transcript."""
    row: dict[str, Any] = {"references": sorted(references),
                           **metrics.best_rouge(scorer, prediction, references.values()),
                           "words": len(metrics.TOKENIZER.tokenize(prediction))}
    if transcript is not None:
        row.update(metrics.support(prediction, transcript))
    return row


def score_folder(predictions: Path, references: Path, transcripts: Path | None = None,
                 names: Iterable[str] | None = None, scorer: Any = None) -> dict[str, Any]:
    """Score every `NAME.txt` of `predictions` (only `names` when given) that has a reference.

    A file without any reference cannot be scored: it is listed under "skipped" and left out of the means.
    """
    scorer = scorer or metrics.rouge_scorer()
    sets = reference_sets(references)
    rows, skipped = [], []
    for name, path in summaries(predictions, names).items():
        found = {k: read_text(folder / f"{name}.txt") for k, folder in sets.items()
                 if (folder / f"{name}.txt").is_file()}
        if not found:
            skipped.append(name)
            print(f"note: no reference for {name}: not scored", file=sys.stderr)
            continue
        transcript_path = transcripts / f"{name}.txt" if transcripts else None
        transcript = read_text(transcript_path) if transcript_path and transcript_path.is_file() else None
        rows.append({"name": name, **score_file(scorer, read_text(path), found, transcript)})
    return {**summarise(rows, MEAN_KEYS), "files": rows, **({"skipped": skipped} if skipped else {})}


def summarise(rows: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """{"count": rows with a ROUGE score, key: mean over the rows that have a value for it}. A key no
    row has is left out (no transcripts: no support figures); one that no row could measure is None."""
    means: dict[str, Any] = {"count": sum(row.get("rouge1") is not None for row in rows)}
    for key in keys:
        present = [row[key] for row in rows if key in row]
        if present:
            values = [value for value in present if value is not None]
            means[key] = sum(values) / len(values) if values else None
    return means
