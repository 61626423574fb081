"""Sweeps: a documented grid file (× seeds) expanded into validated run configs.

An ablation file `bacl/conf/ablation/<name>.yaml` is an `AblationSpec`:
    base:  [key=value, ...]       applied to every run
    grid:  [{axis: [values]}, ...] each entry a cartesian product; the sweep is their union
    seeds: [0, 1, 2]
`method: all` in a grid entry is every registered method, read when the sweep is expanded.
A `key=[a,b]` on the command line is one more axis multiplied into every entry; a plain
`key=value` overrides every run. Runs are named by `run_id` (a hash of the resolved
config), so expanding the same sweep twice yields the same runs, and duplicates collapse.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from bacl.config import load_config, parse_overrides, run_id, to_container
from bacl.errors import ConfigError, require
from bacl.profiles import ClusterProfile
from bacl.registry import DATASETS, METHODS
from bacl.schema import load_structured

CONF_DIR = Path(__file__).resolve().parent / "conf"
ALL = "all"  # `method: all`: every name in bacl.registry.METHODS


@dataclass
class AblationSpec:
    """One ablation file: the runs are base + the union of the grid entries' products, × seeds."""
    name: Optional[str] = None  # informational: the file's name is the sweep's name
    description: str = ""  # one line: what the sweep measures
    base: list[str] = field(default_factory=list)  # key=value overrides applied to every run
    # each entry {axis: [values]} is a cartesian product; the sweep is their union
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    seeds: list[int] = field(default_factory=lambda: [0])  # every grid point runs once per seed

    def check(self, path: str) -> None:
        require(len(self.grid) > 0, f"{path}: grid", self.grid, "a non-empty list of mappings axis -> [values]")
        for entry in self.grid:
            for axis, values in entry.items():
                if _is_all(axis, values):
                    continue
                if not isinstance(values, list) or len(values) == 0:
                    hint = f" (or {ALL} for method)" if values == ALL else ""
                    raise ConfigError(f"{path}: grid axis {axis!r} must be a non-empty list{hint}, got {values!r}")
        require(len(self.seeds) > 0, f"{path}: seeds", self.seeds, "a non-empty list of integers")


SCHEMAS = {"ablation": AblationSpec, "cluster": ClusterProfile}


def _is_all(axis: str, values: Any) -> bool:
    return axis == "method" and values in (ALL, [ALL])


def _axis_values(axis: str, values: Any) -> list:
    """The values of one grid axis; `method: all` is read from the registry now, so a new
    method (one module and one registry line) joins every such sweep without editing YAML."""
    return METHODS.names() if _is_all(axis, values) else list(values)


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


def load_group_file(kind: str, name: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    """bacl/conf/<kind>/<name>.yaml, with `key=value` overrides of its keys (`cluster.mem_gb=8` on the
    command line), validated by its schema (AblationSpec, ClusterProfile)."""
    path = CONF_DIR / kind / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown {kind} {name!r}: valid choices are {', '.join(available(kind))}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # a YAML syntax error: name the file
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for key, value in parse_overrides(overrides):
        OmegaConf.update(node, key, value, merge=True)  # an unknown key is named by the schema check below
    where = f"{path} with {kind}.{' '.join(overrides)}" if overrides else str(path)
    return load_structured(SCHEMAS[kind], node, where)


def load_ablation(name: str) -> DictConfig:
    return load_group_file("ablation", name)


def expand(name: str, args: list[str]) -> list[Run]:
    """All runs of sweep `name` with command-line `args`, each validated (ConfigError if not)."""
    spec = load_ablation(name)
    cli_axes, cli_fixed = {}, []
    for key, value in parse_overrides(args):
        if (isinstance(value, (list, ListConfig)) and key not in ("eval.ks",)) or _is_all(key, value):
            cli_axes[key] = _axis_values(key, value)
            if not cli_axes[key]:
                raise ConfigError(f"command line: axis {key}=[] has no values: expected a non-empty list "
                                  f"such as {key}=[a,b] (or {key}=a for one value)")
        else:
            cli_fixed.append(f"{key}={_format(value)}")
    if not any(a.startswith("output_dir=") for a in cli_fixed):
        cli_fixed.append(f"output_dir=results/{name}")
    base = list(spec.base)
    # `seed=[0,1]` (or `seed=3`) on the command line replaces the file's seeds
    seeds = cli_axes.pop("seed", None) or list(spec.seeds)
    fixed_seed = [a for a in cli_fixed if a.startswith("seed=")]
    if fixed_seed:
        cli_fixed.remove(fixed_seed[0])
        value = fixed_seed[0].partition("=")[2]
        if not value.lstrip("-").isdigit():
            raise ConfigError(f"command line: seed={value!r} is not an integer (seed=3, or seed=[0,1] for an axis)")
        seeds = [int(value)]
    runs: dict[str, Run] = {}
    for entry in OmegaConf.to_container(spec.grid):
        axes = {**{axis: _axis_values(axis, values) for axis, values in entry.items()}, **cli_axes, "seed": seeds}
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
