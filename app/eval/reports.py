"""Showing scores: a text table for the terminal, the same table in Markdown, and a bar chart of ROUGE
beside the published systems (only where matplotlib is installed: it is not a dependency)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from app.eval.metrics import ROUGE_METRICS


def _checks(value: Any) -> str:
    # The job's checks are whatever the gateway reports: shown compact and short, complete in the JSON.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 40 else text[:39] + "…"


# (key, header, how a value is written): a table shows the columns some row has.
COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("count", "files", str),
    ("state", "state", str),
    ("rouge1", "ROUGE-1", "{:.2f}".format),
    ("rouge2", "ROUGE-2", "{:.2f}".format),
    ("rougeL", "ROUGE-L", "{:.2f}".format),
    ("figure_support", "figures ok %", "{:.0f}".format),
    ("name_support", "names ok %", "{:.0f}".format),
    ("compression", "compression", "{:.3f}".format),
    ("novel_trigrams", "new 3-grams %", "{:.0f}".format),
    ("calls", "calls", "{:.0f}".format),
    ("tokens", "tokens", "{:.0f}".format),
    ("seconds", "seconds", "{:.1f}".format),
    ("checks", "checks", _checks),
]
NAME_WIDTH = 48      # FREDSum's names run to 100 characters: the start tells them apart


def cells(rows: list[dict[str, Any]], first: str, name_width: int | None = None) -> list[list[str]]:
    """A header line and one line of cells per row; the first column is each row's "name" (cut to name_width)."""
    columns = [column for column in COLUMNS if any(column[0] in row for row in rows)]
    lines = [[first, *(header for _, header, _ in columns)]]
    for row in rows:
        name = str(row.get("name", ""))
        name = name if name_width is None or len(name) <= name_width else name[:name_width - 1] + "…"
        lines.append([name, *("" if key not in row else "–" if row[key] is None else write(row[key])
                              for key, _, write in columns)])
    return lines


def text_table(rows: list[dict[str, Any]], first: str = "file") -> str:
    """Aligned columns: names to the left, figures to the right."""
    lines = cells(rows, first, NAME_WIDTH)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
                     for line in lines)


def markdown_table(rows: list[dict[str, Any]], first: str = "file") -> str:
    """The same table in Markdown, with whole names (a page wraps them)."""
    lines = cells(rows, first)
    header, body = lines[0], lines[1:]
    rule = ["---", *("---:" for _ in header[1:])]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                     for line in (header, rule, *body))


def file_rows(score: dict[str, Any]) -> list[dict[str, Any]]:
    """A score's files, then its means as a last row."""
    means = {key: value for key, value in score.items() if key not in ("files", "skipped", "count")}
    return [*score["files"], {"name": f"mean over {score['count']} files", **means}]


def write_chart(path: Path, bars: dict[str, dict[str, Any]], title: str) -> tuple[bool, str]:
    """A PNG of ROUGE-1/2/L, one bar per system in each group: (written, what happened in one sentence)."""
    try:
        import matplotlib
    except ImportError:
        return False, "matplotlib is not installed: no chart (pip install matplotlib to get one)"
    matplotlib.use("Agg")       # no display needed
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(bars))
    for i, (label, score) in enumerate(bars.items()):
        values = [score.get(metric) or 0.0 for metric in ROUGE_METRICS]
        drawn = axes.bar([g + i * width for g in range(len(ROUGE_METRICS))], values, width, label=label)
        axes.bar_label(drawn, fmt="%.1f", fontsize=7)
    axes.set_xticks([g + width * (len(bars) - 1) / 2 for g in range(len(ROUGE_METRICS))],
                    ["ROUGE-1", "ROUGE-2", "ROUGE-L"])
    axes.set_ylabel("F1 × 100 (best reference)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return True, f"chart written to {path}"


def markdown_report(title: str, intro: str, run_rows: list[dict[str, Any]], system_rows: list[dict[str, Any]],
                    chart: str | None) -> str:
    """The whole report: the run's table, the comparison with the published systems, and the chart if any."""
    parts = [f"# {title}", intro, markdown_table(run_rows)]
    if system_rows:
        parts += ["## Beside the published systems", markdown_table(system_rows, first="system")]
    if chart:
        parts.append(f"![ROUGE-1, ROUGE-2 and ROUGE-L of each system]({chart})")
    return "\n\n".join(parts) + "\n"
