"""End to end on the local SLURM cluster (slurm/local/start.sh): sweeps, requeue, dead jobs, extraction."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import submitit

from bacl.config import load_config
from bacl.launch import TrainJob
from bacl.trainer import Trainer
from helpers import REPO, TINY, load_cli

pytestmark = pytest.mark.slurm


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def test_sweep_through_slurm_returns_at_once_and_completes(slurm_cluster, conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip, bacl]\nseeds: [0, 1]\n")
    main = load_cli("sweep")
    out = tmp_path / "sweep"
    args = ["ablation=tiny", "cluster=slurm", f"output_dir={out}", *TINY, "train.epochs=1"]

    t0 = time.time()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "submitting 4 to slurm" in printed and "submitted arrays" in printed
    assert time.time() - t0 < 30  # returns without waiting for the runs
    jobs = json.loads((out / "jobs.json").read_text())
    assert len(jobs) == 4 and len({j["job_id"].split("_")[0] for j in jobs.values()}) == 1  # one array

    def all_done() -> bool:
        main([*args, "--status"])
        return "4 done" in capsys.readouterr().out
    wait_for(all_done, 300, "the 4 runs of the array")
    assert all(json.loads(p.read_text())["status"] == "ok" for p in out.glob("*/result.json"))
    assert main(args) == 0
    assert "submitting 0" in capsys.readouterr().out


def test_job_past_its_time_limit_is_requeued_and_resumes(slurm_cluster, tmp_path):
    # SLURM may send the pre-timeout signal up to 60 s before `limit - delay`: with a 2-minute
    # limit and a 30 s delay it comes 30 to 90 s into each allocation, after start-up (a
    # signal during `import torch` kills the job before submitit's handler exists). 9,000
    # steps take > 90 s even on an idle core, so the job cannot finish in one go; each signal
    # makes submitit requeue the Checkpointable job, which continues from last.pt.
    overrides = [*TINY, "method=clip", "train.epochs=1500", "train.checkpoint_every=6", f"output_dir={tmp_path}/runs"]
    executor = submitit.AutoExecutor(folder=tmp_path / "logs" / "%j", cluster="slurm", slurm_max_num_timeout=30)
    executor.update_parameters(timeout_min=2, slurm_signal_delay_s=30, cpus_per_task=1, mem_gb=1)
    t0 = time.time()
    job = executor.submit(TrainJob(), overrides, 1)
    wait_for(job.done, 1200, "the requeued job", poll=2)
    outcome = job.result()
    elapsed = time.time() - t0
    result = json.loads((Path(tmp_path / "runs") / outcome["run_id"] / "result.json").read_text())
    assert result["status"] == "ok", result
    assert result.get("resumed_from_step", 0) > 0, "the job finished without being requeued"
    print(f"requeue test: {elapsed:.1f} s, resumed from step {result['resumed_from_step']}")

    straight = Trainer(load_config([*overrides[:-1], f"output_dir={tmp_path}/straight"])).run()
    assert straight["metrics"] == result["metrics"]  # resumption is exact on CPU


def test_job_killed_without_result_is_reported_failed(slurm_cluster, conf, tmp_path, capsys):
    conf("long", "grid:\n  - method: [clip]\nseeds: [0]\n")
    main = load_cli("sweep")
    out = tmp_path / "sweep"
    args = ["ablation=long", "cluster=slurm", f"output_dir={out}", *TINY, "train.epochs=500"]
    assert main(args) == 0
    capsys.readouterr()
    job_id = json.loads((out / "jobs.json").read_text()).popitem()[1]["job_id"]
    job = submitit.SlurmJob(folder=out / ".submitit" / "%j", job_id=job_id)
    wait_for(lambda: job.state == "RUNNING", 120, "the job to start")
    job.cancel(check=True)

    def reported_failed() -> bool:
        main([*args, "--status"])
        return "1 failed" in capsys.readouterr().out
    wait_for(reported_failed, 120, "the cancelled job to be reported failed")
    main([*args, "--status"])
    assert f"slurm job {job_id} ended CANCELLED" in capsys.readouterr().out


def test_extraction_as_a_slurm_array_then_a_pool_job(slurm_cluster, tmp_path):
    """extract.py cluster=slurm: an array over the shards, then a pool job that waits for it (afterok)."""
    from bacl.data import fixtures
    from bacl.data.store import FeatureStore
    root = fixtures.laion400m(tmp_path / "laion", n=24, per_shard=6)
    tiny = ["dataset.vision_encoder.model=bacl-tiny-vit", "dataset.vision_encoder.pretrained=null",
            "dataset.text_encoder.model=bacl-tiny-vit", "dataset.text_encoder.pretrained=null", "pool.k=3"]
    store = FeatureStore(tmp_path / "store")
    args = [sys.executable, str(REPO / "experiments" / "extract.py"), "dataset=laion400m", f"dataset.root={root}",
            f"dataset.store={store.path}", *tiny, "cluster=slurm", "extract.tasks=2"]
    t0 = time.time()
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "submitted extract" in out.stdout and "pool" in out.stdout and time.time() - t0 < 60, out.stdout
    wait_for(lambda: store.pool_path("train", "vision").exists(), 600, "the extraction array and its pool job")
    assert store.missing_shards() == [] and len(store.manifest["shards"]) == 4
    assert store.counts()["skipped_total"] == 1
    assert np.load(store.pool_path("train", "vision")).shape == (store.counts()["train_items"], 3)
