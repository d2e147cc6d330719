"""The benchmark runner's smoke mode measures every case and judges each figure by its own target.

Timings are never asserted here (they live in scripts/bench.py and BENCHMARKS.md): whether a
ratio meets its target on this machine is not checked, only that every case measured a number,
that the table shows what was measured, and that each pass/FAIL follows from that number and
the target written in the same row. P4 is a count and a check of the prompts, not a time: the
fake engine and the seed's settings give the same calls on every machine, so it must pass.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CASES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "H1", "H2", "V1")
COMPARE = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__}


def meets(figure: float, condition: str) -> bool:
    """Whether the figure meets one condition of a target cell, e.g. "<= 1.15"."""
    match = re.fullmatch(r"(<=|>=|<|>)\s*([\d.]+)", condition.strip())
    assert match, f"a target must start with a comparison: {condition!r}"
    return COMPARE[match.group(1)](float(figure), float(match.group(2)))


def test_meets_reads_the_comparison_of_a_target():
    assert meets(1.15, "<= 1.15") and not meets(1.151, "<= 1.15")
    assert meets(0.7, ">= 0.7") and not meets(0.69, ">=0.7") and meets(43, "<= 50")


def test_smoke_mode_measures_every_case_and_judges_it_by_its_target(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--smoke", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in done.stdout.splitlines() if line.startswith(("| P", "| H", "| V"))]
    assert [cells[0] for cells in table] == list(CASES), done.stdout
    rows = {row["case"]: row for row in json.loads(out.read_text(encoding="utf-8"))["rows"]}
    assert list(rows) == list(CASES)
    for case, _what, shown, target, verdict, _detail in table:
        row = rows[case]
        assert row["error"] is None and verdict in ("pass", "FAIL"), (case, row)
        figure = row["figure"]
        assert isinstance(figure, (int, float)) and math.isfinite(figure) and figure >= 0, (case, figure)
        assert float(shown) == pytest.approx(figure, abs=5e-4), (case, shown, figure)   # the measured number
        assert target == row["target"] and (verdict == "pass") == row["ok"], (case, verdict, row)
        first, *more = target.split(",")
        if more:        # "<= 50, every turn sent", ">= 0.7, p99 < 50 ms": the figure's part must hold to pass
            assert meets(figure, first) or not row["ok"], (case, figure, target, verdict)
        else:
            assert meets(figure, first) == row["ok"], (case, figure, target, verdict)
    assert rows["P4"]["ok"] and "every turn sent once, in order, with its speaker" in rows["P4"]["detail"], rows["P4"]
