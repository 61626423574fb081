"""Config fields that do not change a run's result, marked once where they are declared.

Where data is read from or results are written to, how many threads run, how large an
encoder's inference batch is: none of these change what a run computes, so neither a
run's `run_id` nor a feature store's path may depend on them. A field says so with
`neutral(default)`; `without_neutral` drops every such field of a config, at any depth, by
reading the dataclass each OmegaConf node was built from.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

NEUTRAL = "result_neutral"


def neutral(default: Any = None) -> Any:
    """A dataclass field, with this default, that leaves the result unchanged."""
    return dataclasses.field(default=default, metadata={NEUTRAL: True})


def neutral_keys(schema: Any) -> set[str]:
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return set()
    return {f.name for f in dataclasses.fields(schema) if f.metadata.get(NEUTRAL)}


def without_neutral(cfg: DictConfig) -> dict:
    """`cfg` as plain containers, less every result-neutral field of every section."""
    out = {}
    skip = neutral_keys(OmegaConf.get_type(cfg))
    for key in cfg.keys():
        if key in skip:
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            out[key] = without_neutral(value)
        else:
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out
