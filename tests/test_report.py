"""The report on hand-written result files: tables equal the aggregated numbers, claims hold or
fail as the numbers say, missing runs are counted, new names need no code change."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.paired import AGAINST, INCONCLUSIVE, SUPPORTED, TOO_FEW, interval, paired
from analysis.report import write_report

BS_RISES = [(0.25, {"boundary_score": -0.8}, {"margin": -0.10}), (0.5, {"boundary_score": -0.6}, {"margin": -0.05}),
            (0.75, {"boundary_score": -0.2}, {"margin": 0.00}), (1.0, {"boundary_score": -0.1}, {"margin": 0.01})]


def nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def write_run(root: Path, name: str, method: str, seed: int, metrics: dict | None, dataset: str = "synthetic",
              status: str = "ok", curves=(), **config) -> None:
    run = root / name
    run.mkdir(parents=True)
    cfg = nested({"seed": seed, "method.name": method, "dataset.name": dataset, **config})
    record = {"run_id": name, "status": status, "config": cfg, "wall_time_s": 10.0}
    if metrics is not None:
        record["metrics"] = metrics
    (run / "result.json").write_text(json.dumps(record))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"progress": eta, "train": train, "eval": evaluation}) + "\n" for eta, train, evaluation in curves))


def scores(r1: float, amb: float = 0.8, ael: float = 0.3) -> dict:
    return {"i2t_R@1": r1, "t2i_R@1": 30.0, "ambiguous_acc": amb, "ael_text": ael}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    k20 = {"pool.k": 20}
    for seed, r1 in enumerate([40.0, 42.0, 44.0]):  # mean 42, std 2
        write_run(root, f"clip{seed}", "clip", seed, scores(r1), **k20)
    write_run(root, "clip3", "clip", 3, None, status="failed", **k20)
    for seed, r1 in enumerate([50.0, 52.0, 54.0]):  # mean 52, std 2
        write_run(root, f"bacl{seed}", "bacl", seed, scores(r1, amb=0.9, ael=0.45), curves=BS_RISES, **k20)
    (root / "bacl3").mkdir()  # started, never finished
    (root / "bacl3" / "config.yaml").write_text("seed: 3\nmethod: {name: bacl}\ndataset: {name: synthetic}\n"
                                                "pool: {k: 20}\n")
    for seed, r1 in enumerate([60.0, 62.0]):  # another grid point: not in the main table
        write_run(root, f"baclk10_{seed}", "bacl", seed, scores(r1), **{"pool.k": 10})
    for seed, r1 in enumerate([40.0, 50.0, 60.0]):  # mean 50, std 10
        write_run(root, f"bns{seed}", "bns_only", seed, scores(r1), **k20)
    for seed, r1 in enumerate([30.0, 31.0, 32.0]):
        write_run(root, f"cla{seed}", "cla_only", seed, scores(r1), **k20)
    for seed, r1 in enumerate([10.0, 20.0]):
        write_run(root, f"new{seed}", "brand_new_method", seed, scores(r1), **k20)
    write_run(root, "mydata_clip", "clip", 0, {"i2t_R@1": 5.0}, dataset="brand_new_data")
    write_run(root, "mydata_bacl", "bacl", 0, {"i2t_R@1": 3.0}, dataset="brand_new_data")
    write_run(root, "vast_clip", "clip", 0, {"cls_accuracy": 70.0, "cls_f1": 60.0, "cls_recall": 50.0},
              dataset="vast27m")
    jobs = [p.name for p in root.iterdir()] + ["ghost0000000"]
    (root / "jobs.json").write_text(json.dumps({j: {"job_id": "1"} for j in jobs}))
    write_report(root)
    return root


def claim_row(report: str, claim: str) -> str:
    rows = [line for line in report.splitlines() if line.startswith(f"| {claim} |")]
    assert len(rows) == 1, (claim, rows)
    return rows[0]


def test_main_table_equals_the_aggregated_numbers(sweep):
    md = (sweep / "report" / "tables" / "main_synthetic.md").read_text()
    assert "| method | n | i2t R@1 | t2i R@1 | ambiguous acc | ael text |" in md
    assert "| bacl | 3/4 | **52.0 ± 2.0** | 30.0 ± 0.0 | **90.0 ± 0.0** | **45.0 ± 0.0** |" in md  # k=10 runs left out
    assert "| clip | 3/4 | 42.0 ± 2.0 | 30.0 ± 0.0 | 80.0 ± 0.0 | 30.0 ± 0.0 |" in md
    assert "| bns_only | 3 | 50.0 ± 10.0 |" in md
    tex = (sweep / "report" / "tables" / "main_synthetic.tex").read_text()
    assert r"bacl & 3/4 & \textbf{52.0}\,{\scriptsize$\pm$2.0} & 30.0\,{\scriptsize$\pm$0.0}" in tex
    assert r"bns\_only & 3 & 50.0\,{\scriptsize$\pm$10.0}" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex


def test_paper_rows_sit_below_ours_in_the_same_units(sweep):
    md = (sweep / "report" / "tables" / "main_vast27m.md").read_text()
    assert "| method | n | cls accuracy | cls f1 | cls recall |" in md
    assert "| clip | 1 | 70.0 | 60.0 | 50.0 |" in md  # written in %, not rescaled
    assert "| paper: GRAM (no counterpart) |  | 77.3 |  |  |" in md
    tex = (sweep / "report" / "tables" / "main_vast27m.tex").read_text()
    assert "clip & 1 & 70.0 & 60.0 & 50.0 \\\\\n\\midrule\npaper: BLIP (no counterpart) &  & 76.5 &  &  \\\\" in tex


def test_new_method_and_dataset_appear_without_code_change(sweep):
    tables = sweep / "report" / "tables"
    assert "| brand_new_method | 2 | 15.0 ± 7.1 |" in (tables / "main_synthetic.md").read_text()
    assert r"brand\_new\_method & 2 & 15.0\,{\scriptsize$\pm$7.1}" in (tables / "main_synthetic.tex").read_text()
    other = (tables / "main_brand_new_data.md").read_text()
    assert "| bacl | 1 | 3.0 |" in other and "| clip | 1 | **5.0** |" in other  # unknown dataset: R@k columns


def test_component_and_axis_tables(sweep):
    comp = (sweep / "report" / "tables" / "components_synthetic.md").read_text()
    assert "| bns_only | 3 | 50.0 ± 10.0 | +8.0 | 30.0 ± 0.0 | +0.0 | +7.3 | +4.9 |" in comp
    assert "| cla_only | 3 | 31.0 ± 1.0 | -11.0 |" in comp
    axis = (sweep / "report" / "tables" / "axis_pool.k_synthetic.md").read_text()
    assert "| 10 | 2 | **61.0 ± 1.4** |" in axis and "| 20 | 3/4 | 52.0 ± 2.0 |" in axis


def test_missing_and_failed_runs_are_reported(sweep):
    report = (sweep / "report" / "report.md").read_text()
    assert "19 of 22 expected runs ok, 1 failed, 1 unfinished, 1 missing with unknown grid point (ghost0000000)" \
        in report
    assert "| bacl | synthetic | 20 | 3 | 0 | 1 | 0 | 4 |" in report  # grid point, ok/failed/unfinished/missing
    assert "| clip | synthetic | 20 | 3 | 1 | 0 | 0 | 4 |" in report


def test_claims_need_five_paired_seeds(sweep):
    report = (sweep / "report" / "report.md").read_text()
    row = claim_row(report, "BACL > CLIP on i2t_R@1 (synthetic)")
    assert "| +10.0 | [+10.0, +10.0] | 3 |" in row and "+24 % relative" in row and row.endswith("| too few seeds |")
    assert claim_row(report, "BNS alone > CLIP on i2t_R@1 (synthetic)").endswith("| too few seeds |")
    assert claim_row(report, "CLA on top of BNS on i2t_R@1 (synthetic)").endswith(
        "| too few seeds |")  # hand-written runs have no rerank_* metric: the dual one stands in
    assert "| AEL: BACL > BNS alone on ael_text (synthetic) |" in report
    assert "Re-ranked metrics (`rerank_i2t_R@1`, …)" in report
    assert "| claim | paper | ours | difference | 95% CI | n | MDE | verdict |" in report
    bs = [line for line in report.splitlines() if line.startswith("| BNS: boundary score")]
    assert len(bs) == 1 and "| +0.550 | [+0.550, +0.550] | 3 |" in bs[0] and bs[0].endswith("| too few seeds |")
    assert claim_row(report, "Default schedule > Aggressive").endswith("| not run |")
    assert claim_row(report, "ρ-check: BACL's excess-risk slope ≈ −1").endswith("| not run |")


def test_paired_verdicts_follow_the_interval(tmp_path):
    """Six paired seeds: a consistent gain, a consistent loss, and a gain buried in seed noise."""
    gains = {"bns_only": [1.0, 1.5, 0.5, 1.2, 0.8, 1.0], "cla_only": [-2.0, -1.5, -2.5, -1.8, -2.2, -2.0],
             "bns_curriculum_only": [9.0, -8.0, 7.0, -9.0, 8.0, -6.0]}
    for seed in range(6):
        base = 40.0 + 10 * seed  # a large seed effect, shared by every arm at that seed
        write_run(tmp_path, f"clip{seed}", "clip", seed, {"i2t_R@1": base})
        write_run(tmp_path, f"bacl{seed}", "bacl", seed, {"i2t_R@1": base})
        for method, gain in gains.items():
            write_run(tmp_path, f"{method}{seed}", method, seed, {"i2t_R@1": base + gain[seed]})
    write_report(tmp_path)
    report = (tmp_path / "report" / "report.md").read_text()
    assert claim_row(report, "BNS alone > CLIP on i2t_R@1 (synthetic)").endswith("| supported |")
    assert claim_row(report, "CLA alone > CLIP on i2t_R@1 (synthetic)").endswith("| not supported |")
    policy = claim_row(report, "the learned policy helps on i2t_R@1 (synthetic)")  # bacl − bns_curriculum_only
    assert policy.endswith("| inconclusive |") and "| 6 |" in policy
    assert claim_row(report, "BACL > CLIP on i2t_R@1 (synthetic)").endswith("| inconclusive |")  # identical


def test_every_linked_figure_exists(sweep):
    report = (sweep / "report" / "report.md").read_text()
    links = [part.split(")")[0] for part in report.split("](")[1:]]
    figures = [link for link in links if link.startswith("../figures/")]
    assert {Path(f).stem for f in figures} >= {"schedule_alpha", "boundary_score_synthetic", "margin_synthetic",
                                               "i2t_r1_by_method_brand_new_data", "ael_by_method_synthetic",
                                               "i2t_r1_vs_pool.k_synthetic"}
    for link in figures:
        assert (sweep / "report" / link).stat().st_size > 1000
    assert "CLA heat map: not drawn" in report  # no checkpoints in hand-written runs


def test_rho_check_recovers_known_slopes(tmp_path):
    rng = np.random.default_rng(1)
    for method, slope in (("bacl", -1.0), ("uniform_data", -0.5)):
        for rho in (0.1, 0.5):
            for n in (500, 1000, 2000, 4000):
                for seed in range(3):
                    error = 0.05 + 0.2 * (n / 1000) ** slope + rng.normal(0, 0.002)
                    write_run(tmp_path, f"{method}_{rho}_{n}_{seed}", method, seed,
                              {"ambiguous_acc": 1 - error, "i2t_R@1": 100 * (1 - error)},
                              **{"dataset.rho": rho, "dataset.n_train": n})
    written = write_report(tmp_path)
    assert {"rho_check_ambiguous", "rho_check_r1"} <= {p.stem for p in written}
    report = (tmp_path / "report" / "report.md").read_text()
    for rho in ("0.1", "0.5"):
        assert claim_row(report, f"ρ-check: bacl slope ≈ -1 at ρ={rho} (95 % CI covers it and excludes 0)").endswith(
            "| supported |")
        assert claim_row(report, f"ρ-check: uniform_data slope shallower than bacl's at ρ={rho} (CIs apart)").endswith(
            "| supported |")
    rows = [line.split(" | ") for line in (tmp_path / "report" / "tables" / "rho_slopes.md").read_text().splitlines()
            if line.startswith("| 1 − ambiguous_acc |")]
    slope = {(r[1], r[2]): float(r[3]) for r in rows}
    assert slope.keys() == {("bacl", "0.1"), ("bacl", "0.5"), ("uniform_data", "0.1"), ("uniform_data", "0.5")}
    assert all(abs(s - (-1.0 if m == "bacl" else -0.5)) < 0.1 for (m, _), s in slope.items())


def test_a_slope_interval_that_also_covers_zero_supports_nothing():
    from analysis.claims import _covers
    from analysis.slopes import PowerLawFit

    def fit(lo: float, hi: float) -> PowerLawFit:
        return PowerLawFit(asymptote=0.0, scale=0.1, slope=(lo + hi) / 2, ci=(lo, hi), reference=1000.0, points=4)
    assert _covers(fit(-1.3, -0.7), -1.0) == SUPPORTED
    assert _covers(fit(-93.0, 92.0), -1.0) == INCONCLUSIVE
    assert _covers(fit(-0.6, -0.2), -1.0) == AGAINST


def test_paired_interval_equals_scipy_and_a_hand_computation():
    from scipy import stats

    d = [1.0, 2.0, 3.0, 4.0, 5.0]
    r = interval(d)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert r.n == 5 and r.difference == 3.0
    assert abs(r.low - ci.low) < 1e-12 and abs(r.high - ci.high) < 1e-12
    se = (2.5 ** 0.5) / 5 ** 0.5  # sample sd sqrt(2.5), n = 5
    assert abs(r.mde - (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * se) < 1e-12  # 80 % power at 5 %
    assert r.verdict == SUPPORTED and interval([-x for x in d]).verdict == AGAINST
    assert interval([-1.0, 1.0, -2.0, 2.0, 0.5]).verdict == INCONCLUSIVE
    assert interval([1.0, 2.0, 3.0, 4.0]).verdict == TOO_FEW  # four pairs: no verdict however clear
    a, b = pd.Series({0: 10.0, 1: 20.0, 2: 30.0}), pd.Series({1: 18.0, 2: 27.0, 3: 0.0})
    assert paired(a, b).n == 2 and paired(a, b).difference == 2.5  # only seeds both arms ran


def test_expected_runs_from_the_ablation_grid(conf, tmp_path):
    from analysis.completeness import expected_runs
    from bacl.config import load_config, to_container

    conf("tiny", "grid:\n  - method: [clip, bacl]\nseeds: [0, 1]\n")
    root = tmp_path / "tiny"
    for method, seed in (("clip", 0), ("clip", 1), ("bacl", 0)):
        (root / f"{method}{seed}").mkdir(parents=True)
        config = to_container(load_config([f"method={method}", f"seed={seed}", f"output_dir={root}"]))
        (root / f"{method}{seed}" / "result.json").write_text(json.dumps({"status": "ok", "config": config}))
    expected = expected_runs(root)
    assert expected.source == "ablation grid 'tiny' (4 runs)"
    assert list(zip(expected.rows["cfg.method.name"], expected.rows["cfg.seed"], expected.rows["status"])) == \
        [("bacl", 1, "missing")]


def test_schedule_shapes_are_ranked_beside_the_paper(tmp_path):
    from analysis.aggregate import load_runs
    from analysis.claims import comparison_claims
    from analysis.report_tables import axis_table
    from analysis.selection import axis_slices

    for shape, r1 in (("default", 50.0), ("aggressive", 60.0), ("shallow", 40.0)):  # ours: aggressive first
        for seed in range(5):
            write_run(tmp_path, f"{shape}{seed}", "bacl", seed, {"i2t_R@1": r1 + seed + 0.1 * (seed % 2)},
                      **{"method.schedule.shape": shape})
    runs = load_runs(tmp_path)
    slices = axis_slices(runs)
    table = axis_table("synthetic", "cfg.method.schedule.shape", slices["cfg.method.schedule.shape"]).markdown()
    assert "| shape | n | i2t R@1 | rank by i2t R@1 | paper rank |" in table
    assert "| aggressive | 5 | **62.0 ± 1.6** | 1 | 2 |" in table and "| default | 5 | 52.0 ± 1.6 | 2 | 1 |" in table
    claims = {c.claim.split(" on ")[0]: c for c in comparison_claims(runs)}
    assert claims["Default schedule > Aggressive"].verdict == "not supported"
    assert claims["Default schedule > Aggressive"].difference == "-10.0"
    assert claims["Aggressive schedule > Shallow"].verdict == "supported"


def test_a_sweep_without_components_says_so(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"bacl{seed}", "bacl", seed, {"i2t_R@1": 50.0 + seed})
    write_report(tmp_path)
    report = (tmp_path / "report" / "report.md").read_text()
    section = report.split("## Component ablation")[1].split("## Grid axes")[0]
    assert "Not run: no dataset has clip and a component" in section
