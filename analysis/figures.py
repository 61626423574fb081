"""Figures drawn from result files (PNG and PDF) at the width of one paper column.

A figure is 3.3 in wide (constrained layout keeps tick labels and the legend below the
axes inside that width) with 7-8 pt text, so it can be placed at 100 % in a column.
Every figure groups by method name, so a newly registered method appears with no change
here. Curves are means over seeds with a ±1 std band, points means with ±1 std error bars.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from analysis.display import axis_label, label_with_unit, scaled  # noqa: E402
from analysis.slopes import N_TRAIN, RHO, error_label  # noqa: E402
from bacl.attention_example import AttentionPair  # noqa: E402
from bacl.schedule import SHAPES, Curriculum  # noqa: E402

WIDTH = 3.3  # inches: one column of a two-column paper
plt.rcParams.update({"figure.figsize": (WIDTH, 2.3), "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "axes.grid": True,
                     "grid.alpha": 0.3, "figure.constrained_layout.use": True, "savefig.dpi": 300})


def _style(methods) -> dict[str, dict]:
    """A colour (and a line style after 10) per method, stable across figures of one report."""
    palette = plt.get_cmap("tab10").colors
    return {m: {"color": palette[i % 10], "linestyle": "-" if i < 10 else "--"}
            for i, m in enumerate(sorted(set(methods)))}


def _with_legend_below(entries: int, columns: int = 2, height: float = 2.2) -> tuple[plt.Figure, plt.Axes]:
    """One axes, and room below it for a legend of `entries` in `columns` (added by `_legend`)."""
    return plt.subplots(figsize=(WIDTH, height + 0.15 * math.ceil(entries / columns)))


def _legend(fig: plt.Figure, ax: plt.Axes, columns: int = 2) -> None:
    if ax.get_legend_handles_labels()[0]:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=columns, frameon=False,
                   handlelength=1.8, columnspacing=1.0)


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def load_curves(root: Path) -> pd.DataFrame:
    """One row per (run, epoch): run directory, method, dataset, seed, progress and every train/eval scalar."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.jsonl")):
        config = json.loads((path.parent / "result.json").read_text()).get("config", {}) \
            if (path.parent / "result.json").exists() else {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            row = {"run": str(path.parent), "method": config.get("method", {}).get("name", "?"),
                   "dataset": config.get("dataset", {}).get("name", ""), "seed": config.get("seed"),
                   "progress": record["progress"]}
            row.update({f"train/{k}": v for k, v in record.get("train", {}).items()})
            row.update({f"eval/{k}": v for k, v in record.get("eval", {}).items() if isinstance(v, (int, float))})
            rows.append(row)
    return pd.DataFrame(rows, columns=["run", "method", "dataset", "seed", "progress"] if not rows else None)


def schedule_curves(out: Path) -> list[Path]:
    """α(η) of the named shapes (what the curriculum asks of the sampler)."""
    fig, ax = _with_legend_below(len(SHAPES), columns=1)
    eta = np.linspace(0, 1, 201)
    for shape, (early, late, gamma, mid) in SHAPES.items():
        c = Curriculum("logistic", early, late, gamma, mid, 10.0)
        ax.plot(eta, [c.alpha(e) for e in eta], label=f"{shape} ({early:g} → {late:g}, γ={gamma:g}, mid {mid:g})")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="training progress η (fraction of steps)", ylabel="α(η)  (> 0 avoids hard negatives)",
           title="Curriculum schedules")
    _legend(fig, ax, columns=1)
    return _save(fig, out, "schedule_alpha")


def curve_by_method(curves: pd.DataFrame, column: str, ylabel: str, title: str, out: Path, name: str
                    ) -> list[Path]:
    """Mean ± std over seeds of one per-epoch scalar against training progress, per method."""
    data = curves.dropna(subset=[column]) if column in curves else curves.iloc[0:0]
    style = _style(data["method"])
    fig, ax = _with_legend_below(len(style))
    for method, group in data.groupby("method"):
        stats = group.groupby("progress")[column].agg(["mean", "std"]).fillna({"std": 0})
        ax.plot(stats.index, stats["mean"], marker="o", ms=2, label=method, **style[method])
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15,
                        color=style[method]["color"])
    ax.set(xlabel="training progress η (fraction of steps)", ylabel=ylabel, title=title)
    _legend(fig, ax)
    return _save(fig, out, name)


def metric_by_method(runs: pd.DataFrame, metric: str, out: Path, name: str, chance: float | None = None
                     ) -> list[Path]:
    """Bar chart of a final metric per method, mean ± std over seeds."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[metric]) if metric in runs else runs.iloc[0:0]
    stats = scaled(ok[metric], metric).groupby(ok["cfg.method.name"]).agg(["mean", "std"]).sort_values("mean") \
        if not ok.empty else pd.DataFrame(columns=["mean", "std"])
    fig, ax = plt.subplots(figsize=(WIDTH, 0.2 * max(len(stats), 4) + 0.7))
    ax.barh(stats.index, stats["mean"], xerr=stats["std"].fillna(0), color="tab:blue", alpha=0.8,
            error_kw={"elinewidth": 0.8, "capsize": 1.5})
    if chance is not None:
        ax.axvline(scaled(chance, metric), color="k", ls="--", lw=0.8, label="chance")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)  # above the axes: bars reach the right edge
    ax.set(xlabel=label_with_unit(metric))
    ax.grid(axis="y", visible=False)
    return _save(fig, out, name)


def metric_vs_axis(runs: pd.DataFrame, axis: str, metric: str, out: Path, name: str) -> list[Path]:
    """A final metric against one numeric grid axis, mean ± std over seeds, per method."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[axis, metric])
    style = _style(ok["cfg.method.name"])
    fig, ax = _with_legend_below(len(style))
    for method, group in ok.groupby("cfg.method.name"):
        stats = scaled(group[metric], metric).groupby(group[axis]).agg(["mean", "std"]).sort_index()
        ax.errorbar(stats.index.astype(float), stats["mean"], yerr=stats["std"].fillna(0), marker="o", ms=3,
                    capsize=2, label=method, **style[method])
    values = ok[axis].astype(float)
    if len(values) and values.min() > 0 and values.max() / values.min() >= 8:
        ax.set_xscale("log")
        ax.set_xticks(sorted(values.unique()), [f"{v:g}" for v in sorted(values.unique())])
        ax.minorticks_off()
    ax.set(xlabel=axis_label(axis), ylabel=label_with_unit(metric))
    _legend(fig, ax)
    return _save(fig, out, name)


FLOOR_DECADES = 2  # rho_check: how far below the largest excess error the axis goes


def rho_check(points: pd.DataFrame, fits: pd.DataFrame, error: str, out: Path, name: str) -> list[Path]:
    """Excess test error against n on log-log axes, one panel per ρ: per-method means ± std over seeds,
    the fitted power law (slope and 95 % CI in the legend) and reference slopes −1 and −1/2."""
    rhos = sorted(points[RHO].unique()) if not points.empty else []
    style = _style(points["cfg.method.name"]) if not points.empty else {}
    panels = max(len(rhos), 1)
    fig, axes = plt.subplots(panels, 1, figsize=(WIDTH, (1.7 + 0.16 * len(style)) * panels + 0.4), squeeze=False)
    fit_of = {(r.method, r.rho): r.fit for r in fits.itertuples()} if not fits.empty else {}
    sizes = sorted(points[N_TRAIN].unique()) if not points.empty else []
    for ax, rho in zip(axes[:, 0], rhos):
        panel = points[points[RHO] == rho]
        excess = {}
        for method, group in panel.groupby("cfg.method.name"):
            fit = fit_of.get((method, rho))
            if fit is not None:
                excess[method] = (group["error"] - fit.asymptote).groupby(group[N_TRAIN]).agg(["mean", "std"])
        positive = [v for e in excess.values() for v in e["mean"] if v > 0]
        if not positive:
            continue
        # Two decades below the largest excess: a point at the fitted floor (excess ~ 0) would
        # otherwise stretch the log axis over fifteen decades; such points sit on the floor as ▽.
        top = max(positive)
        floor = top / 10 ** FLOOR_DECADES
        for method, e in excess.items():
            fit, color = fit_of[(method, rho)], style[method]["color"]
            shown, low = e[e["mean"] >= floor], e[e["mean"] < floor]
            ax.errorbar(shown.index, shown["mean"], yerr=shown["std"].fillna(0), fmt="o", ms=3, capsize=2, color=color)
            ax.plot(low.index, np.full(len(low), floor), "v", ms=4, mfc="none", color=color)
            grid = np.geomspace(min(sizes), max(sizes), 50)
            ax.plot(grid, fit.excess(grid), color=color, lw=1.2,
                    label=f"{method}: s = {fit.slope:+.2f} [{fit.ci[0]:+.2f}, {fit.ci[1]:+.2f}]")
        n0, y0 = min(sizes), float(np.exp(np.mean(np.log(np.clip(positive, floor, None)))))
        grid = np.geomspace(n0, max(sizes), 10)
        ax.plot(grid, y0 * (grid / n0) ** -1.0, "k--", lw=0.8)
        ax.plot(grid, y0 * (grid / n0) ** -0.5, "k:", lw=0.8)
        ax.set_ylim(floor / 1.6, top * 2.5)
        ax.set(xscale="log", yscale="log", ylabel="excess error")
        ax.set_xticks(sizes, [f"{n:g}" for n in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"ρ = {rho:g}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32 if ax is axes[-1, 0] else -0.12), frameon=False)
    axes[-1, 0].set_xlabel("training items n (log scale)")
    fig.suptitle(f"error = {error_label(error)} = e∞ + c·n^s (fit; 95 % CI of s);\n"
                 f"excess = error − ê∞ (▽: below {10 ** -FLOOR_DECADES:g} × the largest);\n"
                 "dashed: slope −1, dotted: slope −1/2", fontsize=7)
    return _save(fig, out, name)


def cla_heatmap(pair: AttentionPair, out: Path, name: str) -> list[Path]:
    """A⁺, A⁻ and ΔA = |A⁺ − A⁻| of one anchor (caption tokens × vision tokens); the truly differing
    attribute's cell is boxed and its token labels are red (synthetic data)."""
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, 2.0), sharey=True)
    top = float(max(pair.attn_pos.max(), pair.attn_neg.max()))
    panels = [(pair.attn_pos, "A⁺ own caption", "viridis", top), (pair.attn_neg, "A⁻ hardest negative", "viridis", top),
              (pair.delta, "ΔA = |A⁺ − A⁻|", "magma", float(pair.delta.max()))]
    images = []
    for ax, (matrix, title, cmap, vmax) in zip(axes, panels):
        images.append(ax.imshow(matrix.numpy(), cmap=cmap, vmin=0, vmax=vmax, aspect="equal"))
        ax.set_title(title, fontsize=7)
        ax.grid(False)
        ax.set_xticks(range(len(pair.vision_labels)), pair.vision_labels, rotation=90, fontsize=7)
        for text_token, vision_token in pair.differing:
            ax.add_patch(Rectangle((vision_token - 0.5, text_token - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
            ax.get_xticklabels()[vision_token].set_color("red")
        ax.set_xlabel("vision token", fontsize=7)
    axes[0].set_yticks(range(len(pair.text_labels)), pair.text_labels, fontsize=7)
    for text_token, _ in pair.differing:
        axes[0].get_yticklabels()[text_token].set_color("red")
    axes[0].set_ylabel("caption token", fontsize=7)
    for image, where, shrink, vmax in ((images[0], axes[:2], 0.6, top), (images[2], axes[2], 0.9, panels[2][3])):
        bar = fig.colorbar(image, ax=where, orientation="horizontal", shrink=shrink, ticks=[0, vmax], format="%.2g")
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"CLA attention of test item {pair.anchor}: own caption vs caption of item {pair.negative}",
                 fontsize=7)
    return _save(fig, out, name)
