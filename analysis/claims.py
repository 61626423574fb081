"""Each of the paper's claims against our runs: supported, within noise, not supported, or not run.

A claim "A beats B" holds when mean(A) − mean(B) exceeds the larger of the two seed
standard deviations; a difference no larger than that is "within noise"; a difference
beyond it the other way is "not supported". A claim made of several comparisons is
"partly" supported when some hold and none goes against it. A claim no run can test is
"not run", never dropped. Magnitudes (the paper's +7.3, +32 %) are printed beside ours,
not judged, since our data and scale differ from the paper's; the one exception is the
time overhead, judged against +8 % with the same noise rule. ρ-check slopes are judged by
their 95 % intervals instead (slopes.py).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from analysis.display import PAPER, primary_metric, scaled, where
from analysis.selection import at_reference, by_dataset
from analysis.slopes import PowerLawFit
from analysis.tables import Stat, number, seed_stat

METHOD = "cfg.method.name"
BACL, BASE = PAPER["methods"]["CLIP+BACL"], PAPER["methods"]["CLIP"]  # our names of the paper's two
SUPPORTED, NOISE, AGAINST, NOT_RUN = "supported", "within noise", "not supported", "not run"


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str  # the paper's number and where it comes from
    ours: str
    verdict: str


def verdict(diff: float, noise: float) -> str:
    """Verdict on "diff > 0" given the seed noise (a NaN std, one seed, counts as no noise)."""
    if not math.isfinite(diff):
        return NOT_RUN
    noise = 0.0 if not math.isfinite(noise) else noise
    return NOISE if abs(diff) <= noise else SUPPORTED if diff > 0 else AGAINST


def combine(verdicts: list[str]) -> str:
    """Several comparisons of one claim: one against it sinks it, all must hold for it to hold."""
    if AGAINST in verdicts:
        return AGAINST
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return "partly" if SUPPORTED in verdicts else NOISE


def _noise(*stats: Stat) -> float:
    return max((s.std for s in stats if math.isfinite(s.std)), default=math.nan)


def _stat_text(name: str, s: Stat, digits: int = 1) -> str:
    spread = f" ± {number(s.std, digits)}" if math.isfinite(s.std) else ""
    return f"{name} {number(s.mean, digits)}{spread} (n={s.n})"


def _compare(a_name: str, a: Stat, b_name: str, b: Stat, digits: int = 1) -> tuple[str, str]:
    diff = a.mean - b.mean
    text = (f"{_stat_text(a_name, a, digits)} vs {_stat_text(b_name, b, digits)}: "
            f"{number(diff, digits, signed=True)}")
    return text, verdict(diff, _noise(a, b))


def method_stats(runs: pd.DataFrame, metric: str) -> dict[str, Stat]:
    """Per method, mean ± std over finished seeds of a (display-scaled) metric."""
    ok = runs[runs["status"] == "ok"]
    if metric not in ok:
        return {}
    return {m: seed_stat(scaled(g[metric], metric)) for m, g in ok.groupby(METHOD) if g[metric].notna().any()}


# Which score each kind of claim is judged on, and why (the report prints both).
WHY = {
    "dual": "dual-encoder ranking, the paper's retrieval protocol: the score the contrastive negatives train",
    "rerank": "the dual-encoder top-k re-ranked by the match head: CLA trains the cross-attention, "
              "which only this score uses",
}


def claim_metric(dataset: str, runs: pd.DataFrame, kind: str) -> str:
    """The dataset's primary metric, re-ranked for `kind="rerank"` when the runs have it."""
    metric = primary_metric(dataset)
    reranked = f"rerank_{metric}"
    if kind == "rerank" and reranked in runs and runs[reranked].notna().any():
        return reranked
    return metric


def metric_notes() -> str:
    """The report's paragraph on which score the claims are judged on."""
    return ("Each claim is judged on one score. Dual-encoder metrics (`i2t_R@1`, …): "
            f"{WHY['dual']}. Re-ranked metrics (`rerank_i2t_R@1`, …): {WHY['rerank']}; claims about CLA use "
            "them where the runs have them. AEL compares models whose cross-attention the same match (ITM) "
            "objective trained, with and without CLA.")


def _not_run(claim: str, paper: str, why: str) -> Claim:
    return Claim(claim, paper, why, NOT_RUN)


def bacl_over_clip(main: dict[str, pd.DataFrame]) -> list[Claim]:
    gains = PAPER["relative_gain"]
    paper = "; ".join(f"{d}: +{v} % relative R@1" for d, v in gains.items() if d != "source") \
        + f" ({gains['source']})"
    out = []
    for dataset, runs in main.items():
        metric = primary_metric(dataset)
        stats = method_stats(runs, metric)
        if {BACL, BASE} <= stats.keys():
            text, v = _compare(BACL, stats[BACL], BASE, stats[BASE])
            rel = 100 * (stats[BACL].mean / stats[BASE].mean - 1) if stats[BASE].mean else math.nan
            out.append(Claim(f"BACL > CLIP on {metric} ({where(dataset)})", paper,
                             f"{text} points, {number(rel, 0, signed=True)} % relative", v))
    return out or [_not_run("BACL > CLIP on R@1", paper, f"no dataset has both {BACL} and {BASE} runs")]


def components_help(main: dict[str, pd.DataFrame]) -> list[Claim]:
    """The paper's "X alone > CLIP", each on the score its component trains, plus CLA's one-change control."""
    spec = PAPER["components"]
    base = spec["base"]
    out = []
    comparisons = [(name, member, base, spec["metric"][name]) for name, member in spec["alone"].items()]
    comparisons.append(("CLA on top of BNS", spec["full"], spec["cla_control"], "rerank"))
    for name, member, against, kind in comparisons:
        paper = ", ".join(f"{d} +{deltas[member]}" for d, deltas in spec["deltas"].items() if member in deltas)
        paper = (paper + f" R@1 over {against}" if paper else "the full model beats its parts") + f" ({spec['source']})"
        found = []
        for dataset, runs in main.items():
            metric = claim_metric(dataset, runs, kind)
            stats = method_stats(runs, metric)
            if {member, against} <= stats.keys():
                text, v = _compare(member, stats[member], against, stats[against])
                found.append(Claim(f"{name} helps: {member} > {against} on {metric} ({where(dataset)})",
                                   paper, text, v))
        out += found or [_not_run(f"{name} helps ({member} > {against})", paper, f"no {member} and {against} runs")]
    return out


def full_beats_parts(main: dict[str, pd.DataFrame]) -> list[Claim]:
    spec = PAPER["components"]
    full = spec["full"]
    paper = f"'combined effect significantly exceeds the sum of individual contributions' ({spec['source']})"
    out = []
    for dataset, runs in main.items():
        metric = primary_metric(dataset)
        stats = method_stats(runs, metric)
        parts = [p for p in spec["alone"].values() if p in stats]
        if full in stats and parts:
            compared = [_compare(full, stats[full], p, stats[p]) for p in parts]
            out.append(Claim(f"full BACL > each component on {metric} ({where(dataset)})", paper,
                             "; ".join(t for t, _ in compared), combine([v for _, v in compared])))
    return out or [_not_run("full BACL > each component", paper, f"no {full} and component runs")]


def schedule_order(slices: dict[str, dict[str, pd.DataFrame]]) -> list[Claim]:
    """`slices`: dataset -> axis -> runs (selection.axis_slices)."""
    spec = PAPER["schedule"]
    order = spec["order"]
    paper = " > ".join(order) + f" ({spec['source']})"
    out = []
    for dataset, axes in slices.items():
        runs = axes.get(spec["axis"])
        if runs is None:
            continue
        metric = primary_metric(dataset)
        ok = runs[runs["status"] == "ok"]
        stats = {s: seed_stat(scaled(g[metric], metric)) for s, g in ok.groupby(spec["axis"])}
        pairs = [(a, b) for a, b in pairwise(order) if a in stats and b in stats]
        if pairs:
            compared = [_compare(a, stats[a], b, stats[b]) for a, b in pairs]
            out.append(Claim(f"schedule {' > '.join(order)} on {metric} ({where(dataset)})", paper,
                             "; ".join(t for t, _ in compared), combine([v for _, v in compared])))
    return out or [_not_run("schedule " + " > ".join(order), paper, f"no runs vary {spec['axis']}")]


def ael_gain(main: dict[str, pd.DataFrame]) -> list[Claim]:
    """AEL of BACL against a base whose cross-attention trained under the same budget (ITM), without CLA."""
    spec = PAPER["ael"]
    metric, base = spec["metric"], spec["base"]
    paper = f"+{spec['delta']} points over the base ({spec['source']}); our base trains the same attention without CLA"
    out = []
    for dataset, runs in main.items():
        stats = method_stats(runs, metric)
        if {BACL, base} <= stats.keys():
            text, v = _compare(BACL, stats[BACL], base, stats[base])
            out.append(Claim(f"AEL: {BACL} > {base} on {metric} ({where(dataset)})", paper, f"{text} points", v))
    return out or [_not_run(f"AEL: {BACL} > {base}", paper, f"no {BACL} and {base} runs with {metric}")]


def _per_run_change(curves: pd.DataFrame, column: str,
                    change: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, Stat]:
    """Per method, mean ± std over runs of change(values, progress) of one curve."""
    if column not in curves:
        return {}
    data = curves.dropna(subset=[column]).sort_values("progress")
    changes: dict[str, list[float]] = defaultdict(list)
    for (method, _), run in data.groupby(["method", "run"]):
        changes[method].append(change(run[column].to_numpy(), run["progress"].to_numpy()))
    return {m: seed_stat(pd.Series(v)) for m, v in changes.items()}


def boundary_score_rises(curves: pd.DataFrame) -> list[Claim]:
    paper = ("easy-to-hard curriculum: α > 0 early suppresses hard negatives, α < 0 late favours them "
             "(paper-notes §1.3 [Q-S2,S4]); the boundary-score-vs-epoch figure itself was not found (§5)")
    stats = _per_run_change(curves, "train/boundary_score", lambda bs, eta: bs[eta > 0.5].mean() - bs[eta <= 0.5].mean()
                            if (eta > 0.5).any() and (eta <= 0.5).any() else math.nan)
    if BACL not in stats or stats[BACL].n == 0:
        return [_not_run("BNS: boundary score of sampled negatives rises from easy to hard", paper,
                         f"no {BACL} run logged train/boundary_score in both halves of training")]
    s = stats[BACL]
    return [Claim(f"BNS: boundary score of {BACL}'s sampled negatives rises (mean over η > 0.5 − mean over η ≤ 0.5)",
                  paper, f"{_stat_text('change', s, 3)}", verdict(s.mean, s.std))]


def siblings_rise(curves: pd.DataFrame) -> list[Claim]:
    """The paper's first sanity check done with ground truth: BNS samples more true ambiguous negatives over time."""
    paper = ("BNS moves from easy to the most confusing negatives (paper-notes §1.3 [Q-S4]); on the synthetic "
             "world a true ambiguous negative differs from its anchor in exactly one attribute")
    stats = _per_run_change(curves, "train/sibling_fraction", lambda f, eta: f[-1] - f[0] if len(f) > 1 else math.nan)
    if BACL not in stats or stats[BACL].n == 0:
        return [_not_run("BNS: the share of sibling negatives rises over training", paper,
                         f"no {BACL} run logged train/sibling_fraction (synthetic data only)")]
    s = stats[BACL]
    return [Claim(f"BNS: share of {BACL}'s sampled negatives that are siblings, last epoch − first", paper,
                  _stat_text("change", s, 3), verdict(s.mean, s.std))]


def margin_contracts(curves: pd.DataFrame) -> list[Claim]:
    paper = ("the alignment margin contracts at rate O(exp(−Θ(η²))) under the curriculum "
             "(paper-notes §6, Prop. 4.1 [Q-S2])")
    stats = _per_run_change(curves, "eval/margin", lambda m, eta: abs(m[0]) - abs(m[-1]))
    if BACL not in stats:
        return [_not_run("margin contracts over η", paper, f"no {BACL} run logged eval/margin")]
    s = stats[BACL]
    base = stats.get(BASE)
    extra = f"; {BASE} {_stat_text('shrink', base, 3)}" if base else ""
    return [Claim(f"margin contracts over η: |margin| at the first evaluation − at the last ({BACL})", paper,
                  f"{_stat_text('shrink', s, 3)}{extra}", verdict(s.mean, s.std))]


def _slope_text(fit: PowerLawFit | None) -> str:
    return "no fit" if fit is None else f"{fit.slope:+.2f} [{fit.ci[0]:+.2f}, {fit.ci[1]:+.2f}]"


def _covers(fit: PowerLawFit, slope: float) -> str:
    """An interval so wide that it also covers 0 (no decrease at all) supports nothing."""
    if not fit.ci[0] <= slope <= fit.ci[1]:
        return AGAINST
    return SUPPORTED if fit.ci[1] < 0 else NOISE


def rho_slopes(fits: pd.DataFrame) -> list[Claim]:
    """`fits`: slopes.rho_fits of the primary error definition."""
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
    covers = []
    for rho in rhos:
        fit = by[(bacl["method"], rho)]
        covers.append(NOT_RUN if fit is None else _covers(fit, bacl["slope"]))
    out = [Claim(f"ρ-check: {bacl['method']} slope ≈ {bacl['slope']:+g} (95 % CI covers it and excludes 0)", paper_b,
                 "; ".join(f"ρ={rho:g}: {_slope_text(by[(bacl['method'], rho)])}" for rho in rhos), combine(covers))]
    shallower, texts = [], []
    for rho in rhos:
        fb, fu = by.get((bacl["method"], rho)), by.get((uniform["method"], rho))
        if fb is None or fu is None:
            continue
        texts.append(f"ρ={rho:g}: {uniform['method']} {_slope_text(fu)} vs {bacl['method']} {_slope_text(fb)}")
        apart = fu.ci[0] > fb.ci[1] or fb.ci[0] > fu.ci[1]
        shallower.append((SUPPORTED if fu.slope > fb.slope else AGAINST) if apart else NOISE)
    out.append(Claim(f"ρ-check: {uniform['method']} slope shallower than {bacl['method']}'s (CIs apart)", paper_u,
                     "; ".join(texts), combine(shallower)) if shallower
               else _not_run("ρ-check: uniform sampling's slope is shallower", paper_u, f"no {uniform['method']} fits"))
    return out


def overhead(main: dict[str, pd.DataFrame]) -> list[Claim]:
    spec = PAPER["overhead"]
    base = spec["base"]
    paper = f"+{spec['time_pct']} % training time, +{spec['memory_gb']} GB GPU memory ({spec['source']})"
    out = []
    for dataset, runs in main.items():
        stats = method_stats(runs, "wall_time_s")
        if {BACL, base} <= stats.keys():
            b, c = stats[BACL], stats[base]
            pct = 100 * (b.mean / c.mean - 1)
            noise = 100 * _noise(b, c) / c.mean
            out.append(Claim(f"BACL's time overhead over {base} ≈ +{spec['time_pct']} % ({where(dataset)})",
                             paper, f"wall time {number(pct, 0, signed=True)} % (noise ± {number(noise, 0)} %, "
                             "CPU runs sharing cores); memory not recorded",
                             NOISE if abs(pct - spec["time_pct"]) <= (noise if math.isfinite(noise) else 0)
                             else AGAINST))
    return out or [_not_run(f"BACL's overhead over {base}", paper, f"no {BACL} and {base} runs")]


def evaluate_claims(runs: pd.DataFrame, curves: pd.DataFrame, slices: dict[str, dict[str, pd.DataFrame]],
                    fits: pd.DataFrame) -> list[Claim]:
    main = {d: at_reference(r) for d, r in by_dataset(runs)}
    main_dirs = set(pd.concat(main.values()).get("path", pd.Series(dtype=str)).dropna()) if main else set()
    main_curves = curves[curves["run"].isin(main_dirs)]
    return [*bacl_over_clip(main), *components_help(main), *full_beats_parts(main), *schedule_order(slices),
            *ael_gain(main), *boundary_score_rises(main_curves), *siblings_rise(main_curves),
            *margin_contracts(main_curves),
            *rho_slopes(fits), *overhead(main)]
