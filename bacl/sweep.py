"""Sweeps: a documented grid file (× seeds) expanded into validated run configs.

An ablation file `experiments/conf/ablation/<name>.yaml` holds
    base:  [key=value, ...]       applied to every run
    grid:  [{axis: [values]}, ...] each entry a cartesian product; the sweep is their union
    seeds: [0, 1, 2]
A `key=[a,b]` on the command line is one more axis multiplied into every entry; a plain
`key=value` overrides every run. Runs are named by `run_id` (a hash of the resolved
config), so expanding the same sweep twice yields the same runs, and duplicates collapse.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bacl.config import load_config, parse_overrides, run_id, to_container
from bacl.errors import ConfigError
from bacl.registry import DATASETS
from bacl.results import read_json

CONF_DIR = Path(__file__).resolve().parents[1] / "experiments" / "conf"
SWEEP_KEYS = {"name", "description", "base", "grid", "seeds"}


@dataclass(frozen=True)
class Run:
    run_id: str
    overrides: tuple[str, ...]  # everything needed to rebuild the config, output_dir included
    axes: dict[str, Any]  # the grid values that distinguish this run (for tables)
    cfg: DictConfig


def _format(value: Any) -> str:
    if isinstance(value, (list, ListConfig)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def available(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / kind).glob("*.yaml"))


def load_group_file(kind: str, name: str) -> DictConfig:
    path = CONF_DIR / kind / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown {kind} {name!r}: valid choices are {', '.join(available(kind))}")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # a YAML syntax error: name the file
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_ablation(name: str) -> dict:
    path = CONF_DIR / "ablation" / f"{name}.yaml"
    spec = OmegaConf.to_container(load_group_file("ablation", name))
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(sorted(SWEEP_KEYS))}")
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(SWEEP_KEYS))}")
    spec.setdefault("grid", [{}])
    spec.setdefault("seeds", [0])
    spec.setdefault("base", [])
    if not isinstance(spec["grid"], list) or not all(isinstance(g, dict) for g in spec["grid"]):
        raise ConfigError(f"{path}: 'grid' must be a list of mappings axis -> [values]")
    for entry in spec["grid"]:
        for axis, values in entry.items():
            if not isinstance(values, list) or len(values) == 0:
                raise ConfigError(f"{path}: grid axis {axis!r} must be a non-empty list, got {values!r}")
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if not isinstance(spec["base"], list):
        raise ConfigError(f"{path}: 'base' must be a list of key=value strings")
    return spec


def expand(name: str, args: list[str]) -> list[Run]:
    """All runs of sweep `name` with command-line `args`, each validated (ConfigError if not)."""
    spec = load_ablation(name)
    cli_axes, cli_fixed = {}, []
    for key, value in parse_overrides(args):
        if isinstance(value, (list, ListConfig)) and key not in ("eval.ks",):
            cli_axes[key] = list(value)
        else:
            cli_fixed.append(f"{key}={_format(value)}")
    if not any(a.startswith("output_dir=") for a in cli_fixed):
        cli_fixed.append(f"output_dir=results/{name}")
    base = [str(x) for x in spec["base"]]
    runs: dict[str, Run] = {}
    for entry in spec["grid"]:
        axes = {**entry, **cli_axes, "seed": spec["seeds"]}
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo))
            overrides = (*base, *(f"{k}={_format(v)}" for k, v in point.items()), *cli_fixed)
            try:
                cfg = load_config(overrides)
            except ConfigError as err:
                raise ConfigError(f"sweep {name!r}, run {point}: {err}") from None
            rid = run_id(cfg)
            runs.setdefault(rid, Run(rid, tuple(overrides), point, cfg))
    return list(runs.values())


def unextracted(runs: list[Run]) -> list[str]:
    """One message per distinct dataset config whose feature store is not complete."""
    messages, seen = [], set()
    for run in runs:
        key = json.dumps(to_container(run.cfg.dataset), sort_keys=True)
        dataset_cls = DATASETS.entry(run.cfg.dataset.name).load()
        if key in seen or not hasattr(dataset_cls, "check_extracted"):
            continue
        seen.add(key)
        try:
            dataset_cls.check_extracted(run.cfg.dataset)
        except ConfigError as err:
            messages.append(str(err))
    return messages


def run_state(run: Run) -> tuple[str, str | None]:
    """(done | failed | started | missing, error) from what the run directory holds."""
    run_dir = Path(run.cfg.output_dir) / run.run_id
    result = read_json(run_dir / "result.json")
    if result is not None:
        return ("done", None) if result.get("status") == "ok" else ("failed", result.get("error"))
    return ("started", None) if (run_dir / "config.yaml").exists() else ("missing", None)
