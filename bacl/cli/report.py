"""Tables, figures and the claims report of a results directory: `bacl-report results/<ablation>`
(or `python analysis/report.py results/<ablation>`).

Reads every result.json, metrics.jsonl, config.yaml and attention_example.json under the
directory (a local or SLURM sweep, finished or partial) and writes next to the runs:
summary.{md,csv}, runs.{csv,parquet}, figures/*.{png,pdf}, report/report.md and
report/tables/*.{md,tex}. Exit codes: 0 written, 1 no result.json found, 2 bad input.
  --help   this text, with the ablations and methods a directory may hold
"""
from __future__ import annotations

import sys

from bacl.cli.args import HELP
from bacl.cli.help import choices


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in HELP for a in argv):
        print(__doc__.strip())
        print("\nGroups a results directory may hold:")
        print("\n".join(f"  {group}=  {', '.join(choices(group))}" for group in ("ablation", "method", "dataset")))
        return 0
    from analysis.report import main as report  # matplotlib and pandas: only when a report is drawn
    return report(argv)


if __name__ == "__main__":
    sys.exit(main())
