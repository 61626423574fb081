"""Config fields that do not change a run's result, marked once where they are declared.

Where data is read from or results are written to, how many threads run, how large an
encoder's inference batch is: none of these change what a run computes, so neither a
run's `run_id` nor a feature store's path may depend on them. A field says so with
`neutral(default)`; `without_neutral` drops every such field of a config, at any depth,
by walking the dataclasses the config was declared with (so it works as well on a plain
dict read back from a run's `config.yaml` as on a live config).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

NEUTRAL = "result_neutral"


def neutral(default: Any = None) -> Any:
    """A dataclass field, with this default, that leaves the result unchanged."""
    return dataclasses.field(default=default, metadata={NEUTRAL: True})


def without_neutral(data: dict, schema: type, sections: dict[str, type] | None = None) -> dict:
    """`data` (plain containers) less every field `schema` marks neutral, recursively.

    `sections` gives the dataclass of fields typed `Any` in `schema` (the run config's
    method and dataset sections, whose class depends on the registered name).
    """
    if not dataclasses.is_dataclass(schema):
        return data
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    out = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is not None and field.metadata.get(NEUTRAL):
            continue
        inner = (sections or {}).get(key) or (hints.get(key) if field is not None else None)
        out[key] = without_neutral(value, inner) if isinstance(value, dict) and inner is not None else value
    return out
