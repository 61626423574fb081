"""Aggregate a results directory: `python analysis/report.py results/schedule`.

Writes runs.parquet, runs.csv, summary.csv and summary.md (mean ± std over seeds of every
grid point) next to the runs, and figures under `<dir>/figures/` (PNG + PDF): the
curriculum α(η), boundary score and margin against training progress, final metrics per
method, and each numeric grid axis against R@1. Incomplete sweeps are fine: failed and
unfinished runs are listed in runs.csv with their status.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.aggregate import load_runs, varying_axes, write_tables


def axis_slices(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """For each numeric grid axis, the runs where every other numeric axis sits at its most common value."""
    numeric = [c for c in varying_axes(runs) if pd.api.types.is_numeric_dtype(runs[c]) and c != "cfg.method.name"]
    slices = {}
    for axis in numeric:
        keep = pd.Series(True, index=runs.index)
        for other in numeric:
            if other != axis:
                keep &= runs[other] == runs[other].mode().iloc[0]
        if runs.loc[keep, axis].nunique() > 1:
            slices[axis] = runs[keep]
    return slices


def draw(root: Path) -> list[Path]:
    runs, curves, out = load_runs(root), figures.load_curves(root), root / "figures"
    written = figures.schedule_curves(out)
    written += figures.curve_by_method(curves, "train/boundary_score", "mean BS of sampled negatives",
                                       "BNS: difficulty of sampled negatives", out, "boundary_score")
    written += figures.curve_by_method(curves, "eval/margin", "alignment margin (test)",
                                       "Margin over training", out, "margin")
    written += figures.metric_by_method(runs, "i2t_R@1", "image→text R@1 (%)", out, "i2t_r1_by_method")
    if "ael" in runs:
        chance = runs["ael_text_chance"].dropna().iloc[0] if "ael_text_chance" in runs else None
        written += figures.metric_by_method(runs, "ael_text", "attention-error localisation (caption token)",
                                            out, "ael_by_method", chance=chance)
    if "ambiguous_acc" in runs:
        written += figures.metric_by_method(runs, "ambiguous_acc", "own caption > sibling caption",
                                            out, "ambiguous_acc_by_method", chance=0.5)
    for axis, subset in axis_slices(runs).items():
        written += figures.metric_vs_axis(subset, axis, "i2t_R@1", out, f"r1_vs_{axis.removeprefix('cfg.')}")
    return written


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
    figs = draw(root)
    print(f"{(runs.status == 'ok').sum()} ok, {(runs.status != 'ok').sum()} not ok; tables in {root}, "
          f"{len(figs) // 2} figures in {root / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
