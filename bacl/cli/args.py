"""What every entry point reads from its arguments: flags among `key=value` overrides, and the
habits of hydra users (`-m`, `key=a,b`) answered with this harness's form instead of a type error."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from bacl.errors import ConfigError

HELP = ("-h", "--help")
MULTIRUN = ("-m", "--multirun")
_OPEN, _CLOSE = "[{(", "]})"


@dataclass
class Command:
    overrides: list[str]  # key=value
    flags: set[str] = field(default_factory=set)
    help: Optional[list[str]] = None  # None: no --help; otherwise the sections asked about (none: the overview)
    paths: list[str] = field(default_factory=list)  # arguments without '=' where the command takes them


def parse(argv: list[str], flags: tuple[str, ...] = (), paths: bool = False) -> Command:
    """Split `argv`; an unknown flag, `-m` or (unless `paths`) a bare word is a ConfigError."""
    if any(a in MULTIRUN for a in argv):
        raise ConfigError("-m/--multirun is hydra's; here a sweep is its own command: "
                          "bacl-sweep ablation=<name> key=[a,b] (a grid axis), and bacl-train key=value is one run")
    cmd = Command([])
    for arg in argv:
        if arg in HELP:
            cmd.help = cmd.help or []
        elif arg.startswith("-"):
            if arg not in flags:
                raise ConfigError(f"unknown option {arg!r}: valid options are {', '.join((*flags, '--help'))}")
            cmd.flags.add(arg)
        elif "=" in arg:
            cmd.overrides.append(arg)
        elif paths:
            cmd.paths.append(arg)
        elif cmd.help is None:
            raise ConfigError(f"expected key=value, got {arg!r} (--help lists the groups and sections)")
        else:
            cmd.paths.append(arg)  # a section name after --help
    if cmd.help is not None:
        cmd.help = [*cmd.paths, *cmd.overrides]
    return cmd


def top_level_commas(value: str) -> list[str]:
    """`value` split at commas outside brackets, braces and quotes: '10,20' -> ['10', '20'], '[1,2]' -> ['[1,2]']."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(value):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    return [*parts, value[start:]]


def hydra_axis(arg: str) -> Optional[str]:
    """`key=a,b` (hydra's sweep syntax) as this harness's axis `key=[a,b]`; None for any other argument."""
    key, _, value = arg.partition("=")
    parts = top_level_commas(value)
    return f"{key}=[{','.join(parts)}]" if len(parts) > 1 else None


def as_axes(overrides: list[str]) -> list[str]:
    """The sweep reads `key=a,b` as the axis `key=[a,b]`."""
    return [hydra_axis(a) or a for a in overrides]


def single_values(overrides: list[str]) -> None:
    """One run takes one value per key: `key=a,b` is refused with the sweep's form."""
    for arg in overrides:
        axis = hydra_axis(arg)
        if axis:
            raise ConfigError(f"{arg}: a single run takes one value per key; to run several, sweep them: "
                              f"bacl-sweep ablation=<name> {axis} (an axis is written [a,b])")
