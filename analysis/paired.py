"""Paired comparisons over seeds: the difference, its 95 % interval, n and the minimum detectable effect.

Two arms run at the same seed share model init, batch order and caption draws (common
random numbers, bacl/rng.py), so the seed-to-seed variation that both arms see cancels
in their per-seed difference. A claim "A beats B" is judged on those differences with a
t interval:
- **supported** when the 95 % interval lies above 0,
- **not supported** when it lies below 0,
- **inconclusive** otherwise, printed with the minimum detectable effect (MDE: the true
  difference this many seeds would detect with 80 % power at the 5 % level), so a reader
  knows how large an effect "inconclusive" rules out;
- **too few seeds** below `MIN_SEEDS` pairs, whatever the numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

MIN_SEEDS = 5
LEVEL, POWER = 0.95, 0.80
SUPPORTED, AGAINST, INCONCLUSIVE, TOO_FEW = "supported", "not supported", "inconclusive", "too few seeds"


@dataclass(frozen=True)
class Paired:
    difference: float  # mean over pairs of (A − B)
    low: float  # the 95 % t interval of that mean
    high: float
    n: int  # pairs
    mde: float  # minimum detectable effect at this n

    @property
    def verdict(self) -> str:
        if self.n < MIN_SEEDS or not math.isfinite(self.low):
            return TOO_FEW
        return SUPPORTED if self.low > 0 else AGAINST if self.high < 0 else INCONCLUSIVE


def interval(differences: pd.Series | list[float]) -> Paired:
    """The mean of per-pair differences with its t interval and MDE (NaN bounds below two pairs)."""
    d = pd.Series(differences, dtype=float).dropna()
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Paired(mean, math.nan, math.nan, n, math.nan)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    t_crit = stats.t.ppf(0.5 + LEVEL / 2, n - 1)
    mde = (t_crit + stats.t.ppf(POWER, n - 1)) * se
    return Paired(mean, mean - t_crit * se, mean + t_crit * se, n, float(mde))


def paired(a: pd.Series, b: pd.Series) -> Paired:
    """A − B over the seeds both have; each Series is indexed by seed (one value per seed)."""
    common = a.dropna().index.intersection(b.dropna().index)
    return interval((a[common] - b[common]).tolist())
