"""Curriculum α(η): how strongly the sampler avoids (α > 0) or seeks (α < 0) hard negatives.

The paper gives a logistic from α_early > 0 to α_late < 0 with steepness γ and the
default triple (0.3, -0.5, 1.5) but not the formula. We read γ per *reference epoch*
(η runs over `span` = 10 epochs, the paper's schedule) and normalise the logistic so
that α(0) = α_early and α(1) = α_late exactly for any γ (docs/paper-gaps.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from bacl.errors import ConfigError

# (alpha_early, alpha_late, gamma, midpoint); midpoint is a fraction of training.
SHAPES: dict[str, tuple[float, float, float, float]] = {
    "default": (0.3, -0.5, 1.5, 0.5),
    "aggressive": (0.3, -1.0, 4.0, 0.3),  # switches earlier, sharper, to a stronger preference
    "shallow": (0.1, -0.2, 0.5, 0.5),  # nearly linear, weak preference at both ends
}


@dataclass
class ScheduleConfig:
    kind: str = "logistic"  # logistic | constant (constant holds alpha_late: no curriculum)
    shape: str = "default"
    alpha_early: Optional[float] = None  # None: taken from `shape`
    alpha_late: Optional[float] = None
    gamma: Optional[float] = None
    midpoint: Optional[float] = None
    span: float = 10.0  # reference epochs over which gamma is measured


def resolve_schedule(cfg, prefix: str = "method.schedule") -> None:
    """Fill unset values from the named shape and check ranges (mutates cfg)."""
    if cfg.shape not in SHAPES:
        raise ConfigError(f"unknown {prefix}.shape {cfg.shape!r}: valid choices are {', '.join(SHAPES)}")
    if cfg.kind not in ("logistic", "constant"):
        raise ConfigError(f"unknown {prefix}.kind {cfg.kind!r}: valid choices are logistic, constant")
    for name, value in zip(("alpha_early", "alpha_late", "gamma", "midpoint"), SHAPES[cfg.shape]):
        if cfg[name] is None:
            cfg[name] = value
    checks = [
        ("alpha_early", cfg.alpha_early > 0, "> 0 (early training suppresses hard negatives)"),
        ("alpha_late", cfg.alpha_late < 0, "< 0 (late training favours hard negatives)"),
        ("gamma", cfg.gamma > 0, "> 0"),
        ("midpoint", 0 < cfg.midpoint < 1, "in (0, 1), a fraction of training"),
        ("span", cfg.span > 0, "> 0"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{prefix}.{name}={cfg[name]!r} is out of range: expected {expected}")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class Curriculum:
    """α as a function of training progress η ∈ [0, 1]; stateless, so nothing to checkpoint."""

    def __init__(self, kind: str, alpha_early: float, alpha_late: float, gamma: float,
                 midpoint: float, span: float, **_: object):
        self.kind = kind
        self.alpha_early, self.alpha_late = alpha_early, alpha_late
        self.gamma, self.midpoint, self.span = gamma, midpoint, span

    def _rise(self, eta: float) -> float:
        return _sigmoid(self.gamma * self.span * (eta - self.midpoint))

    def alpha(self, eta: float) -> float:
        if self.kind == "constant":
            return self.alpha_late
        eta = min(max(eta, 0.0), 1.0)
        lo, hi = self._rise(0.0), self._rise(1.0)
        return self.alpha_early + (self.alpha_late - self.alpha_early) * (self._rise(eta) - lo) / (hi - lo)
