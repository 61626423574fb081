"""Aggregation of fixture result files against hand-computed means and standard deviations."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.aggregate import load_runs, summarise, write_tables

ROOT = Path(__file__).resolve().parents[1]


def fixture(root: Path, run: str, method: str, seed: int, r1: float | None, status: str = "ok") -> None:
    (root / run).mkdir(parents=True)
    record = {"run_id": run, "status": status, "config": {"seed": seed, "method": {"name": method, "k": [1, 2]},
                                                          "output_dir": str(root)}}
    if r1 is not None:
        record["metrics"] = {"i2t_R@1": r1, "t2i_R@1": r1 / 2}
    (root / run / "result.json").write_text(json.dumps(record))


def test_means_stds_and_missing_runs(tmp_path):
    fixture(tmp_path, "a", "clip", 0, 10.0)
    fixture(tmp_path, "b", "clip", 1, 20.0)
    fixture(tmp_path, "c", "clip", 2, 60.0)
    fixture(tmp_path, "d", "bacl", 0, 50.0)
    fixture(tmp_path, "e", "bacl", 1, None, status="failed")
    summary = summarise(load_runs(tmp_path)).set_index("cfg.method.name")
    assert summary.loc["clip", "i2t_R@1 mean"] == pytest.approx(30.0)
    assert summary.loc["clip", "i2t_R@1 std"] == pytest.approx(pd.Series([10, 20, 60]).std())  # 26.458
    assert summary.loc["clip", "t2i_R@1 mean"] == pytest.approx(15.0)
    assert summary.loc["bacl", "seeds"] == 1 and pd.isna(summary.loc["bacl", "i2t_R@1 std"])

    written = write_tables(tmp_path)
    assert (tmp_path / "runs.parquet").exists() and "bacl" in (tmp_path / "summary.md").read_text()
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert sorted(runs.status) == ["failed", "ok", "ok", "ok", "ok"]
    assert len(written) == 2


def test_report_cli(tmp_path):
    fixture(tmp_path, "a", "clip", 0, 10.0)
    proc = subprocess.run([sys.executable, str(ROOT / "analysis/report.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "1 ok, 0 not ok" in proc.stdout
    empty = subprocess.run([sys.executable, str(ROOT / "analysis/report.py"), str(tmp_path / "nope")],
                           capture_output=True, text=True)
    assert empty.returncode == 2


def test_method_presets_are_not_separate_axes(tmp_path):
    for run, (method, negatives, k, seed) in enumerate([("clip", "in_batch", 5, 0), ("clip", "in_batch", 5, 1),
                                                         ("bacl", "bns", 5, 0), ("bacl", "bns", 10, 0)]):
        (tmp_path / str(run)).mkdir()
        (tmp_path / str(run) / "result.json").write_text(json.dumps({
            "run_id": str(run), "status": "ok", "metrics": {"i2t_R@1": float(run)},
            "config": {"seed": seed, "method": {"name": method, "negatives": negatives}, "pool": {"k": k}}}))
    summary = summarise(load_runs(tmp_path))
    assert [c for c in summary.columns if c.startswith("cfg.")] == ["cfg.method.name", "cfg.pool.k"]
    assert len(summary) == 3


def test_report_draws_every_figure_from_real_runs(tiny_config, tmp_path):
    """Tiny trained runs: every figure is written and non-empty, the CLA heat map from a real checkpoint."""
    from analysis.report import write_report
    from bacl.trainer import Trainer

    out = tmp_path / "runs"
    for method, k in (("clip", 4), ("bacl", 4), ("bacl", 6)):
        for seed in (0, 1):
            Trainer(tiny_config(f"method={method}", f"pool.k={k}", f"seed={seed}", f"output_dir={out}")).run()
    written = write_report(out)
    names = {p.stem for p in written if p.parent.name == "figures"}
    assert names == {"schedule_alpha", "boundary_score", "sibling_fraction", "policy_bs_corr", "margin",
                     "i2t_r1_by_method", "ael_by_method",
                     "ambiguous_acc_by_method", "i2t_r1_vs_pool.k", "cla_heatmap"}
    assert all(p.stat().st_size > 1000 for p in written if p.suffix in (".png", ".pdf"))
    report = (out / "report" / "report.md").read_text()
    assert "![" in report and "cla_heatmap.png" in report and "red: the attribute that truly differs" in report
    assert "| BNS: boundary score" in report  # from real metrics.jsonl, not "not run"
