"""sweep.json: what a sweep directory was asked to hold, and which of its finished runs older code made.

Every sweep that submits records its ablation, cluster profile (with command-line overrides) and
each run's overrides in `<sweep_dir>/sweep.json`, merged over earlier sweeps into the same
directory, so `--status <dir>` needs the directory alone. `run_id` hashes the config, not the
code, so a run finished before a fix is skipped by the next sweep; `stale` finds those (result.json
names another commit) and `set_aside` moves one to `<sweep_dir>.stale/<commit>/` so it trains again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from bacl.config import load_config
from bacl.errors import ConfigError
from bacl.results import read_json, read_result, write_json
from bacl.sweep import Run

RECORD = "sweep.json"


def record(sweep_dir: Path, ablation: str, cluster: str, cluster_overrides: list[str], runs: list[Run]) -> None:
    data = read_json(sweep_dir / RECORD) or {"runs": {}}
    data.update(ablation=ablation, cluster=cluster, cluster_overrides=cluster_overrides)
    data["runs"].update({run.run_id: {"overrides": list(run.overrides), "axes": run.axes} for run in runs})
    write_json(sweep_dir / RECORD, data)


def recorded(sweep_dir: Path) -> tuple[dict[str, Any], list[Run]]:
    """The record and its runs, rebuilt from their overrides (a run keeps the id it was recorded under)."""
    data = read_json(sweep_dir / RECORD)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise ConfigError(f"{sweep_dir}: no readable {RECORD} (a sweep writes it when it submits); "
                          f"give ablation=<name> and the sweep's overrides instead")
    return data, [Run(rid, tuple(r["overrides"]), r["axes"], load_config(r["overrides"])) for rid, r in data["runs"].items()]


def made_by(run: Run) -> Optional[str]:
    """The commit that produced a finished run, from its result.json (None: not recorded)."""
    result = read_result(Path(run.cfg.output_dir) / run.run_id / "result.json") or {}
    git = result.get("git")
    return (git.get("commit") if isinstance(git, dict) else None) or result.get("git_commit")


def stale(done: list[Run], commit: Optional[str]) -> list[Run]:
    """Finished runs made by a commit other than `commit` (none when either commit is unknown)."""
    return [run for run in done if commit and made_by(run) not in (None, commit)]


def set_aside(run: Run) -> Path:
    """Move a finished run directory to <sweep_dir>.stale/<commit>/<run_id> (kept, out of the sweep's tables);
    a run of that commit set aside before (the same old commit's run made twice) keeps its place: -2, -3, ..."""
    run_dir = Path(run.cfg.output_dir) / run.run_id
    home = run_dir.parent.with_name(run_dir.parent.name + ".stale") / (made_by(run) or "unknown")[:12]
    home.mkdir(parents=True, exist_ok=True)
    target, n = home / run.run_id, 1
    while target.exists():
        n += 1
        target = home / f"{run.run_id}-{n}"
    run_dir.rename(target)
    return target
