"""Figures drawn from result files alone (PNG and PDF, sized for a paper column).

Every figure groups by method name, so a newly registered method appears with no change
here. Curves are means over seeds with a ±1 std band.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bacl.schedule import SHAPES, Curriculum  # noqa: E402

plt.rcParams.update({"figure.figsize": (3.4, 2.5), "font.size": 8, "axes.grid": True, "grid.alpha": 0.3,
                     "legend.fontsize": 6.5, "savefig.bbox": "tight", "savefig.dpi": 200})


def _style(methods) -> dict[str, dict]:
    """A colour (and a line style after 10) per method, stable across figures of one report."""
    palette = plt.get_cmap("tab10").colors
    return {m: {"color": palette[i % 10], "linestyle": "-" if i < 10 else "--"}
            for i, m in enumerate(sorted(set(methods)))}


def _legend_outside(ax: plt.Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def load_curves(root: Path) -> pd.DataFrame:
    """One row per (run, epoch): method, seed, progress and every train/eval scalar."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.jsonl")):
        config = json.loads((path.parent / "result.json").read_text()).get("config", {}) \
            if (path.parent / "result.json").exists() else {}
        method = config.get("method", {}).get("name", "?")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            row = {"run": path.parent.name, "method": method, "seed": config.get("seed"),
                   "progress": record["progress"]}
            row.update({f"train/{k}": v for k, v in record.get("train", {}).items()})
            row.update({f"eval/{k}": v for k, v in record.get("eval", {}).items() if isinstance(v, (int, float))})
            rows.append(row)
    return pd.DataFrame(rows)


def schedule_curves(out: Path) -> list[Path]:
    """α(η) of the named shapes (what the curriculum asks of the sampler)."""
    fig, ax = plt.subplots()
    eta = np.linspace(0, 1, 201)
    for shape, (early, late, gamma, mid) in SHAPES.items():
        c = Curriculum("logistic", early, late, gamma, mid, 10.0)
        ax.plot(eta, [c.alpha(e) for e in eta], label=f"{shape} ({early}, {late}, γ={gamma})")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="training progress η", ylabel="α(η)", title="Curriculum schedules")
    ax.legend()
    return _save(fig, out, "schedule_alpha")


def curve_by_method(curves: pd.DataFrame, column: str, ylabel: str, title: str, out: Path, name: str
                    ) -> list[Path]:
    """Mean ± std over seeds of one per-epoch scalar against training progress, per method."""
    data = curves.dropna(subset=[column]) if column in curves else pd.DataFrame(columns=["method", "progress", column])
    fig, ax = plt.subplots()
    style = _style(data["method"]) if not data.empty else {}
    for method, group in data.groupby("method"):
        stats = group.groupby("progress")[column].agg(["mean", "std"]).fillna({"std": 0})
        ax.plot(stats.index, stats["mean"], marker="o", ms=2, label=method, **style[method])
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15,
                        color=style[method]["color"])
    ax.set(xlabel="training progress η", ylabel=ylabel, title=title)
    if not data.empty:
        _legend_outside(ax)
    return _save(fig, out, name)


def metric_by_method(runs: pd.DataFrame, metric: str, ylabel: str, out: Path, name: str,
                     chance: float | None = None) -> list[Path]:
    """Bar chart of a final metric per method, mean ± std over seeds."""
    if metric not in runs or "cfg.method.name" not in runs:
        runs = pd.DataFrame(columns=["status", "cfg.method.name", metric])
    ok = runs[runs["status"] == "ok"].dropna(subset=[metric])
    stats = ok.groupby("cfg.method.name")[metric].agg(["mean", "std"]).sort_values("mean")
    fig, ax = plt.subplots(figsize=(3.4, 0.25 * max(len(stats), 4) + 0.6))
    ax.barh(stats.index, stats["mean"], xerr=stats["std"].fillna(0), color="tab:blue", alpha=0.8)
    if chance is not None:
        ax.axvline(chance, color="k", ls="--", lw=0.8, label="chance")
        ax.legend()
    ax.set(xlabel=ylabel)
    return _save(fig, out, name)


def metric_vs_axis(runs: pd.DataFrame, axis: str, metric: str, out: Path, name: str) -> list[Path]:
    """A final metric against one numeric grid axis, mean ± std over seeds, per method."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[axis, metric])
    fig, ax = plt.subplots()
    style = _style(ok["cfg.method.name"])
    for method, group in ok.groupby("cfg.method.name"):
        stats = group.groupby(axis)[metric].agg(["mean", "std"]).sort_index()
        ax.errorbar(stats.index.astype(float), stats["mean"], yerr=stats["std"].fillna(0), marker="o", ms=3,
                    capsize=2, label=method, **style[method])
    ax.set(xlabel=axis.removeprefix("cfg."), ylabel=metric, title=f"{metric} vs {axis.removeprefix('cfg.')}")
    _legend_outside(ax)
    return _save(fig, out, name)
