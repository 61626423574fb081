"""Data-parallel runs as SLURM jobs of several tasks: the environment each task exports before the
trainer joins the process group, and (marked `slurm`) 2-task and 2-node gloo runs on the local
cluster that are requeued mid-training and resume from last.pt.

The unmarked tests fake SLURM's task environment and need no cluster.
"""
from __future__ import annotations

import os

import pytest

from bacl.launch import export_dist_env

TORCH_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def slurm_task(monkeypatch: pytest.MonkeyPatch, *, procid: int, localid: int, nodeid: int, nodes: int, ntasks: int,
               nodelist: str, **extra: str) -> None:
    """The variables SLURM sets in one task of a job (the ones submitit's JobEnvironment reads)."""
    for key in (*TORCH_KEYS, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_LOCAL_JOB_ID",
                "SUBMITIT_DEBUG_JOB_ID", "SLURM_LAUNCH_NODE_IPADDR"):
        monkeypatch.delenv(key, raising=False)
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
