"""Each of the paper's claims against our runs, judged on paired seeds (analysis/paired.py).

"A beats B" claims are declared in analysis/claims.yaml: two arms (a method plus the config
keys that single it out) and the score to judge on. Each is the per-seed difference A − B
over the seeds both arms ran, with its 95 % t interval, n and minimum detectable effect;
supported only when the interval lies above 0, not supported when below, inconclusive
otherwise, too few seeds below five pairs. Claims about one arm's trajectory (the
boundary score rises, more siblings are sampled, the margin contracts) take the same
interval over per-run changes. ρ-check slopes are judged by their fitted 95 % intervals
(slopes.py). A claim no run can test is "not run", never dropped. The paper's magnitudes
are printed beside ours, not judged: our data and scale differ from the paper's.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.display import PAPER, primary_metric, scaled, where
from analysis.paired import AGAINST, INCONCLUSIVE, SUPPORTED, Paired, interval, paired
from analysis.selection import at_reference, by_dataset, same_value
from analysis.slopes import PowerLawFit
from analysis.tables import number

METHOD, SEED = "cfg.method.name", "cfg.seed"
BACL, BASE = PAPER["methods"]["CLIP+BACL"], PAPER["methods"]["CLIP"]  # our names of the paper's two
NOT_RUN = "not run"
COMPARISONS: list[dict] = yaml.safe_load((Path(__file__).with_name("claims.yaml")).read_text())["comparisons"]

# Which score each kind of claim is judged on, and why (the report prints both).
WHY = {
    "dual": "dual-encoder ranking, the paper's retrieval protocol: the score the contrastive negatives train",
    "rerank": "the dual-encoder top-k re-ranked by the match head: CLA trains the cross-attention, "
              "which only this score uses",
}


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str  # the paper's number and where it comes from
    ours: str  # what the two arms scored
    difference: str
    ci: str  # 95 % interval of the difference
    n: str
    mde: str  # minimum detectable effect at that n
    verdict: str


def _judged(claim: str, paper: str, ours: str, result: Paired, digits: int = 1) -> Claim:
    ci = f"[{number(result.low, digits, signed=True)}, {number(result.high, digits, signed=True)}]"
    return Claim(claim, paper, ours, number(result.difference, digits, signed=True), ci, str(result.n),
                 number(result.mde, digits), result.verdict)


def _not_run(claim: str, paper: str, why: str) -> Claim:
    return Claim(claim, paper, why, "–", "–", "0", "–", NOT_RUN)


def metric_notes() -> str:
    """The report's paragraph on which score the claims are judged on."""
    return ("Each claim is judged on one score, named in the claim. Dual-encoder metrics (`i2t_R@1`, …): "
            f"{WHY['dual']}. Re-ranked metrics (`rerank_i2t_R@1`, …): {WHY['rerank']}; claims about CLA use "
            "them where the runs have them. AEL compares models whose cross-attention the same match (ITM) "
            "objective trained, with and without CLA. Differences are paired by seed (both arms share model "
            "init, batch order and caption draws); the interval is a 95 % t interval, MDE the true difference "
            "n seeds detect with 80 % power.")


def claim_metric(dataset: str, runs: pd.DataFrame, kind: str) -> str:
    """The metric a comparison of `kind` (dual | rerank | a metric name) is judged on for this dataset."""
    if kind not in WHY:
        return kind
    metric = primary_metric(dataset)
    reranked = f"rerank_{metric}"
    if kind == "rerank" and reranked in runs and runs[reranked].notna().any():
        return reranked
    return metric


def arm(runs: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Finished runs of `spec`'s method at its defaults except the keys `spec` names, which must match."""
    free = [f"cfg.{key}" for key in spec if key != "method"]
    if any(col not in runs for col in free):
        return runs.iloc[:0]
    chosen = at_reference(runs[runs[METHOD] == spec["method"]], *free)
    for key, value in spec.items():
        if key != "method":
            chosen = chosen[chosen[f"cfg.{key}"].map(lambda v, want=value: same_value(v, want))]
    return chosen[chosen["status"] == "ok"] if "status" in chosen else chosen.iloc[:0]


def by_seed(runs: pd.DataFrame, metric: str) -> pd.Series:
    """The display-scaled metric per seed (mean over any repeats of a seed)."""
    if metric not in runs or runs.empty:
        return pd.Series(dtype=float)
    return scaled(runs.groupby(SEED)[metric].mean(), metric).dropna()


def _arm_name(spec: dict) -> str:
    extra = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in spec.items() if k != "method")
    return f"{spec['method']} ({extra})" if extra else spec["method"]


def comparison_claims(runs: pd.DataFrame) -> list[Claim]:
    """Every comparison of claims.yaml on every dataset whose runs have both arms."""
    out = []
    for spec in COMPARISONS:
        found = []
        for dataset, mine in by_dataset(runs):
            metric = claim_metric(dataset, mine, spec["metric"])
            a, b = by_seed(arm(mine, spec["a"]), metric), by_seed(arm(mine, spec["b"]), metric)
            if a.empty or b.empty:
                continue
            result = paired(a, b)
            ours = (f"{_arm_name(spec['a'])} {number(a.mean())} (n={len(a)}) vs "
                    f"{_arm_name(spec['b'])} {number(b.mean())} (n={len(b)})")
            if spec["a"]["method"] == BACL and spec["b"] == {"method": BASE} and b.mean():
                ours += f"; {number(100 * (a.mean() / b.mean() - 1), 0, signed=True)} % relative"
            found.append(_judged(f"{spec['claim']} on {metric} ({where(dataset)})", spec["paper"], ours, result))
        out += found or [_not_run(spec["claim"], spec["paper"],
                                  f"no runs of both {_arm_name(spec['a'])} and {_arm_name(spec['b'])}")]
    return out


def _per_run_change(curves: pd.DataFrame, column: str,
                    change: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, list[float]]:
    """Per method, change(values, progress) of one curve, one value per run."""
    if column not in curves:
        return {}
    data = curves.dropna(subset=[column]).sort_values("progress")
    changes: dict[str, list[float]] = defaultdict(list)
    for (method, _), run in data.groupby(["method", "run"]):
        value = change(run[column].to_numpy(), run["progress"].to_numpy())
        if math.isfinite(value):
            changes[method].append(value)
    return changes


def _trajectory(curves: pd.DataFrame, column: str, change: Callable[[np.ndarray, np.ndarray], float],
                claim: str, paper: str, what: str) -> list[Claim]:
    changes = _per_run_change(curves, column, change).get(BACL, [])
    if not changes:
        return [_not_run(claim, paper, f"no {BACL} run logged {column}")]
    result = interval(changes)
    return [_judged(claim, paper, f"{what} per {BACL} run, mean over {len(changes)} runs", result, 3)]


def boundary_score_rises(curves: pd.DataFrame) -> list[Claim]:
    paper = ("easy-to-hard curriculum: α > 0 early suppresses hard negatives, α < 0 late favours them "
             "(paper-notes §1.3 [Q-S2,S4]); the boundary-score-vs-epoch figure itself was not found (§5)")
    return _trajectory(curves, "train/boundary_score",
                       lambda bs, eta: bs[eta > 0.5].mean() - bs[eta <= 0.5].mean()
                       if (eta > 0.5).any() and (eta <= 0.5).any() else math.nan,
                       "BNS: boundary score of sampled negatives rises", paper,
                       "mean BS over η > 0.5 − mean over η ≤ 0.5")


def siblings_rise(curves: pd.DataFrame) -> list[Claim]:
    """The paper's first sanity check done with ground truth: BNS samples more true ambiguous negatives over time."""
    paper = ("BNS moves from easy to the most confusing negatives (paper-notes §1.3 [Q-S4]); on the synthetic "
             "world a true ambiguous negative differs from its anchor in exactly one attribute")
    return _trajectory(curves, "train/sibling_fraction", lambda f, eta: f[-1] - f[0] if len(f) > 1 else math.nan,
                       "BNS: the share of sibling negatives rises over training", paper,
                       "sibling share at the last epoch − at the first")


def margin_contracts(curves: pd.DataFrame) -> list[Claim]:
    paper = ("the alignment margin contracts at rate O(exp(−Θ(η²))) under the curriculum "
             "(paper-notes §6, Prop. 4.1 [Q-S2])")
    return _trajectory(curves, "eval/margin", lambda m, eta: abs(m[0]) - abs(m[-1]) if len(m) > 1 else math.nan,
                       "margin contracts over η", paper, "|margin| at the first evaluation − at the last")


def _slope_claim(claim: str, paper: str, fit: PowerLawFit | None, verdict: str, ours: str) -> Claim:
    if fit is None:
        return _not_run(claim, paper, ours or "no fit")
    return Claim(claim, paper, ours, f"{fit.slope:+.2f}", f"[{fit.ci[0]:+.2f}, {fit.ci[1]:+.2f}]",
                 str(fit.points), "–", verdict)


def _covers(fit: PowerLawFit, slope: float) -> str:
    """Supported when the interval covers the predicted slope and excludes 0 (an interval that also covers 0
    shows no decrease at all); not supported when it excludes the prediction."""
    if not fit.ci[0] <= slope <= fit.ci[1]:
        return AGAINST
    return SUPPORTED if fit.ci[1] < 0 else INCONCLUSIVE


def rho_slopes(fits: pd.DataFrame) -> list[Claim]:
    """`fits`: slopes.rho_fits of the primary error definition, one row per (method, ρ)."""
    spec = PAPER["theory"]
    bacl, uniform = spec["bacl"], spec["uniform"]
    paper_b = f"slope {bacl['slope']:+g} (Õ(1/n)) for BACL ({spec['source']})"
    paper_u = f"shallower than BACL's, ≈ {uniform['slope']:+g} for uniform sampling ({spec['source']}; {spec['note']})"
    by = {(r.method, r.rho): r.fit for r in fits.itertuples()} if not fits.empty else {}
    rhos = sorted({rho for m, rho in by if m == bacl["method"]})
    if not rhos:
        why = f"no ρ × n grid with {bacl['method']} runs"
        return [_not_run("ρ-check: BACL's excess-risk slope ≈ −1", paper_b, why),
                _not_run("ρ-check: uniform sampling's slope is shallower", paper_u, why)]
    out = []
    for rho in rhos:
        fit = by[(bacl["method"], rho)]
        out.append(_slope_claim(f"ρ-check: {bacl['method']} slope ≈ {bacl['slope']:+g} at ρ={rho:g} "
                                "(95 % CI covers it and excludes 0)", paper_b, fit,
                                _covers(fit, bacl["slope"]) if fit else NOT_RUN, "fitted slope of excess risk vs n"))
    for rho in rhos:
        fb, fu = by.get((bacl["method"], rho)), by.get((uniform["method"], rho))
        claim = f"ρ-check: {uniform['method']} slope shallower than {bacl['method']}'s at ρ={rho:g} (CIs apart)"
        if fb is None or fu is None:
            out.append(_not_run(claim, paper_u, f"no {uniform['method']} or {bacl['method']} fit"))
            continue
        apart = fu.ci[0] > fb.ci[1] or fb.ci[0] > fu.ci[1]
        verdict = (SUPPORTED if fu.slope > fb.slope else AGAINST) if apart else INCONCLUSIVE
        ours = f"{bacl['method']} {fb.slope:+.2f} [{fb.ci[0]:+.2f}, {fb.ci[1]:+.2f}]; difference: uniform − BACL"
        out.append(Claim(claim, paper_u, ours, f"{fu.slope - fb.slope:+.2f}",
                         f"{uniform['method']} [{fu.ci[0]:+.2f}, {fu.ci[1]:+.2f}]", str(fu.points), "–", verdict))
    return out


def overhead(main: dict[str, pd.DataFrame]) -> list[Claim]:
    """BACL's wall time over the base's, per seed, against the paper's "+8 %" read as "at most +8 %"."""
    spec = PAPER["overhead"]
    base = spec["base"]
    paper = f"+{spec['time_pct']} % training time, +{spec['memory_gb']} GB GPU memory ({spec['source']})"
    out = []
    for dataset, runs in main.items():
        a, b = by_seed(arm(runs, {"method": BACL}), "wall_time_s"), by_seed(arm(runs, {"method": base}), "wall_time_s")
        common = a.index.intersection(b.index)
        if len(common):
            result = interval((100 * (a[common] / b[common] - 1) - spec["time_pct"]).tolist())
            claim = f"BACL's time overhead over {base} ≤ +{spec['time_pct']} % ({where(dataset)})"
            shifted = Paired(-result.difference, -result.high, -result.low, result.n, result.mde)  # +8 − overhead
            out.append(_judged(claim, paper, f"wall time +{number(result.difference + spec['time_pct'], 0)} % "
                               "(difference: +8 − overhead; CPU runs sharing cores; memory not recorded)",
                               shifted, 0))
    return out or [_not_run(f"BACL's overhead over {base}", paper, f"no {BACL} and {base} runs")]


def evaluate_claims(runs: pd.DataFrame, curves: pd.DataFrame, fits: pd.DataFrame) -> list[Claim]:
    main = {d: at_reference(r) for d, r in by_dataset(runs)}
    main_dirs = set(pd.concat(main.values()).get("path", pd.Series(dtype=str)).dropna()) if main else set()
    main_curves = curves[curves["run"].isin(main_dirs)]
    return [*comparison_claims(runs), *boundary_score_rises(main_curves), *siblings_rise(main_curves),
            *margin_contracts(main_curves), *rho_slopes(fits), *overhead(main)]
