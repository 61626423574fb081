"""Every `result.json` under a directory -> one table of runs and a mean ± std summary.

Reads result files only, so it works on a sweep that is still running or partly failed:
those runs appear with their status and no metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bacl.results import write_text

SUMMARY_METRICS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "margin",
                   "ambiguous_acc", "ael")


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else value


def config_columns(config: dict) -> dict:
    """A nested config as the `cfg.`-prefixed flat columns of the runs table."""
    flat: dict = {}
    _flatten("", config, flat)
    return {f"cfg.{k}": v for k, v in flat.items()}


def load_runs(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(Path(root).rglob("result.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        row = {"run_id": result.get("run_id"), "path": str(path.parent), "status": result.get("status"),
               "wall_time_s": result.get("wall_time_s"), "error": result.get("error")}
        row.update(config_columns(result.get("config", {})))
        row.update(result.get("metrics") or {})
        rows.append(row)
    return pd.DataFrame(rows)


def varying_axes(runs: pd.DataFrame) -> list[str]:
    """Config columns that differ between runs, seed excluded: what a table groups by.

    A column fixed by the method name (a preset such as `method.negatives`) is not an axis
    of its own, so it is dropped when the method name already separates its values.
    """
    cols = [c for c in runs.columns if c.startswith("cfg.") and c not in ("cfg.seed", "cfg.output_dir")]
    varying = [c for c in cols if runs[c].astype(str).nunique() > 1]
    if "cfg.method.name" not in varying:
        return varying
    as_text = runs[varying].astype(str)
    by_method = as_text.groupby(as_text["cfg.method.name"])
    return [c for c in varying if c == "cfg.method.name" or (by_method[c].nunique() > 1).any()]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs[runs["status"] == "ok"]
    axes = varying_axes(runs) or ["cfg.method.name"]
    metrics = [m for m in SUMMARY_METRICS if m in ok.columns]
    if ok.empty:
        return pd.DataFrame(columns=axes)
    grouped = ok.groupby(axes, dropna=False)[metrics]
    table = grouped.mean().add_suffix(" mean").join(grouped.std(ddof=1).add_suffix(" std"))
    table["seeds"] = grouped.size()
    return table.reset_index()


def write_tables(root: Path) -> pd.DataFrame:
    """Write runs.parquet, runs.csv, summary.csv and summary.md next to the runs."""
    root = Path(root)
    runs = load_runs(root)
    if runs.empty:
        return runs
    runs.to_parquet(root / "runs.parquet", index=False)
    write_text(root / "runs.csv", runs.to_csv(index=False))
    summary = summarise(runs)
    write_text(root / "summary.csv", summary.to_csv(index=False))
    write_text(root / "summary.md", summary.to_markdown(index=False, floatfmt=".2f") + "\n")
    return summary
