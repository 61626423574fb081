"""Grid expansion, run_id stability, bad grids and profiles, skip-existing, local sweeps."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import bacl.sweep as sweep
from bacl.errors import ConfigError
from bacl.launch import validate_profile
from bacl.registry import METHODS, Entry
from bacl.trainer import Trainer
from helpers import TINY, load_cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_ablation_expands():
    sizes = {name: len(sweep.expand(name, [])) for name in sweep.available("ablation")}
    assert sizes["schedule"] == (3 + 3 + 2 + 2 + 2) * 3  # shapes, then one parameter at a time
    assert sizes["alpha"] == 9 * 3 and sizes["beta"] == 5 * 3 and sizes["k"] == 5 * 3
    assert sizes["components"] == (8 + 1) * 3 and sizes["rho"] == 4 * 3 * 4 * 3
    assert sizes["baselines"] == len(METHODS.names()) * 3  # `method: all`


def test_a_new_baseline_is_one_file_plus_one_registry_line(tmp_path, monkeypatch, capsys, tiny_config):
    """The file: a Method subclass in its own module; the line: its registry entry. Nothing else
    (no YAML edit) puts it into `ablation=baselines` and lets it train."""
    (tmp_path / "sweep_test_baseline.py").write_text(textwrap.dedent("""
        from bacl.method import Method

        class Plain(Method):
            \"\"\"Symmetric InfoNCE with the base class's defaults, under a new name.\"\"\"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sweep_test_baseline", raising=False)
    monkeypatch.setitem(METHODS._entries, "sweep_test_plain", Entry("sweep_test_baseline:Plain"))

    assert load_cli("sweep")(["ablation=baselines", f"output_dir={tmp_path}/sweep", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("method=sweep_test_plain ") == 3  # one run per seed
    assert f"({len(METHODS.names()) * 3} runs in" in printed

    result = Trainer(tiny_config("method=sweep_test_plain", "train.epochs=1")).run()
    assert result["status"] == "ok", result.get("error")


def test_method_all_works_as_a_list_and_on_the_command_line(conf, tmp_path):
    conf("g", "grid:\n  - method: [all]\n")
    assert sorted(r.axes["method"] for r in sweep.expand("g", [f"output_dir={tmp_path}"])) == METHODS.names()
    conf("k", "base: [method=bacl]\ngrid:\n  - pool.k: [5, 10]\n")
    runs = sweep.expand("k", [f"output_dir={tmp_path}", "method=all"])
    assert len(runs) == 2 * len(METHODS.names())


def test_grid_union_product_seeds_and_cli_axis(conf, tmp_path):
    conf("g", "base: [method=bacl]\ngrid:\n  - pool.k: [5, 10]\n    method.cla.beta: [0.0, 1.0]\n"
              "  - method.schedule.shape: [shallow]\nseeds: [0, 1]\n")
    runs = sweep.expand("g", [f"output_dir={tmp_path}/out"])
    assert len(runs) == (4 + 1) * 2
    assert {(r.axes.get("pool.k"), r.axes.get("method.cla.beta")) for r in runs} >= {(5, 0.0), (10, 1.0)}
    with_axis = sweep.expand("g", [f"output_dir={tmp_path}/out", "train.epochs=[1,2]"])
    assert len(with_axis) == 2 * len(runs)
    fixed = sweep.expand("g", [f"output_dir={tmp_path}/out", "train.epochs=3"])
    assert all(r.cfg.train.epochs == 3 for r in fixed)


def test_run_ids_are_stable_and_duplicates_collapse(conf, tmp_path):
    conf("g", "grid:\n  - method.schedule.gamma: [1.5]\n  - method.schedule.shape: [default]\nseeds: [0]\n")
    runs = sweep.expand("g", [f"output_dir={tmp_path}"])
    assert len(runs) == 1  # gamma=1.5 is the default shape: one run, not two
    again = sweep.expand("g", [f"output_dir={tmp_path}"])
    assert [r.run_id for r in runs] == [r.run_id for r in again]


@pytest.mark.parametrize("text,expected", [
    ("grid:\n  - pool.kk: [1]\n", r"unknown config key 'pool.kk'"),
    ("grid:\n  - pool.k: 5\n", r"grid axis 'pool.k' must be a non-empty list"),
    ("grid:\n  - pool.k: []\n", r"must be a non-empty list"),
    ("grid:\n  - method: [nope]\n", r"unknown method 'nope'"),
    ("grids:\n  - pool.k: [1]\n",
     r"unknown key\(s\) grids=\[\{'pool.k': \[1\]\}\] \(did you mean grid\?\); valid keys: name, description, base"),
    ("grid:\n  - pool.k: [0]\n", r"pool.k=0"),
    ("grid:\n  - pool.k: all\n", r"grid axis 'pool.k' must be a non-empty list \(or all for method\), got 'all'"),
    ("grid: []\n", r"grid=\[\] is out of range: expected a non-empty list"),
    ("grid:\n  pool.k: [1]\n", r"grid=\{'pool.k': \[1\]\} is not a list of mappings"),
    ("seeds: 3\n", r"seeds=3 is not a list of integers"),
    ("seeds: [a]\n", r"seeds=\['a'\] is not a list of integers"),
    ("seeds: []\n", r"seeds=\[\] is out of range: expected a non-empty list of integers"),
    ("base: method=clip\n", r"base='method=clip' is not a list of strings"),
    ("- pool.k\n", r"expected a mapping, got \['pool.k'\]"),
    ("grid: [\n", r"not valid YAML"),
])
def test_bad_grids_are_rejected_naming_the_key(conf, text, expected):
    conf("bad", text)
    with pytest.raises(ConfigError, match=expected):
        sweep.expand("bad", [])


def test_unknown_ablation_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown ablation 'nope': valid choices are .*schedule"):
        sweep.expand("nope", [])


@pytest.mark.parametrize("text,expected", [
    ("executor: pbs\ncpus_per_task: 1\ntimeout_min: 5\n", r"executor='pbs'"),
    ("executor: slurm\ncpus_per_task: 0\ntimeout_min: 5\n", r"cpus_per_task=0"),
    ("executor: slurm\ncpus_per_task: 1\ntimeout_min: 5\npartitoin: gpu\n", r"unknown key\(s\) partitoin"),
    ("executor: slurm\ncpus_per_task: 1\ntimeout_min: 5\nmem_gb: -1\n", r"mem_gb=-1"),
    ("executor: slurm\ncpus_per_task: four\n", r"profile.yaml: cpus_per_task='four' is not an integer"),
    ("executor: slurm\ntimeout_min: 1.5\n", r"timeout_min=1.5 is not an integer"),
    ("executor: slurm\nadditional_parameters: [qos]\n", r"additional_parameters=\['qos'\] is not a mapping"),
    ("executor: slurm\npartition: [a, b]\n", r"partition=\['a', 'b'\] is not a string or null"),
    ("cpus_per_task: 2\n", r"required key executor is missing: valid choices are local, slurm, debug"),
    ("executor: slurm\npartitoin: gpu\nmem: 4\n",
     r"unknown key\(s\) partitoin='gpu' \(did you mean partition\?\), mem=4 \(did you mean mem_gb\?\); "
     r"valid keys: executor, cpus_per_task, .*additional_parameters"),
])
def test_bad_cluster_profiles_are_rejected(text, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_profile(OmegaConf.create(text), "profile.yaml")


def test_profile_defaults_fill_in_what_a_file_leaves_out():
    profile = validate_profile(OmegaConf.create("executor: slurm\npartition: gpu\n"), "p.yaml")
    assert (profile.partition, profile.mem_gb, profile.max_requeues, profile.signal_delay_s) == ("gpu", 4.0, 3, 90)
    assert dict(profile.additional_parameters) == {} and profile.nodes == 1
    for name in sweep.available("cluster"):  # every shipped profile loads
        assert sweep.load_group_file("cluster", name).executor == name.partition("-")[0]  # slurm-gpu: slurm


def test_sweep_cli_rejects_a_misspelt_profile_key(conf, tmp_path, capsys, monkeypatch):
    cluster = tmp_path / "conf" / "cluster"
    cluster.unlink()
    cluster.mkdir()
    (cluster / "site.yaml").write_text("executor: slurm\npartiton: gpu\n")
    conf("tiny", "grid:\n  - method: [clip]\n")
    main = load_cli("sweep")
    assert main(["ablation=tiny", "cluster=site", f"output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err
    assert "site.yaml: unknown key(s) partiton='gpu' (did you mean partition?); valid keys: executor," in err
    assert not (tmp_path / "out").exists()


def test_sweep_cli_rejects_bad_profile_before_submitting(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/sweep.py"), "ablation=schedule",
                           "cluster=nowhere", f"output_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown cluster 'nowhere'" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_local_sweep_runs_skips_and_aggregates(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip, bns_only]\nseeds: [0, 1]\n")
    main = load_cli("sweep")
    out = tmp_path / "sweep"
    args = ["ablation=tiny", f"output_dir={out}", *TINY, "train.epochs=1"]

    assert main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" submit ") == 4

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "submitting 4 to local" in printed
    results = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2 and (out / "runs.parquet").exists()
    assert (out / "figures" / "boundary_score.png").exists()

    assert main(args) == 0
    assert "submitting 0" in capsys.readouterr().out  # nothing redone

    victim = sorted(out.glob("*/result.json"))[0]
    victim.unlink()
    assert main([*args, "--status"]) == 0
    assert "3 done, 1 started" in capsys.readouterr().out
    assert main(args) == 0
    assert "submitting 1" in capsys.readouterr().out and victim.exists()


def test_failed_runs_are_reported_and_resubmitted(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0]\n")
    main = load_cli("sweep")
    out = tmp_path / "sweep"
    args = ["ablation=tiny", f"output_dir={out}", *TINY, "train.epochs=1"]
    assert main(args) == 0
    result_path = next(out.glob("*/result.json"))
    result = json.loads(result_path.read_text())
    result["status"], result["error"] = "failed", "non-finite loss at step 3"
    result_path.write_text(json.dumps(result))
    with open(json.loads((out / "jobs.json").read_text())[result["run_id"]]["stderr"], "a") as log:
        log.write("Traceback: the last lines of the job's log\n")
    assert main([*args, "--status"]) == 0
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "non-finite loss at step 3" in printed
    assert "the last lines of the job's log" in printed
    assert main(args) == 0
    assert "submitting 1" in capsys.readouterr().out
    assert json.loads(result_path.read_text())["status"] == "ok"


def test_slurm_submission_is_chunked_to_max_array_size():
    from bacl.launch import TrainJob, submit_slurm

    class Recorder:
        def __init__(self):
            self.calls = []

        def map_array(self, fn, args, threads):
            assert isinstance(fn, TrainJob) and len(args) == len(threads)
            self.calls.append(list(args))
            return [f"{len(self.calls)}_{i}" for i in range(len(args))]

    ex = Recorder()
    jobs = submit_slurm(ex, [[f"seed={i}"] for i in range(5)], threads=1, max_array_size=2)
    assert [len(c) for c in ex.calls] == [2, 2, 1] and len(jobs) == 5
    assert [a for c in ex.calls for a in c] == [[f"seed={i}"] for i in range(5)]  # order kept


def test_seeds_on_the_command_line_replace_the_files_seeds(tmp_path):
    runs = sweep.expand("components", [f"output_dir={tmp_path}", "seed=[0,1]"])
    assert sorted({r.axes["seed"] for r in runs}) == [0, 1] and len(runs) == 9 * 2
    one = sweep.expand("components", [f"output_dir={tmp_path}", "seed=7"])
    assert {r.axes["seed"] for r in one} == {7} and all(r.cfg.seed == 7 for r in one)


def test_the_claims_grid_runs_every_comparison_arm_at_ten_paired_seeds(tmp_path):
    from analysis.claims import COMPARISONS

    runs = sweep.expand("claims", [f"output_dir={tmp_path}"])
    points: dict[tuple, set[int]] = {}
    for run in runs:
        points.setdefault(tuple(sorted((k, str(v)) for k, v in run.axes.items() if k != "seed")), set()).add(
            run.axes["seed"])
    assert all(len(seeds) >= 10 for seeds in points.values())
    for spec in COMPARISONS:  # every arm a claim compares is a grid point (at defaults where unnamed)
        for arm in (spec["a"], spec["b"]):
            if arm.get("method.schedule.shape") == "default":
                arm = {"method": arm["method"]}
            wanted = {(k, str(v)) for k, v in arm.items()}
            assert any(wanted <= set(point) and len(point) == len(wanted) for point in points), arm
    assert {r.axes["seed"] for r in sweep.expand("claims", [f"output_dir={tmp_path}", "seed=[0,1]"])} == {0, 1}
