"""Which runs a table compares: those at their method's defaults except on the axes studied.

A sweep mixes grid points (the schedule sweep holds three shapes and a γ grid of the
default shape), so "BACL" in a main table must mean BACL at its registered defaults, and
a γ table must hold only runs that differ from those defaults in γ. The reference is the
harness's own config for that method, dataset and axis value (`bacl.config.load_config`),
so a new method, dataset or axis needs no change here. Where that reference was not run
(a method or dataset the harness does not know, a grid that skips the default), the
method's most common value of the axis stands in.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache
from typing import Any

import pandas as pd

from analysis.aggregate import config_columns, varying_axes
from bacl.config import load_config, to_container
from bacl.errors import ConfigError

METHOD, DATASET = "cfg.method.name", "cfg.dataset.name"


def _override(axis: str, value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pandas stores an int axis with gaps as float; int fields reject "20.0"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{axis.removeprefix('cfg.')}={text}"


@cache
def _reference(method: str, dataset: str | None, overrides: tuple[str, ...]) -> dict | None:
    args = [f"method={method}", *([f"dataset={dataset}"] if dataset else []), *overrides]
    try:
        return config_columns(to_container(load_config(args)))
    except ConfigError:
        return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def same_value(a: Any, b: Any) -> bool:
    """Config values equal across the int/float/str forms a runs table and a config give them."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def by_dataset(runs: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(dataset, its runs); runs that name no dataset (hand-written fixtures) count as one."""
    if DATASET not in runs or runs[DATASET].isna().all():
        yield "", runs
        return
    for name in sorted(runs[DATASET].dropna().unique()):
        yield name, runs[runs[DATASET] == name]


def at_reference(runs: pd.DataFrame, *free: str) -> pd.DataFrame:
    """Runs equal to their method's default config on every varying axis except `free` and seed.

    Where no run of a method holds the default of an axis (a k grid without k = 20), that
    axis takes the method's most common value instead, so every method keeps a row.
    """
    if runs.empty or METHOD not in runs:
        return runs
    fixed = [a for a in varying_axes(runs) if a not in (*free, METHOD, DATASET)]
    if not fixed:
        return runs
    targets: dict[tuple, dict] = {}
    keep = []
    for _, row in runs.iterrows():
        dataset = None if _missing(row.get(DATASET)) else str(row[DATASET])
        overrides = tuple(_override(a, row[a]) for a in free if a not in (METHOD, DATASET) and not _missing(row[a]))
        key = (row[METHOD], dataset, overrides)
        if key not in targets:
            ref = _reference(str(row[METHOD]), dataset, overrides) or {}
            same = runs[runs[METHOD] == row[METHOD]]
            targets[key] = {a: ref.get(a) if any(same_value(v, ref.get(a)) for v in same[a])
                            else same[a].mode(dropna=False).iloc[0] for a in fixed}
        keep.append(all(same_value(row[a], targets[key][a]) for a in fixed))
    return runs[pd.Series(keep, index=runs.index)]


def numeric_axes(runs: pd.DataFrame) -> list[str]:
    return [a for a in varying_axes(runs) if a not in (METHOD, DATASET)
            and pd.api.types.is_numeric_dtype(runs[a]) and not pd.api.types.is_bool_dtype(runs[a])]


def categorical_axes(runs: pd.DataFrame) -> list[str]:
    numeric = numeric_axes(runs)
    return [a for a in varying_axes(runs) if a not in (METHOD, DATASET, *numeric)]


def axis_slices(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """For each grid axis (method and dataset aside), its slice: the runs of methods for which
    it takes two or more values with everything else at the reference."""
    slices = {}
    for axis in numeric_axes(runs) + categorical_axes(runs):
        subset = at_reference(runs, axis)
        subset = subset[subset.groupby(METHOD)[axis].transform("nunique") > 1]  # methods the axis varies for
        if not subset.empty:
            slices[axis] = subset
    return slices
