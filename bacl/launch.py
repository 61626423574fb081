"""Sending runs to an executor: submitit for SLURM, local subprocesses and in-process debug.

The job is a `Checkpointable` callable carrying only its overrides (a few hundred bytes
of pickle, never tensors). On timeout or preemption submitit calls `checkpoint()`, which
resubmits the same callable; the new process finds `last.pt` in the run directory and
continues from it (the dinov2 pattern: the state lives on disk, not in the pickle). The
requeue leaves the process by SystemExit, which the trainer records as `interrupted` and
lets through; submitit keeps its own SIGTERM and USR2 handlers (the trainer installs one
only where SIGTERM has none). The old process's run lock dies with it, so the requeued job
takes it again; a job whose run another process holds returns `running` without training.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import submitit
import torch
from omegaconf import DictConfig

from bacl.config import load_config
from bacl.profiles import ClusterProfile
from bacl.schema import load_structured
from bacl.trainer import Trainer


class TrainJob(submitit.helpers.Checkpointable):
    def __call__(self, overrides: Sequence[str], threads: int = 0) -> dict:
        if threads:
            torch.set_num_threads(threads)
        if submitit.JobEnvironment().num_tasks > 1:  # one task per GPU: join the process group
            submitit.helpers.TorchDistributedEnvironment().export()
        trainer = Trainer(load_config(list(overrides)))
        result = trainer.run()
        return {"run_id": trainer.run_id, "status": result["status"], "error": result.get("error"),
                "holder": result.get("holder")}


def validate_profile(profile: DictConfig, path: str) -> DictConfig:
    """`profile` (a loaded cluster file) as a checked, read-only ClusterProfile with every default filled in."""
    return load_structured(ClusterProfile, profile, path)


def job_resources(profile: DictConfig) -> dict:
    """What one run's job asks for: one task per GPU on every node (one task on a CPU profile)."""
    return dict(timeout_min=profile.timeout_min, cpus_per_task=profile.cpus_per_task, mem_gb=profile.mem_gb,
                nodes=profile.nodes, gpus_per_node=profile.gpus_per_node, tasks_per_node=max(1, profile.gpus_per_node))


def describe_request(profile: DictConfig) -> str:
    """The per-job and per-task request of `job_resources`, as --dry-run prints it."""
    r = job_resources(profile)
    tasks = r["nodes"] * r["tasks_per_node"]
    gpus = "1 GPU" if r["gpus_per_node"] else "no GPU"
    return (f"each run: {r['nodes']} node(s) x {r['tasks_per_node']} task(s) = {tasks} task(s) (world size {tasks}, "
            f"{'nccl' if r['gpus_per_node'] else 'gloo'}); per task: {gpus}, {r['cpus_per_task']} CPU(s); "
            f"per node: {r['mem_gb']:g} GB memory; time limit {r['timeout_min']} min")


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
