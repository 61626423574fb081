"""The one error type for bad user input, and the range check that raises it.

Every entry point turns a `ConfigError` into exit code 2 with its message, before any
work starts, so the message must name the key (or file), the value and what was expected.
"""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Bad user input: raised before any training starts, message names key and value."""


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: expected {expected}")
