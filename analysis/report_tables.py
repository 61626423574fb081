"""The report's tables: main results, the paper's numbers, component ablation, one table per
grid axis, the ρ-check slopes and sweep completeness.

Rows come from the data (methods, datasets, axis values), columns from analysis/metrics.yaml,
paper numbers from analysis/paper_numbers.yaml: nothing here names a method or dataset.
"""
from __future__ import annotations

import math

import pandas as pd

from analysis.aggregate import varying_axes
from analysis.completeness import Expected
from analysis.display import (
    PAPER,
    axis_label,
    dataset_metrics,
    key_metrics,
    primary_metric,
    r1_metrics,
    scaled,
    where,
)
from analysis.selection import DATASET, METHOD
from analysis.slopes import error_label
from analysis.tables import Delta, Stat, Table, seed_stat

STATUSES = ("ok", "failed", "unfinished", "missing")
SEEDS_NOTE = ("mean ± std over seeds, in %; n = finished seeds (ok/expected when some are missing); "
              "best of our rows in bold")


def short(metric: str) -> str:
    return metric.replace("_", " ")


def value_text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def n_cell(group: pd.DataFrame) -> str:
    ok = int((group["status"] == "ok").sum())
    return str(ok) if ok == len(group) else f"{ok}/{len(group)}"


def _stats(group: pd.DataFrame, metrics: list[str]) -> list[Stat | None]:
    ok = group[group["status"] == "ok"]
    return [seed_stat(scaled(ok[m], m)) if m in ok else None for m in metrics]


def _present(runs: pd.DataFrame, metrics: list[str]) -> list[str]:
    return [m for m in metrics if m in runs and runs.loc[runs["status"] == "ok", m].notna().any()]


def _suffix(dataset: str) -> str:
    return f"_{dataset}" if dataset else ""


def main_table(dataset: str, runs: pd.DataFrame) -> Table:
    """Methods at their defaults on one dataset, with the paper's rows for it below a rule."""
    paper_rows = PAPER["main"]["numbers"].get(dataset, {})
    shown = set(_present(runs, dataset_metrics(dataset))) | {m for values in paper_rows.values() for m in values}
    metrics = [m for m in dataset_metrics(dataset) if m in shown]
    rows = [[method, n_cell(group), *_stats(group, metrics)] for method, group in runs.groupby(METHOD)]
    ours = len(rows)
    for name, values in paper_rows.items():
        counterpart = PAPER["methods"].get(name)
        rows.append([f"paper: {name} ({'= ' + counterpart if counterpart else 'no counterpart'})", "",
                     *(float(values[m]) if m in values else None for m in metrics)])
    source = f" Paper rows: {PAPER['main']['source']}; {PAPER['main']['note']}." if paper_rows else ""
    table = Table(f"main{_suffix(dataset)}", f"Main results on {where(dataset)}, each method at its "
                  f"registered defaults: {SEEDS_NOTE}.{source}", ["method", "n", *map(short, metrics)], rows,
                  rules={ours} if paper_rows else set())
    table.bold_best(list(range(ours)))
    return table


def paper_table() -> Table:
    """The paper's main-table numbers and which of our methods each row corresponds to."""
    numbers = PAPER["main"]["numbers"]
    columns = [(d, m) for d, rows in numbers.items() for m in dict.fromkeys(k for v in rows.values() for k in v)]
    rows = [[name, ours or "no counterpart",
             *(float(numbers[d][name][m]) if m in numbers[d].get(name, {}) else None for d, m in columns)]
            for name, ours in PAPER["methods"].items()]
    return Table("paper_main", f"The paper's reported numbers (%) and our counterparts: {PAPER['main']['source']}; "
                 f"{PAPER['main']['note']}.", ["paper method", "ours", *(f"{d} {short(m)}" for d, m in columns)],
                 rows, label_columns=2)


def component_table(dataset: str, runs: pd.DataFrame) -> Table | None:
    """Component ablation with differences to the base beside the paper's (None without base + a component)."""
    spec = PAPER["components"]
    ok_methods = set(runs.loc[runs["status"] == "ok", METHOD])
    members = [m for m in spec["members"] if m in ok_methods]
    metrics = _present(runs, r1_metrics(dataset))
    if spec["base"] not in members or len(members) < 2 or not metrics:
        return None
    base = dict(zip(metrics, _stats(runs[runs[METHOD] == spec["base"]], metrics)))
    header = ["method", "n"] + [h for m in metrics for h in (short(m), f"Δ {short(m)}")] \
        + [f"paper Δ R@1 {d}" for d in spec["deltas"]]
    rows = []
    for member in members:
        group = runs[runs[METHOD] == member]
        stats = dict(zip(metrics, _stats(group, metrics)))
        cells: list = [member, n_cell(group)]
        for m in metrics:
            cells += [stats[m], Delta(stats[m].mean - base[m].mean) if member != spec["base"] else None]
        cells += [Delta(float(d[member])) if member in d else None for d in spec["deltas"].values()]
        rows.append(cells)
    table = Table(f"components{_suffix(dataset)}", f"Component ablation on {where(dataset)}: {SEEDS_NOTE}; "
                  f"Δ = difference of means to {spec['base']}. Paper: {spec['source']}; {spec['note']}.", header, rows)
    table.bold_best()
    return table


def axis_table(dataset: str, axis: str, runs: pd.DataFrame) -> Table:
    """One grid axis at the defaults of everything else; the values it implies (a shape's γ) as columns.
    The schedule-shape axis also gets our rank (by the primary metric, per method) and the paper's."""
    metrics = _present(runs, key_metrics(dataset))
    derived = [a for a in varying_axes(runs) if a not in (axis, METHOD, DATASET)]
    keys = [METHOD, axis] if runs[METHOD].nunique() > 1 else [axis]
    primary, schedule = primary_metric(dataset), PAPER["schedule"]
    rows, ranking = [], []  # ranking: (method key, axis value, primary mean) per row
    for key, group in runs.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        stats = _stats(group, metrics)
        rows.append([*(value_text(k) for k in key), *(value_text(group[a].iloc[0]) for a in derived),
                     n_cell(group), *stats])
        mean = stats[metrics.index(primary)].mean if primary in metrics else math.nan
        ranking.append((key[:-1], key[-1], mean))
    header = [*(["method"] if len(keys) > 1 else []), *(a.rpartition(".")[2] for a in (axis, *derived)), "n",
              *map(short, metrics)]
    note = ""
    if axis == schedule["axis"]:
        for row, (method, value, mean) in zip(rows, ranking):
            better = [m for k, _, m in ranking if k == method and math.isfinite(m) and m > mean]
            row += [str(1 + len(better)) if math.isfinite(mean) else "–",
                    str(schedule["order"].index(value) + 1) if value in schedule["order"] else "–"]
        header += [f"rank by {short(primary)}", "paper rank"]
        note = f" Paper ranking: {schedule['source']}."
    table = Table(f"axis_{axis.removeprefix('cfg.')}{_suffix(dataset)}",
                  f"{axis_label(axis)} on {where(dataset)}, other settings at their defaults: {SEEDS_NOTE}.{note}",
                  header, rows, label_columns=len(keys) + len(derived))
    table.bold_best()
    return table


def slope_table(fits: dict[str, pd.DataFrame]) -> Table | None:
    """The ρ-check fits of every error definition: slope of excess risk against n with its 95 % CI."""
    rows = []
    for error, table in fits.items():
        for r in table.itertuples():
            f = r.fit
            rows.append([error_label(error), r.method, value_text(r.rho)]
                        + ([f.slope, f"[{f.ci[0]:.2f}, {f.ci[1]:.2f}]", 100 * f.asymptote, str(f.points)] if f
                           else [None, r.problem, None, ""]))
    if not rows:
        return None
    return Table("rho_slopes", "Synthetic-ρ check: test error = e∞ + c·n^s fitted over all runs (seeds as points); "
                 "s is the log-log slope of the excess risk, with its 95 % CI (t quantile, N − 3 dof); "
                 "ê∞ in %. Theory: s = −1 for BACL (Thm 4.1), shallower for uniform sampling (Thm 4.2).",
                 ["test error", "method", "ρ", "slope s", "95 % CI", "ê∞", "points"], rows, label_columns=3,
                 digits=2)


def completeness_table(runs: pd.DataFrame, expected: Expected) -> tuple[str, Table | None]:
    """A one-line summary and, when something is not ok, the grid points that lack runs."""
    counts = runs["status"].value_counts()
    total = len(runs) + len(expected.unplaced)
    line = (f"{int(counts.get('ok', 0))} of {total} expected runs ok"
            + "".join(f", {int(counts[s])} {s}" for s in STATUSES[1:] if counts.get(s))
            + (f", {len(expected.unplaced)} missing with unknown grid point ({', '.join(expected.unplaced)})"
               if expected.unplaced else "")
            + f" (expected runs from {expected.source}).")
    axes = varying_axes(runs) or [METHOD]
    rows = []
    for key, group in runs.groupby(axes, dropna=False):
        if (group["status"] == "ok").all():
            continue
        key = key if isinstance(key, tuple) else (key,)
        rows.append([*(value_text(k) for k in key), *(str(int((group["status"] == s).sum())) for s in STATUSES),
                     str(len(group))])
    if not rows:
        return line, None
    return line, Table("completeness", "Grid points with runs that are not ok (seeds per status).",
                       [*(a.removeprefix("cfg.") for a in axes), *STATUSES, "expected"], rows,
                       label_columns=len(axes))
