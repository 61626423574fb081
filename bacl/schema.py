"""YAML files validated by a dataclass: OmegaConf's structured merge, its errors as ConfigError.

Cluster profiles and ablation files are user input like run configs (bacl/config.py), so
they take the same idiom: a dataclass holds every key with its default, OmegaConf rejects
unknown keys and wrong types, the dataclass's `check(path)` rejects out-of-range values.
What OmegaConf raises names its own internals; this module turns it into a message that
names the file, the key, the value and what would be valid, before anything is submitted.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from bacl.errors import ConfigError

_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans")}


def describe(tp: Any) -> str:
    """What a value of type `tp` looks like in YAML, for error messages ("a list of integers")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        item = args[0] if args else Any
        plural = "mappings" if typing.get_origin(item) is dict else _NOUNS.get(item, ("", "values"))[1]
        return f"a list of {plural}"
    if origin is dict:
        return "a mapping"
    return _NOUNS.get(tp, (getattr(tp, "__name__", str(tp)),))[0]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def load_structured(schema: type, node: Any, path: str) -> DictConfig:
    """`node` (a loaded YAML file) merged into `schema`'s defaults, typed, checked and read-only.

    A field may list its valid values as `metadata={"choices": (...)}`; a field whose
    default is MISSING is required. Everything else is the schema's `check(path)`.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    valid = f"valid keys: {', '.join(fields)}"
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping, got {_plain(node)!r}; {valid}")

    def expected(key: str) -> str:
        choices = fields[key].metadata.get("choices")
        return f"valid choices are {', '.join(choices)}" if choices else f"expected {describe(hints[key])}"

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), node)
        obj = OmegaConf.to_object(cfg)
    except ConfigKeyError as err:
        unknown = [_unknown(k, node[k], fields) for k in node if k not in fields] or [str(err.full_key)]
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; {valid}") from None
    except MissingMandatoryValue as err:
        raise ConfigError(f"{path}: required key {err.key} is missing: {expected(str(err.key))}") from None
    except (OmegaConfBaseException, TypeError, ValueError) as err:  # a wrong type: find which key has it
        key = next((k for k in node if not _merges(schema, k, node[k])), None)
        if key is None:
            raise ConfigError(f"{path}: {err}; {valid}") from None
        raise ConfigError(f"{path}: {key}={_plain(node[key])!r} is not {describe(hints[key])}") from None
    for key, f in fields.items():
        choices = f.metadata.get("choices")
        if choices and getattr(obj, key) not in choices:
            raise ConfigError(f"{path}: {key}={getattr(obj, key)!r}: {expected(key)}")
    if hasattr(obj, "check"):
        obj.check(path)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _unknown(key: Any, value: Any, valid: Iterable[str]) -> str:
    """`key=value`, with the valid key it is most likely a misspelling of."""
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f"{key}={_plain(value)!r}" + (f" (did you mean {close[0]}?)" if close else "")


def _merges(schema: type, key: str, value: Any) -> bool:
    try:
        OmegaConf.merge(OmegaConf.structured(schema), {key: value})
        return True
    except (OmegaConfBaseException, TypeError, ValueError):
        return False
