"""Aggregate a results directory: `python analysis/report.py results/schedule`.

Writes runs.parquet, runs.csv, summary.csv and summary.md (mean ± std over seeds of every
grid point) next to the runs and prints the summary. Incomplete sweeps are fine: failed
and unfinished runs are listed in runs.csv with their status.
"""
from __future__ import annotations

import sys
from pathlib import Path

from analysis.aggregate import load_runs, write_tables


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python analysis/report.py <results dir>", file=sys.stderr)
        return 2
    root = Path(argv[0])
    summary = write_tables(root)
    if summary.empty:
        print(f"no result.json under {root}", file=sys.stderr)
        return 1
    runs = load_runs(root)
    print(summary.to_markdown(index=False, floatfmt=".2f"))
    print(f"{(runs.status == 'ok').sum()} ok, {(runs.status != 'ok').sum()} not ok; tables in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
