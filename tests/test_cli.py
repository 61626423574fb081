"""The command line a cluster user meets: help, --cfg, profile overrides, the GPU check, hydra's
habits, --status from a directory, --rerun-stale, and the console scripts of a non-editable install."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

from bacl.cli.extract import main as extract
from bacl.cli.report import main as report
from bacl.cli.sweep import main as sweep
from bacl.cli.train import main as train
from bacl.config import load_config, to_container
from bacl.launch import make_executor
from bacl.registry import DATASETS, METHODS
from bacl.results import git_state
from bacl.sweep import load_group_file
from helpers import REPO, TINY, load_cli


@pytest.mark.parametrize("main", [train, sweep, extract, report])
def test_help_lists_every_registered_method_and_dataset(main, capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    groups = out[out.index("dataset="):] if main is extract else out
    names = DATASETS.names() if main is extract else [*METHODS.names(), *DATASETS.names()]
    assert all(name in groups for name in names)


def test_help_lists_ablations_and_profiles_and_a_sections_keys(capsys):
    assert sweep(["--help"]) == 0
    out = capsys.readouterr().out
    assert "ablation=  alpha, baselines" in out and "slurm-gpu" in out
    assert load_cli("train")(["--help", "method=bacl"]) == 0
    keys = yaml.safe_load(capsys.readouterr().out)["method"]
    assert keys["schedule"]["gamma"] == 1.5 and keys["cla"]["lambda_local"] == 0.3
    assert train(["--help", "pool"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["pool"]["k"] == 20
    assert train(["--help", "nosuch"]) == 2
    assert "not a section" in capsys.readouterr().err


def test_cfg_prints_yaml_that_round_trips(capsys):
    args = ["method=hcl", "pool.k=7", "seed=3"]
    assert train([*args, "--cfg"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == to_container(load_config(args))


def test_a_cluster_key_on_the_command_line_changes_the_dry_runs_resources(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0]\n")
    args = ["ablation=tiny", "cluster=slurm", f"output_dir={tmp_path}", "--dry-run"]
    assert sweep(args) == 0 and "mem_gb=4.0" in capsys.readouterr().out
    assert sweep([*args, "cluster.mem_gb=8", "cluster.partition=big"]) == 0
    out = capsys.readouterr().out
    assert "mem_gb=8.0" in out and "partition=big" in out
    assert sweep([*args, "cluster.gpus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) gpus=1" in err and "gpus_per_node" in err


def test_a_two_node_gpu_dry_run_shows_what_each_task_gets_and_submitit_is_asked_the_same(tmp_path, capsys):
    args = ["ablation=main", "cluster=slurm-gpu", "cluster.nodes=2", "cluster.gpus_per_node=4", f"output_dir={tmp_path}"]
    assert sweep([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "each run: 2 node(s) x 4 task(s) = 8 task(s) (world size 8, nccl); per task: 1 GPU, 8 CPU(s)" in out
    profile = load_group_file("cluster", "slurm-gpu", ("nodes=2", "gpus_per_node=4"))
    asked = make_executor(profile, tmp_path, "x")._executor.parameters  # what sbatch gets
    assert (asked["nodes"], asked["ntasks_per_node"], asked["gpus_per_node"], asked["cpus_per_task"]) == (2, 4, 4, 8)


def test_the_shipped_main_grid_on_the_cpu_profile_is_refused(tmp_path, capsys):
    assert sweep(["ablation=main", "cluster=slurm", f"output_dir={tmp_path}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "gpus_per_node=0" in err and "train.device=cuda" in err and "cluster=slurm-gpu" in err


def test_gpu_profile_and_train_device_must_agree(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0]\n")
    assert sweep(["ablation=tiny", "cluster=slurm-gpu", f"output_dir={tmp_path / 'out'}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "gpus_per_node=1" in err and "train.device=cpu" in err
    assert sweep(["ablation=tiny", "cluster=slurm", "cluster.gpus_per_node=1", "train.device=cuda",
                  f"output_dir={tmp_path / 'out'}", "--dry-run"]) == 0
    assert not (tmp_path / "out").exists()  # nothing submitted, nothing written


def test_hydra_habits_get_this_harness_form(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0]\n")
    assert sweep(["ablation=tiny", "pool.k=10,20", f"output_dir={tmp_path}", "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" submit ") == 2
    assert train(["pool.k=10,20"]) == 2
    assert "a single run takes one value" in capsys.readouterr().err
    assert train([f"output_dir={tmp_path}/{{a,b}}", "--cfg"]) == 0  # commas inside braces are one value
    assert train(["-m", "pool.k=10"]) == 2 and "multirun" in capsys.readouterr().err
    assert train(["train.device=gpu"]) == 2
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err
    assert train(["method=clip", "method.schedule.shape=x"]) == 2
    err = capsys.readouterr().err
    assert "method 'clip' has no key 'schedule'" in err and "valid keys under 'method': " in err


def test_status_and_rerun_stale_from_the_directory(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0, 1]\n")
    out = tmp_path / "sweep"
    assert sweep(["ablation=tiny", "cluster=debug", f"output_dir={out}", *TINY, "train.epochs=1"]) == 0
    capsys.readouterr()
    assert sweep(["--status", str(out)]) == 0  # no override repeated: sweep.json has them
    assert "2 done" in capsys.readouterr().out

    result_path = sorted(out.glob("*/result.json"))[0]
    result = json.loads(result_path.read_text())
    assert result["git"]["commit"] == git_state()["commit"]
    result["git"]["commit"] = result["git_commit"] = "0" * 40
    result_path.write_text(json.dumps(result))
    assert sweep(["--dry-run", str(out)]) == 0
    assert "skipping 1 ok run(s) made by another commit" in capsys.readouterr().err
    assert sweep(["--rerun-stale", "--dry-run", str(out)]) == 0
    assert capsys.readouterr().out.count(" submit ") == 1
    args = ["ablation=tiny", "cluster=debug", f"output_dir={out}", *TINY, "train.epochs=1"]
    assert sweep([*args, "--rerun-stale"]) == 0
    assert "submitting 1" in capsys.readouterr().out
    assert json.loads(result_path.read_text())["git"]["commit"] == git_state()["commit"]
    assert (tmp_path / "sweep.stale" / ("0" * 12) / result_path.parent.name / "result.json").exists()
    # the same old commit's run made and set aside a second time keeps the first one beside it
    result_path.write_text(json.dumps(result))
    assert sweep([*args, "--rerun-stale"]) == 0
    assert (tmp_path / "sweep.stale" / ("0" * 12) / f"{result_path.parent.name}-2" / "result.json").exists()
    assert (tmp_path / "sweep.stale" / ("0" * 12) / result_path.parent.name / "result.json").exists()


@pytest.mark.slow
def test_a_non_editable_install_runs_from_another_directory(tmp_path):
    """`pip install .` (the wheel, no checkout on the path): configs are package data, scripts exist."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the test environment's dependencies, without its .pth hooks (the editable checkout is not on the path)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bacl_file = subprocess.run([str(python), "-c", "import bacl; print(bacl.__file__)"], cwd=cwd, env=env,
                               capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in bacl_file  # the installed copy, not the checkout
    dry = subprocess.run([str(env_dir / "bin" / "bacl-sweep"), "ablation=schedule", "--dry-run"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"sweep schedule \(\d+ runs in results/schedule\)", dry.stdout)
    helped = subprocess.run([str(env_dir / "bin" / "bacl-train"), "--help"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and all(name in helped.stdout for name in METHODS.names())


def test_a_multi_node_dry_run_prints_what_sbatch_gets_and_bad_task_layouts_name_their_key(tmp_path, capsys):
    """The per-task request that --dry-run prints is the one in submitit's sbatch script, for a 2-node
    GPU profile (one task per GPU) and a 2-node CPU profile (tasks_per_node tasks, gloo); layouts that
    cannot work stop the sweep with exit code 2 and the key to change."""
    gpu = ["ablation=main", "cluster=slurm-gpu", "cluster.nodes=2", "cluster.gpus_per_node=4", f"output_dir={tmp_path}"]
    assert sweep([*gpu, "--dry-run"]) == 0
    assert ("per task: 1 GPU, 8 CPU(s); per node: 4 GPU(s), 32 CPU(s), 64 GB memory; time limit 720 min"
            in capsys.readouterr().out)
    cpu = ["ablation=schedule", "cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=2", f"output_dir={tmp_path}"]
    assert sweep([*cpu, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tasks_per_node=2" in out
    assert ("each run: 2 node(s) x 2 task(s) = 4 task(s) (world size 4, gloo); per task: no GPU, 1 CPU(s); "
            "per node: 2 CPU(s), 4 GB memory; time limit 60 min") in out
    for name, overrides, flags in [("slurm-gpu", ("nodes=2", "gpus_per_node=4"), ["--gpus-per-node=4", "--ntasks-per-node=4"]),
                                   ("slurm", ("nodes=2", "tasks_per_node=2"), ["--ntasks-per-node=2"])]:
        executor = make_executor(load_group_file("cluster", name, overrides), tmp_path / name, "x")._executor
        sbatch = executor._make_submission_file_text("true", "uid")
        profile = load_group_file("cluster", name, overrides)
        for flag in ["--nodes=2", *flags, f"--cpus-per-task={profile.cpus_per_task}",
                     f"--mem={profile.mem_gb:g}GB", f"--time={profile.timeout_min}"]:
            assert f"#SBATCH {flag}\n" in sbatch, (flag, sbatch)
        assert bool(re.search(r"--gpus-per-node=[1-9]", sbatch)) == (name == "slurm-gpu")  # a CPU job asks for none
    bad = [(["cluster=slurm-gpu", "cluster.gpus_per_node=4", "cluster.tasks_per_node=2"],
            "tasks_per_node=2 with gpus_per_node=4"),
           (["cluster=slurm", "cluster.tasks_per_node=0"], "tasks_per_node=0 is out of range"),
           (["cluster=local", "cluster.nodes=2"], "nodes=2 with executor=local"),
           (["cluster=debug", "cluster.tasks_per_node=2"], "tasks_per_node=2 with executor=debug")]
    for args, message in bad:
        assert sweep(["ablation=schedule", *args, f"output_dir={tmp_path}", "--dry-run"]) == 2, args
        assert message in capsys.readouterr().err, args
