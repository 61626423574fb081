"""Optional dependencies: which pip extra provides each, and the error that says so.

FAISS comes in two wheels that ship the same `faiss` module (`[cpu]`: faiss-cpu, `[gpu]`:
faiss-gpu-cu12), so neither can be a hard dependency; the media decoders and frozen encoders
(`[media]`) are needed only by the real datasets. A module imported through `optional_import`
that is not installed becomes a stand-in whose first use raises `MissingDependency`, a
ConfigError (exit 2) naming the extra, so `--help` and the synthetic benchmark work without it.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from bacl.errors import ConfigError

PROJECT = "bacl-harness"
EXTRAS = {  # module -> (the extra that installs it, what it is for)
    "faiss": ("cpu", "FAISS candidate pools"),
    "av": ("media", "video decoding (real datasets)"),
    "soundfile": ("media", "audio decoding (real datasets)"),
    "webdataset": ("media", "LAION-400M tar shards"),
    "braceexpand": ("media", "LAION-400M shard patterns"),
    "open_clip": ("media", "the open_clip frozen encoders (real datasets)"),
    "transformers": ("media", "the CLAP and RoBERTa frozen encoders (real datasets)"),
}


class MissingDependency(ConfigError):
    """An optional dependency that this command needs is not installed."""


def install_hint(module: str) -> str:
    extra, purpose = EXTRAS[module]
    how = f"pip install '{PROJECT}[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
    if module == "faiss":
        how += f", or '{PROJECT}[gpu]' for faiss-gpu-cu12 on a CUDA machine"
    return f"{module} is not installed; it is needed for {purpose}: {how}"


class _Missing:
    """Stands in for a module that is not installed; any use raises MissingDependency."""

    def __init__(self, module: str):
        self._module = module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (copy, pickle, inspect) sees a plain object
            raise AttributeError(attr)
        raise MissingDependency(install_hint(self._module))


def optional_import(module: str) -> ModuleType | Any:
    """`module`, or a stand-in that names its extra when used."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return _Missing(module)


def need(module: str) -> None:
    """Raise MissingDependency now unless `module` can be imported (before a lazy `from module import ...`)."""
    if isinstance(optional_import(module), _Missing):
        raise MissingDependency(install_hint(module))
