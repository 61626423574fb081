"""Regenerate the paper's tables and figures from a results directory:
`python analysis/report.py results/<ablation>`.

Writes, next to the runs: runs.parquet, runs.csv, summary.csv and summary.md (every grid
point, mean ± std over seeds); `figures/` (PNG + PDF, one paper column wide); `report/`
with every table in Markdown and LaTeX (`report/tables/`) and `report/report.md`, which
shows the tables, links the figures and states for each of the paper's claims whether
our runs support it. Incomplete sweeps are fine: missing and failed runs are counted per
grid point and claims nobody ran are marked "not run". docs/analysis.md describes it all.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.aggregate import load_runs, write_tables
from analysis.claims import Claim, evaluate_claims, metric_notes
from analysis.completeness import expected_runs, with_expected
from analysis.display import primary_metric, where
from analysis.heatmap import first_cla_run
from analysis.report_tables import (
    axis_table,
    completeness_table,
    component_table,
    main_table,
    paper_table,
    slope_table,
)
from analysis.selection import at_reference, axis_slices, by_dataset, numeric_axes
from analysis.slopes import ERRORS, PRIMARY, error_label, rho_fits, rho_points
from analysis.tables import Table
from bacl.attention_example import ATTENTION_EXAMPLE, read_attention_example
from bacl.results import write_text


def slug(metric: str) -> str:
    return metric.lower().replace("@", "")


class Report:
    """Collects tables and figures in order and writes report.md linking them."""

    def __init__(self, root: Path):
        self.root, self.dir = root, root / "report"
        self.figures_dir, self.tables_dir = root / "figures", self.dir / "tables"
        self.lines: list[str] = []
        self.written: list[Path] = []

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def table(self, table: Table | None, latex: bool = True) -> None:
        if table is None:
            return
        if latex:
            self.written += table.write(self.tables_dir)
            self.text(f"*{table.caption}* ([LaTeX](tables/{table.name}.tex))")
        else:
            self.text(f"*{table.caption}*")
        self.text(table.markdown())

    def figure(self, paths: list[Path], caption: str) -> None:
        self.written += paths
        png, pdf = (f"../{p.relative_to(self.root).as_posix()}" for p in paths)
        self.text(f"![{caption}]({png})", f"*{caption}* ([PDF]({pdf}))")

    def write(self) -> Path:
        path = self.dir / "report.md"
        write_text(path, "\n".join(self.lines))
        self.written.append(path)
        return path


def _claims_table(claims: list[Claim]) -> Table:
    columns = ["claim", "paper", "ours", "difference", "95% CI", "n", "MDE", "verdict"]
    return Table("claims", "The paper's claims against our runs: paired differences over seeds, their 95 % "
                 "interval, the number of pairs and the minimum detectable effect (judged as in docs/analysis.md).",
                 columns, [[c.claim, c.paper, c.ours, c.difference, c.ci, c.n, c.mde, c.verdict] for c in claims],
                 label_columns=len(columns))


def _cla_heatmap(report: Report, runs: pd.DataFrame) -> None:
    run_dir = first_cla_run(runs)
    if run_dir is None:
        report.text(f"CLA heat map: not drawn, no finished run of a method with CLA left {ATTENTION_EXAMPLE}.")
        return
    try:
        pair = read_attention_example(run_dir / ATTENTION_EXAMPLE)
    except (OSError, KeyError, TypeError, ValueError) as err:  # unreadable or not an attention example
        report.text(f"CLA heat map: not drawn, {run_dir.name}/{ATTENTION_EXAMPLE} could not be read: "
                    f"{type(err).__name__}: {err}")
        return
    report.figure(figures.cla_heatmap(pair, report.figures_dir, "cla_heatmap"),
                  f"CLA cross-attention of run {run_dir.name} (final model): A⁺ = test item {pair.anchor}'s own "
                  f"caption, A⁻ = the caption of item {pair.negative}, its most similar other item; "
                  + ("red: the attribute that truly differs (aN: token of attribute N, d: distractor)."
                     if pair.differing else "no ground truth of differing tokens on this dataset."))


def write_report(root: Path) -> list[Path]:
    """Every table, figure and report.md for `root`; returns the files written."""
    root = Path(root)
    expected = expected_runs(root)
    runs = with_expected(load_runs(root), expected)
    curves = figures.load_curves(root)
    report = Report(root)
    report.text(f"# Report: {root}")
    line, missing = completeness_table(runs, expected)
    report.text(line)
    report.table(missing, latex=False)
    sliced = {d: axis_slices(r) for d, r in by_dataset(runs)}
    points = {e: rho_points(runs, e) for e in ERRORS}
    fits = {e: rho_fits(points[e]) for e in ERRORS}
    claims_at = len(report.lines)
    main_runs = {d: at_reference(r) for d, r in by_dataset(runs)}
    several = len(main_runs) > 1

    report.text("## Main results")
    for dataset, main in main_runs.items():
        report.table(main_table(dataset, main))
    report.table(paper_table())
    report.text("## Component ablation")
    components = [t for t in (component_table(d, main) for d, main in main_runs.items()) if t is not None]
    for table in components:
        report.table(table)
    if not components:
        report.text("Not run: no dataset has clip and a component (bns_only, cla_only, bns_no_curriculum) "
                    "at their defaults (bacl/conf/ablation/components.yaml).")

    report.text("## Grid axes")
    for dataset, slices in sliced.items():
        suffix = f"_{dataset}" if several else ""
        for axis, subset in slices.items():
            report.table(axis_table(dataset, axis, subset))
            if axis in numeric_axes(subset):
                metric = primary_metric(dataset)
                report.figure(figures.metric_vs_axis(subset, axis, metric, report.figures_dir,
                                                     f"{slug(metric)}_vs_{axis.removeprefix('cfg.')}{suffix}"),
                              f"{metric} against {axis.removeprefix('cfg.')} ({where(dataset)}), mean ± std over seeds.")

    report.text("## Synthetic-ρ check")
    if all(f.empty for f in fits.values()):
        report.text("Not run: no finished ρ × n grid (bacl/conf/ablation/rho.yaml).")
    report.table(slope_table(fits))
    for error, table in fits.items():
        if not table.empty:
            report.figure(figures.rho_check(points[error], table, error, report.figures_dir,
                                            f"rho_check_{error}"),
                          f"Excess test error ({error_label(error)}) against n, log-log, per ρ; lines: fitted "
                          "e∞ + c·n^s, dashed/dotted: slopes −1 and −1/2.")

    report.text("## Training dynamics and per-method figures")
    report.figure(figures.schedule_curves(report.figures_dir), "α(η) of the curriculum shapes.")
    for dataset, main in main_runs.items():
        suffix = f"_{dataset}" if several else ""
        mine = curves[curves["run"].isin(set(main.get("path", pd.Series(dtype=str)).dropna()))]
        if mine.get("train/boundary_score", pd.Series(dtype=float)).notna().any():
            report.figure(figures.curve_by_method(mine, "train/boundary_score", "mean BS of sampled negatives",
                                                  "BNS: difficulty of sampled negatives", report.figures_dir,
                                                  f"boundary_score{suffix}"),
                          f"Mean boundary score of the sampled negatives against training progress ({where(dataset)}); "
                          "BNS should move from easy (low) to hard (near 0).")
        if mine.get("train/sibling_fraction", pd.Series(dtype=float)).notna().any():
            report.figure(figures.curve_by_method(mine, "train/sibling_fraction", "sibling share of negatives",
                                                  "BNS: true ambiguous negatives sampled",
                                                  report.figures_dir, f"sibling_fraction{suffix}"),
                          f"Share of sampled negatives that differ from their anchor in exactly one attribute, by "
                          f"epoch ({where(dataset)}; ground truth of the synthetic world). A curriculum from easy to "
                          "hard should raise it over training.")
        if mine.get("train/policy_bs_corr", pd.Series(dtype=float)).notna().any():
            report.figure(figures.curve_by_method(mine, "train/policy_bs_corr", "corr(policy effect, BS)",
                                                  "BNS policy against the boundary score", report.figures_dir,
                                                  f"policy_bs_corr{suffix}"),
                          f"Within-row correlation of the policy's effect on the selection logits with the boundary "
                          f"score, by epoch ({where(dataset)}): negative means it favours easy negatives, positive "
                          "hard ones. A policy that follows the curriculum changes sign with α.")
        if mine.get("eval/margin", pd.Series(dtype=float)).notna().any():
            report.figure(figures.curve_by_method(mine, "eval/margin", "alignment margin (test, cosine)",
                                                  "Margin over training", report.figures_dir, f"margin{suffix}"),
                          f"Alignment margin (best own caption − best other caption) against training progress "
                          f"({where(dataset)}).")
        metric = primary_metric(dataset)
        report.figure(figures.metric_by_method(main, metric, report.figures_dir, f"{slug(metric)}_by_method{suffix}"),
                      f"{metric} per method at its defaults ({where(dataset)}): every seed, mean ± 95 % t interval.")
        if "ambiguous_acc" in main and main["ambiguous_acc"].notna().any():
            report.figure(figures.metric_by_method(main, "ambiguous_acc", report.figures_dir,
                                                   f"ambiguous_acc_by_method{suffix}", chance=0.5),
                          f"Own caption scored above a sibling's (ambiguous negatives) per method ({where(dataset)}): every "
                          "seed, mean ± 95 % t interval; chance 50 %.")
        if "ael_text" in main and main["ael_text"].notna().any():
            chance = main.get("ael_text_chance", pd.Series(dtype=float)).dropna()
            report.figure(figures.metric_by_method(main, "ael_text", report.figures_dir, f"ael_by_method{suffix}",
                                                   chance=chance.iloc[0] if len(chance) else None),
                          f"Attention-error localisation per method ({where(dataset)}); the paper reports ≈ +11 points "
                          "for BACL over its base.")
    _cla_heatmap(report, runs)

    claims = _claims_table(evaluate_claims(runs, curves, fits[PRIMARY]))
    report.lines[claims_at:claims_at] = ["## Claims", "", metric_notes(), "", f"*{claims.caption}*", "",
                                         claims.markdown(), ""]
    report.write()
    return report.written


draw = write_report  # the name experiments/sweep.py calls at the end of a local sweep


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
    written = write_report(root)
    print(f"{(runs.status == 'ok').sum()} ok, {(runs.status != 'ok').sum()} not ok")
    print(f"tables: {root / 'summary.md'}, {root / 'runs.parquet'}, {root / 'report' / 'tables'}/ "
          f"({sum(p.suffix == '.tex' for p in written)} LaTeX + Markdown)")
    print(f"figures: {root / 'figures'}/ ({sum(p.suffix == '.png' for p in written)} PNG + PDF)")
    print(f"report: {root / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
