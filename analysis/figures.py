"""Figures drawn from result files (PNG and PDF) at the width of one paper column.

A figure is 3.3 in wide (constrained layout keeps tick labels and the legend below the
axes inside that width) with 7-8 pt text, so it can be placed at 100 % in a column.
Every figure groups by method name, so a newly registered method appears with no change
here, in its own fixed style (analysis/styles.py); the reference method (BACL, else CLIP) is
drawn on top and marked. Every figure states its n and error measure in a legend or axis
label: curves are means ± 1 std over seeds (bands with up to `BANDS_UP_TO` methods, else one
panel per method with the reference in grey behind), final metrics are dot plots of every
seed with the mean ± 95 % t interval, their axis around the data (and chance), not from 0.
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
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from analysis.display import axis_label, label_with_unit, scaled  # noqa: E402
from analysis.paired import interval  # noqa: E402
from analysis.slopes import N_TRAIN, RHO, error_label  # noqa: E402
from analysis.styles import ordered, reference, style  # noqa: E402
from bacl.attention_example import AttentionPair  # noqa: E402
from bacl.schedule import SHAPES, Curriculum  # noqa: E402

WIDTH = 3.3  # inches: one column of a two-column paper
BANDS_UP_TO = 3  # more overlapping std bands cannot be told apart: one panel per method instead
STD = "mean ± 1 std over seeds"
CI = "mean ± 95 % CI (t) over seeds"
REFERENCE_GREY = "0.65"
plt.rcParams.update({"figure.figsize": (WIDTH, 2.3), "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "axes.grid": True,
                     "grid.alpha": 0.3, "figure.constrained_layout.use": True, "savefig.dpi": 300})


def _line(method: str, emphasised: bool) -> dict:
    """Plot keywords: the method's style; the reference thick and filled underneath, the others thin and hollow
    on top of it, so a method that coincides with the reference (bns_only often does) still shows."""
    return {**style(method), "lw": 2.2 if emphasised else 1.1, "ms": 5 if emphasised else 3.5, "zorder": 2 if emphasised else 3,
            "mfc": style(method)["color"] if emphasised else "none", "alpha": 1.0 if emphasised else 0.9}


def _with_legend_below(entries: int, columns: int = 2, height: float = 2.2) -> tuple[plt.Figure, plt.Axes]:
    """One axes, and room below it for a legend of `entries` in `columns` (added by `_legend`)."""
    return plt.subplots(figsize=(WIDTH, height + 0.15 * math.ceil(entries / columns)))


def _legend(fig: plt.Figure, ax: plt.Axes, columns: int = 2, title: str | None = None) -> None:
    if ax.get_legend_handles_labels()[0]:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=columns, frameon=False,
                   handlelength=2.4, columnspacing=1.0, title=title, title_fontsize=7)


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
    for (shape, (early, late, gamma, mid)), ls in zip(SHAPES.items(), ("-", "--", "-.", ":") * len(SHAPES)):
        c = Curriculum("logistic", early, late, gamma, mid, 10.0)
        ax.plot(eta, [c.alpha(e) for e in eta], ls=ls, label=f"{shape} ({early:g} → {late:g}, γ={gamma:g}, mid {mid:g})")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="training progress η (fraction of steps)", ylabel="α(η)  (> 0 avoids hard negatives)",
           title="Curriculum schedules")
    _legend(fig, ax, columns=1)
    return _save(fig, out, "schedule_alpha")


def _label(method: str, n: int, ref: str | None) -> str:
    return f"{method} (n={n})" + (", reference" if method == ref else "")


def curve_by_method(curves: pd.DataFrame, column: str, ylabel: str, title: str, out: Path, name: str
                    ) -> list[Path]:
    """Mean ± 1 std over seeds of one per-epoch scalar against training progress, per method: one axes
    with bands for up to BANDS_UP_TO methods, else one panel each with the reference's mean behind."""
    data = curves.dropna(subset=[column]) if column in curves else curves.iloc[0:0]
    methods = ordered(data["method"])
    ref = reference(methods)
    groups = {m: data[data["method"] == m] for m in methods}
    stats = {m: g.groupby("progress")[column].agg(["mean", "std"]).fillna({"std": 0}) for m, g in groups.items()}
    n = {m: g["run"].nunique() for m, g in groups.items()}

    def draw(ax: plt.Axes, method: str, label: str | None) -> None:
        s = stats[method]
        ax.plot(s.index, s["mean"], label=label, **_line(method, method == ref))
        ax.fill_between(s.index, s["mean"] - s["std"], s["mean"] + s["std"], alpha=0.12, lw=0, color=style(method)["color"])

    if len(methods) <= BANDS_UP_TO:
        fig, ax = _with_legend_below(len(methods))
        for method in methods:
            draw(ax, method, _label(method, n[method], ref))
        ax.set(xlabel="training progress η (fraction of steps)", ylabel=ylabel, title=title)
        _legend(fig, ax, title=STD)
        return _save(fig, out, name)
    rows = math.ceil(len(methods) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(WIDTH, 0.95 * rows + 1.0), sharex=True, sharey=True, squeeze=False)
    for ax, method in zip(axes.flat, methods):
        if ref is not None and method != ref:
            ax.plot(stats[ref].index, stats[ref]["mean"], color=REFERENCE_GREY, lw=1.0, zorder=1)
        draw(ax, method, None)
        ax.set_title(_label(method, n[method], ref), fontsize=7, pad=2)
    for i, ax in enumerate(axes.flat):
        if i >= len(methods):
            ax.set_visible(False)
        if i + 2 >= len(methods) and i < len(methods):  # the lowest panel of its column: its ticks and label
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("training progress η", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.supylabel(f"{ylabel}\n({STD})", fontsize=8)
    if ref is not None:
        fig.legend([Line2D([], [], color=REFERENCE_GREY, lw=1.0)], [f"{ref} (reference), mean, in every panel"],
                   loc="outside lower center", frameon=False)
    return _save(fig, out, name)


def metric_by_method(runs: pd.DataFrame, metric: str, out: Path, name: str, chance: float | None = None
                     ) -> list[Path]:
    """Dot plot of a final metric per method: every seed (hollow), the mean ± 95 % t interval, the
    reference's mean as a dotted line, chance dashed; the axis spans the data, not 0."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[metric]) if metric in runs else runs.iloc[0:0]
    values = scaled(ok[metric], metric)
    per = {m: values[ok["cfg.method.name"] == m] for m in ok["cfg.method.name"].unique()}
    stats = {m: interval(v) for m, v in per.items()}  # one sample: .difference is its mean, .low/.high its t interval
    methods = sorted(per, key=lambda m: stats[m].difference)  # best at the top
    ref = reference(methods)
    fig, ax = plt.subplots(figsize=(WIDTH, 0.22 * max(len(methods), 4) + 1.0))
    for y, method in enumerate(methods):
        st, v = stats[method], per[method]
        colour, marker = style(method)["color"], style(method)["marker"]
        ax.scatter(v, y + np.linspace(-0.2, 0.2, len(v)), s=9, facecolors="none", edgecolors=colour, lw=0.6, zorder=2)
        err = [[st.difference - st.low], [st.high - st.difference]] if math.isfinite(st.low) else None
        ax.errorbar(st.difference, y, xerr=err, fmt=marker, color=colour, ms=5 if method == ref else 4, capsize=2.5,
                    elinewidth=1.6 if method == ref else 1.0, zorder=3)
    handles = [Line2D([], [], marker="o", color="0.3", ls="none", mfc="none", ms=3),
               Line2D([], [], marker="o", color="0.3", ls="-", ms=4)]
    labels = ["one seed", CI]
    if ref is not None:
        ax.axvline(stats[ref].difference, color=style(ref)["color"], ls=":", lw=0.9, zorder=1)
        handles.append(Line2D([], [], color=style(ref)["color"], ls=":", lw=0.9))
        labels.append(f"{ref} (reference) mean")
    if chance is not None:
        ax.axvline(scaled(chance, metric), color="k", ls="--", lw=0.8, zorder=1)
        handles.append(Line2D([], [], color="k", ls="--", lw=0.8))
        labels.append(f"chance ({scaled(chance, metric):g})")
    ax.set_yticks(range(len(methods)), [f"{m} (n={stats[m].n})" for m in methods])
    for tick, method in zip(ax.get_yticklabels(), methods):
        tick.set_fontweight("bold" if method == ref else "normal")
    ax.set_ylim(-0.6, max(len(methods), 1) - 0.4)
    ax.margins(x=0.08)
    ax.set(xlabel=label_with_unit(metric))  # n: tick labels; the error measure: the legend
    ax.grid(axis="y", visible=False)
    fig.legend(handles, labels, loc="outside upper center", ncol=2, frameon=False, handlelength=2.0, columnspacing=1.0)
    return _save(fig, out, name)


def metric_vs_axis(runs: pd.DataFrame, axis: str, metric: str, out: Path, name: str) -> list[Path]:
    """A final metric against one numeric grid axis, mean ± 1 std over seeds, per method."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[axis, metric])
    methods = ordered(ok["cfg.method.name"])
    ref = reference(methods)
    fig, ax = _with_legend_below(len(methods))
    for method in methods:
        group = ok[ok["cfg.method.name"] == method]
        stats = scaled(group[metric], metric).groupby(group[axis]).agg(["mean", "std", "count"]).sort_index()
        counts = sorted(set(stats["count"]))
        n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        ax.errorbar(stats.index.astype(float), stats["mean"], yerr=stats["std"].fillna(0), capsize=2,
                    label=f"{method} (n={n} per point)" + (", reference" if method == ref else ""),
                    **_line(method, method == ref))
    values = ok[axis].astype(float)
    if len(values) and values.min() > 0 and values.max() / values.min() >= 8:
        ax.set_xscale("log")
        ax.set_xticks(sorted(values.unique()), [f"{v:g}" for v in sorted(values.unique())])
        ax.minorticks_off()
    ax.set(xlabel=axis_label(axis), ylabel=label_with_unit(metric))
    _legend(fig, ax, columns=1 if len(methods) <= 3 else 2, title=STD)
    return _save(fig, out, name)


FLOOR_DECADES = 2  # rho_check: how far below the largest excess error the axis goes


def rho_check(points: pd.DataFrame, fits: pd.DataFrame, error: str, out: Path, name: str) -> list[Path]:
    """Excess test error against n on log-log axes, one panel per ρ: per-method means ± std over seeds,
    the fitted power law (slope and 95 % CI in the legend) and reference slopes −1 and −1/2."""
    rhos = sorted(points[RHO].unique()) if not points.empty else []
    methods = ordered(points["cfg.method.name"]) if not points.empty else []
    panels = max(len(rhos), 1)
    fig, axes = plt.subplots(panels, 1, figsize=(WIDTH, (1.7 + 0.16 * len(methods)) * panels + 0.4), squeeze=False)
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
            fit, color, marker = fit_of[(method, rho)], style(method)["color"], style(method)["marker"]
            shown, low = e[e["mean"] >= floor], e[e["mean"] < floor]
            ax.errorbar(shown.index, shown["mean"], yerr=shown["std"].fillna(0), fmt=marker, ms=3, capsize=2, color=color)
            ax.plot(low.index, np.full(len(low), floor), "v", ms=4, mfc="none", color=color)
            grid = np.geomspace(min(sizes), max(sizes), 50)
            ax.plot(grid, fit.excess(grid), color=color, lw=1.2, ls=style(method)["linestyle"],
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
    seeds = sorted(set(points.groupby(["cfg.method.name", RHO, N_TRAIN]).size())) if not points.empty else [0]
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    fig.suptitle(f"error = {error_label(error)} = e∞ + c·n^s (fit; 95 % CI of s);\n"
                 f"excess = error − ê∞, points: mean ± 1 std over {n} seeds\n"
                 f"(▽: below {10 ** -FLOOR_DECADES:g} × the largest); dashed: slope −1, dotted: slope −1/2", fontsize=7)
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
