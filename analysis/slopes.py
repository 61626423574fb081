"""The synthetic-ρ check: how fast test error falls with the training size n.

The theorems bound *excess* risk, error(n) − error(∞), and the asymptote is not known, so
it is fitted with the rate: error(n) = e∞ + c·(n / n̄)^s by nonlinear least squares over
every run (each seed is a point), with n̄ the geometric mean of n for conditioning and
0 ≤ e∞ ≤ min error. The slope s is that of log(excess) against log n; its 95 % interval
is s ± t(0.975, N − 3)·√Var(s) from the fit's covariance. docs/analysis.md says why.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.selection import at_reference

N_TRAIN, RHO = "cfg.dataset.n_train", "cfg.dataset.rho"

# Test error = 1 − metric / full scale; the first is the primary definition (the theorems
# are about ambiguous negatives), the second the retrieval view.
ERRORS: dict[str, tuple[str, float]] = {"ambiguous": ("ambiguous_acc", 1.0), "r1": ("i2t_R@1", 100.0)}
PRIMARY = next(iter(ERRORS))  # what the claims judge


def error_label(error: str) -> str:
    metric, full = ERRORS[error]
    return f"1 − {metric}" + (f" / {full:g}" if full != 1 else "")


@dataclass(frozen=True)
class PowerLawFit:
    asymptote: float  # e∞
    scale: float  # c: excess error at n = reference
    slope: float  # s
    ci: tuple[float, float]  # 95 % interval of s
    reference: float  # n̄
    points: int

    def excess(self, n: np.ndarray | float) -> np.ndarray | float:
        return self.scale * (np.asarray(n, float) / self.reference) ** self.slope


def fit_power_law(n: np.ndarray, error: np.ndarray, level: float = 0.95) -> PowerLawFit:
    """Fit error = e∞ + c·(n/n̄)^s; ValueError with fewer than 4 points or 3 distinct n."""
    n, error = np.asarray(n, float), np.asarray(error, float)
    if len(n) < 4 or len(np.unique(n)) < 3:
        raise ValueError(f"need >= 4 points at >= 3 distinct n, got {len(n)} at {len(np.unique(n))}")
    reference = float(np.exp(np.log(n).mean()))
    floor = float(error.min())
    start = [0.5 * floor, max(float(error.mean()) - 0.5 * floor, 1e-6), -0.75]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)  # a singular covariance shows as an infinite CI
        params, cov = optimize.curve_fit(lambda x, e, c, s: e + c * x ** s, n / reference, error, p0=start,
                                         bounds=([0.0, 0.0, -5.0], [max(floor, 1e-12), np.inf, 0.0]))
    half = stats.t.ppf(0.5 + level / 2, len(n) - 3) * math.sqrt(cov[2, 2]) if np.isfinite(cov[2, 2]) else math.inf
    return PowerLawFit(float(params[0]), float(params[1]), float(params[2]),
                       (float(params[2] - half), float(params[2] + half)), reference, len(n))


def rho_points(runs: pd.DataFrame, error: str) -> pd.DataFrame:
    """Finished runs of a ρ × n grid (other axes at their defaults) with their test error;
    empty unless n takes at least three values."""
    metric, full = ERRORS[error]
    if N_TRAIN not in runs or RHO not in runs or metric not in runs:
        return runs.iloc[0:0].assign(error=[])
    ok = at_reference(runs[runs["status"] == "ok"], RHO, N_TRAIN)
    ok = ok.assign(error=1 - ok[metric] / full).dropna(subset=["error"])
    return ok if ok[N_TRAIN].nunique() >= 3 else ok.iloc[0:0]


def rho_fits(points: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, ρ) of `rho_points`: the fit, or why there is none."""
    rows = []
    for (method, rho), group in ([] if points.empty else points.groupby(["cfg.method.name", RHO])):
        row = {"method": method, "rho": rho, "fit": None, "problem": None}
        try:
            row["fit"] = fit_power_law(group[N_TRAIN].to_numpy(), group["error"].to_numpy())
        except (ValueError, RuntimeError) as err:  # too few points, or no convergence
            row["problem"] = str(err)
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "rho", "fit", "problem"])
