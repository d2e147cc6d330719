"""The benchmark runner's smoke mode runs end to end and prints its rows.

Timings are never asserted here (they live in scripts/bench.py and BENCHMARKS.md): this only
checks that `python3 scripts/bench.py --smoke` starts what it needs, runs every case and
prints the table.
"""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CASES = ("P1", "P2", "P3", "P4", "P5", "P6", "H1", "H2")


def test_smoke_mode_prints_every_case():
    done = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| P", "| H"))]
    assert [row.split("|")[1].strip() for row in rows] == list(CASES), done.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[4] in ("pass", "FAIL"), row     # a figure was measured: no "ERROR"
