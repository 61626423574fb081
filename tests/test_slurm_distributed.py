"""Data-parallel runs as SLURM jobs of several tasks: the environment each task exports before the
trainer joins the process group, and (marked `slurm`) 2-task and 2-node gloo runs on the local
cluster that are requeued mid-training and resume from last.pt.

The unmarked tests fake SLURM's task environment and need no cluster.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bacl.config import load_config
from bacl.launch import TrainJob, export_dist_env, make_executor
from bacl.sweep import load_group_file
from bacl.trainer import Trainer
from helpers import TINY

TORCH_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def slurm_task(monkeypatch: pytest.MonkeyPatch, *, procid: int, localid: int, nodeid: int, nodes: int, ntasks: int,
               nodelist: str, **extra: str) -> None:
    """The variables SLURM sets in one task of a job (the ones submitit's JobEnvironment reads)."""
    for key in (*TORCH_KEYS, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_LOCAL_JOB_ID",
                "SUBMITIT_DEBUG_JOB_ID", "SLURM_LAUNCH_NODE_IPADDR"):
        # setenv first: delenv of an absent key records nothing, and export_dist_env's RANK, WORLD_SIZE, ...
        # would then outlive the test (a later Trainer in this process would wait for a second rank forever)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    env = dict(SLURM_PROCID=procid, SLURM_LOCALID=localid, SLURM_NODEID=nodeid, SLURM_JOB_NUM_NODES=nodes,
               SLURM_NTASKS=ntasks, SLURM_JOB_NODELIST=nodelist, **extra)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))


def test_a_task_of_a_two_node_four_gpu_job_exports_its_ranks_and_keeps_its_gpus(monkeypatch):
    # rank 6 = node 1, local rank 2; a sweep started inside another job left stale values behind
    slurm_task(monkeypatch, procid=6, localid=2, nodeid=1, nodes=2, ntasks=8, nodelist="localhost,vm",
               CUDA_VISIBLE_DEVICES="0,1,2,3", RANK="0", WORLD_SIZE="1", MASTER_ADDR="elsewhere")
    env = export_dist_env()
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == dict(
        RANK="6", LOCAL_RANK="2", WORLD_SIZE="8", LOCAL_WORLD_SIZE="4", MASTER_ADDR="localhost")
    assert 20000 <= int(env["MASTER_PORT"]) <= 60000
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # init_from_env picks GPU LOCAL_RANK among them
    assert all(os.environ[k] == v for k, v in env.items())
    again = export_dist_env()  # a requeued task of the same job meets its ranks on the same port
    assert again["MASTER_PORT"] == env["MASTER_PORT"]


def test_an_unresolvable_first_node_falls_back_to_the_launch_address_and_a_set_port_wins(monkeypatch):
    slurm_task(monkeypatch, procid=1, localid=0, nodeid=1, nodes=2, ntasks=2, nodelist="bacl-no-such-node[1-2]",
               SLURM_LAUNCH_NODE_IPADDR="127.0.0.1", MASTER_PORT="29517")
    env = export_dist_env()
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["RANK"], env["LOCAL_RANK"]) == ("127.0.0.1", "29517", "1", "0")


def test_a_one_task_job_changes_nothing(monkeypatch):
    slurm_task(monkeypatch, procid=0, localid=0, nodeid=0, nodes=1, ntasks=1, nodelist="vm")
    assert export_dist_env() == {} and "RANK" not in os.environ and "MASTER_ADDR" not in os.environ


# ---------------------------------------------------------------- on the local SLURM cluster

def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics as {"a.b": value} for pytest.approx."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def train_preempted(profile_overrides: tuple[str, ...], overrides: list[str], logs: Path) -> tuple[dict, float]:
    """Submit one run through the `slurm` profile with these overrides (the sweep's own executor), send
    every task USR2 once last.pt exists (a preemption: submitit's handler on rank 0 checkpoints and
    requeues, the requeue ends the other tasks), wait for the requeued job; (result.json, seconds)."""
    profile = load_group_file("cluster", "slurm", profile_overrides)
    executor = make_executor(profile, logs, "bacl-dist-test")
    runs = Path(next(o for o in overrides if o.startswith("output_dir=")).partition("=")[2])
    t0 = time.monotonic()
    job = executor.submit(TrainJob(), overrides, 1)
    try:
        wait_for(lambda: any(runs.glob("*/last.pt")), 180, "the first checkpoint")
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
        wait_for(job.done, 600, "the requeued job", poll=2)
    finally:
        if not job.done():
            job.cancel(check=False)
    outcome = job.results()[0]  # rank 0's; result() refuses a job of several tasks
    result = json.loads((runs / outcome["run_id"] / "result.json").read_text())
    return result, time.monotonic() - t0


def train_local(tasks: int, overrides: list[str], logs: Path) -> dict:
    """The same run, uninterrupted, as `tasks` tasks of submitit's local executor (the same TrainJob
    and export_dist_env path, without SLURM); its result.json."""
    profile = load_group_file("cluster", "local", (f"tasks_per_node={tasks}",))
    job = make_executor(profile, logs, "bacl-dist-ref").submit(TrainJob(), overrides, 1)
    outcome = job.results()[0]
    runs = Path(next(o for o in overrides if o.startswith("output_dir=")).partition("=")[2])
    return json.loads((runs / outcome["run_id"] / "result.json").read_text())


def preempted_run_matches_uninterrupted(profile_overrides: tuple[str, ...], tmp_path: Path, *extra: str) -> None:
    """A 2-rank gloo run on the local cluster laid out by `profile_overrides`, preempted after its first
    checkpoint, resumes and ends with the metrics of an uninterrupted 2-rank run (exactly: resumption
    and gloo's 2-rank reductions are deterministic on CPU) and of one process (to float tolerance)."""
    run = [*TINY, "method=clip", "train.epochs=30", "train.device=cpu", *extra]
    result, seconds = train_preempted((*profile_overrides, "mem_gb=1", "timeout_min=10"),
                                      [*run, f"output_dir={tmp_path}/slurm"], tmp_path / "logs")
    assert result["status"] == "ok", result
    total = result["step"]
    assert 0 < result.get("resumed_from_step", 0) < total, "the job finished without being requeued"
    print(f"{' '.join(profile_overrides)} requeue: {seconds:.1f} s, resumed from step {result['resumed_from_step']} of {total}")

    straight = train_local(2, [*run, f"output_dir={tmp_path}/straight"], tmp_path / "local-logs")
    assert straight["status"] == "ok" and "resumed_from_step" not in straight
    assert straight["metrics"] == result["metrics"]
    one = Trainer(load_config([*run, f"output_dir={tmp_path}/one"])).run()
    assert flat(one["metrics"]) == pytest.approx(flat(result["metrics"]), rel=1e-5, abs=1e-6)  # measured: 8.5e-7 (margin)


def _slurm_nodes() -> list[str] | None:
    """The nodes of the cluster whose controller answers, or None when none answers."""
    if shutil.which("scontrol") is None:
        return None
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        if " is UP" not in ping.stdout:
            return None
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=15).stdout
    except subprocess.TimeoutExpired:
        return None
    return sorted(set(out.split()))


@pytest.fixture(scope="module")
def two_node_cluster(slurm_cluster) -> list[str]:
    """The session's cluster if it has two nodes or more (slurm/local starts two slurmd on this host, conftest.py);
    a running one-node cluster someone else started is not reconfigured under them: the test is skipped."""
    nodes = _slurm_nodes() or []
    if len(nodes) < 2:
        pytest.skip(f"the running SLURM cluster has one node ({nodes}); stop it, or start it with "
                    f"SLURM_LOCAL_NODES=2 bash slurm/local/start.sh")
    return nodes


@pytest.mark.slurm
def test_a_two_node_gloo_job_is_requeued_mid_training_and_resumes_to_the_uninterrupted_metrics(two_node_cluster, tmp_path):
    """nodes=2 x 1 task: ranks on two slurmd nodes, MASTER_ADDR from the launch address (n1 does not resolve)."""
    preempted_run_matches_uninterrupted(("nodes=2", "tasks_per_node=1"), tmp_path)


@pytest.mark.slurm
def test_a_two_task_gloo_job_is_requeued_mid_training_and_resumes_to_the_uninterrupted_metrics(slurm_cluster, tmp_path):
    """1 node x 2 tasks (cluster=slurm tasks_per_node=2), BACL streamed from a store by 2 fixed readers: each rank
    checkpoints its own bank shard and the stream positions resume with it."""
    preempted_run_matches_uninterrupted(("tasks_per_node=2",), tmp_path, "method=bacl", "train.epochs=15",
                                        "train.stream.enabled=true", "train.stream.readers=2",
                                        "dataset.stream_shard_items=12", f"dataset.store={tmp_path / 'store'}")
