"""Runs a sweep meant to produce but that left no result: so a partial sweep still reports.

The expected runs come from, in this order:
1. the ablation grid, when the results directory is named after an ablation (the sweep
   default `results/<ablation>`) and that grid, expanded with today's code, contains every
   run on disk (compared by config content, so an older run-id hash still matches);
2. the sweep's `jobs.json` (run id -> job), written when jobs are submitted;
3. what is on disk: run directories with a `config.yaml` and no `result.json`.
A run with a `config.yaml` but no result is `unfinished` (running, or killed); one never
started is `missing`. Missing runs known only by id (jobs.json) have no grid point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis.aggregate import config_columns
from bacl.config import run_id, to_container
from bacl.errors import ConfigError
from bacl.results import read_json
from bacl.sweep import available, expand


@dataclass
class Expected:
    rows: pd.DataFrame  # unfinished and missing runs with their config columns
    unplaced: list[str] = field(default_factory=list)  # missing run ids whose config is unknown
    source: str = "disk"  # where the expected set came from


def _content_id(config: dict) -> str | None:
    try:
        return run_id(config)
    except (KeyError, ValueError, TypeError):
        return None


def _unfinished(root: Path) -> dict[str, dict]:
    """Run directory name -> resolved config, for runs that started and wrote no result."""
    found = {}
    for path in sorted(root.rglob("config.yaml")):
        if not (path.parent / "result.json").exists():
            found[path.parent.name] = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return found


def _grid(root: Path, done: list[dict], started: dict[str, dict]) -> dict[str, dict] | None:
    """Expanded ablation named like `root` (content id -> config), if it explains every run on disk."""
    if root.name not in available("ablation"):
        return None
    try:
        grid = {r.run_id: to_container(r.cfg) for r in expand(root.name, [f"output_dir={root}"])}
    except ConfigError:
        return None
    on_disk = [_content_id(c) for c in [*done, *started.values()]]
    return grid if all(i in grid for i in on_disk) else None


def expected_runs(root: Path) -> Expected:
    """Unfinished and missing runs of the sweep in `root`."""
    root = Path(root)
    results = {p.parent.name: read_json(p) or {} for p in sorted(root.rglob("result.json"))}
    done = [r.get("config", {}) for r in results.values()]
    started = _unfinished(root)
    rows = [{"run_id": rid, "status": "unfinished", **config_columns(cfg)} for rid, cfg in started.items()]
    unplaced: list[str] = []
    grid = _grid(root, done, started)
    if grid is not None:
        source = f"ablation grid {root.name!r} ({len(grid)} runs)"
        present = {_content_id(c) for c in [*done, *started.values()]}
        rows += [{"run_id": rid, "status": "missing", **config_columns(cfg)}
                 for rid, cfg in grid.items() if rid not in present]
    elif (jobs := read_json(root / "jobs.json")) is not None:
        source = f"jobs.json ({len(jobs)} runs)"
        unplaced = sorted(rid for rid in jobs if rid not in results and rid not in started)
    else:
        source = "the run directories on disk"
    return Expected(pd.DataFrame(rows), unplaced, source)


def with_expected(runs: pd.DataFrame, expected: Expected) -> pd.DataFrame:
    """The runs table plus a row per unfinished or missing run (status says which, metrics empty)."""
    return pd.concat([runs, expected.rows], ignore_index=True) if not expected.rows.empty else runs
