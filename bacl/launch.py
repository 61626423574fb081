"""Sending runs to an executor: submitit for SLURM, local subprocesses and in-process debug.

The job is a `Checkpointable` callable carrying only its overrides (a few hundred bytes
of pickle, never tensors). On timeout or preemption submitit calls `checkpoint()`, which
resubmits the same callable; the new process finds `last.pt` in the run directory and
continues from it (the dinov2 pattern: the state lives on disk, not in the pickle). The
requeue leaves the process by SystemExit, which the trainer records as `interrupted` and
lets through; submitit keeps its own SIGTERM and USR2 handlers (the trainer installs one
only where SIGTERM has none). The old process's run lock dies with it, so the requeued job
takes it again; a job whose run another process holds returns `running` without training.

A job of several tasks (nodes x tasks_per_node) is one data-parallel run: before the trainer
calls `bacl.distributed.init_from_env`, every task exports RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from submitit's JobEnvironment
(`export_dist_env`). Only rank 0 checkpoints and requeues on USR2 (submitit's handler); the
requeue kills the other tasks, and every task of the new allocation resumes from last.pt.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import submitit
import torch
from omegaconf import DictConfig

from bacl.config import load_config
from bacl.profiles import ClusterProfile, tasks_per_node
from bacl.schema import load_structured
from bacl.trainer import Trainer


class TrainJob(submitit.helpers.Checkpointable):
    def __call__(self, overrides: Sequence[str], threads: int = 0) -> dict:
        if threads:
            torch.set_num_threads(threads)
        export_dist_env()
        trainer = Trainer(load_config(list(overrides)))
        result = trainer.run()
        return {"run_id": trainer.run_id, "status": result["status"], "error": result.get("error"),
                "holder": result.get("holder")}


def _resolvable(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def export_dist_env() -> dict[str, str]:
    """In a job of several tasks, export what `init_from_env` reads (torch's env:// variables) and
    return it; in a one-task job (or debug, which runs in this process) change nothing and return {}.

    submitit's TorchDistributedEnvironment gives the ranks and a port drawn from the job id (the
    same after a requeue; MASTER_PORT set at submission wins). Two things differ from its defaults:
    - CUDA_VISIBLE_DEVICES is left alone: init_from_env selects GPU LOCAL_RANK among the node's
      GPUs, which would not exist if each task saw only one (and SLURM's ids need not start at 0).
    - Values inherited from the submitting shell (a sweep started inside another job) are replaced.
    MASTER_ADDR is the first node of the allocation, where rank 0 runs; when that node name does not
    resolve (NodeName differs from the host name, as on slurm/local with several slurmd), the address
    SLURM launched the tasks from (SLURM_LAUNCH_NODE_IPADDR, the batch host = the first node) is used.
    """
    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return {}
    env = submitit.helpers.TorchDistributedEnvironment()
    if not _resolvable(env.master_addr) and os.environ.get("SLURM_LAUNCH_NODE_IPADDR"):
        env.master_addr = os.environ["SLURM_LAUNCH_NODE_IPADDR"]
    env.export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: os.environ[k] for k in keys}


def validate_profile(profile: DictConfig, path: str) -> DictConfig:
    """`profile` (a loaded cluster file) as a checked, read-only ClusterProfile with every default filled in."""
    return load_structured(ClusterProfile, profile, path)


def job_resources(profile: DictConfig) -> dict:
    """What one run's job asks submitit for: `nodes` x `tasks_per_node` tasks, one per GPU on a GPU
    profile (ClusterProfile.check refuses any other count there), the profile's count on a CPU one."""
    return dict(timeout_min=profile.timeout_min, cpus_per_task=profile.cpus_per_task, mem_gb=profile.mem_gb,
                nodes=profile.nodes, gpus_per_node=profile.gpus_per_node, tasks_per_node=tasks_per_node(profile))


def describe_request(profile: DictConfig) -> str:
    """The per-run, per-task and per-node request of `job_resources`, as --dry-run prints it, so that
    a multi-node request can be checked against the cluster's nodes before anything is queued."""
    r = job_resources(profile)
    tasks = r["nodes"] * r["tasks_per_node"]
    gpus = "1 GPU" if r["gpus_per_node"] else "no GPU"
    per_node = f"{r['gpus_per_node']} GPU(s), " if r["gpus_per_node"] else ""
    return (f"each run: {r['nodes']} node(s) x {r['tasks_per_node']} task(s) = {tasks} task(s) (world size {tasks}, "
            f"{'nccl' if r['gpus_per_node'] else 'gloo'}); per task: {gpus}, {r['cpus_per_task']} CPU(s); "
            f"per node: {per_node}{r['tasks_per_node'] * r['cpus_per_task']} CPU(s), {r['mem_gb']:g} GB memory; "
            f"time limit {r['timeout_min']} min")


def make_executor(profile: DictConfig, folder: Path, name: str) -> submitit.Executor:
    """A submitit executor for a validated ClusterProfile; SLURM-only keys are ignored elsewhere."""
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=profile.executor,
                                     slurm_max_num_timeout=profile.max_requeues)
    params = dict(name=name, **job_resources(profile))
    if profile.executor == "slurm":
        params.update(
            slurm_array_parallelism=profile.array_parallelism,
            slurm_signal_delay_s=profile.signal_delay_s,
            slurm_additional_parameters=dict(profile.additional_parameters),
        )
        if profile.partition:
            params["slurm_partition"] = profile.partition
    executor.update_parameters(**params)
    return executor


def submit_slurm(executor: submitit.Executor, jobs_args: list[list[str]], threads: int,
                 max_array_size: int) -> list[submitit.Job]:
    """One sbatch array per chunk of at most MaxArraySize runs."""
    submitted = []
    for i in range(0, len(jobs_args), max_array_size):
        chunk = jobs_args[i:i + max_array_size]
        submitted += executor.map_array(TrainJob(), chunk, [threads] * len(chunk))
    return submitted


def run_throttled(executor: submitit.Executor, jobs_args: list[list[str]], threads: int, parallel: int,
                  poll_s: float = 0.5) -> list[tuple[list[str], submitit.Job]]:
    """Local executor: keep at most `parallel` runs going, return when all have finished."""
    pending, running, finished = list(jobs_args), [], []
    while pending or running:
        while pending and len(running) < parallel:
            args = pending.pop(0)
            running.append((args, executor.submit(TrainJob(), args, threads)))
        still = [(a, j) for a, j in running if not j.done()]
        finished += [(a, j) for a, j in running if j.done()]
        running = still
        if running:
            time.sleep(poll_s)
    return finished


def local_parallelism(profile: DictConfig) -> int:
    """Runs at once on this machine: the profile's `parallel`, or as many as the cores allow."""
    return profile.parallel or max(1, (os.cpu_count() or 1) // profile.cpus_per_task)
