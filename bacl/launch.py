"""Sending runs to an executor: submitit for SLURM, local subprocesses and in-process debug.

The job is a `Checkpointable` callable carrying only its overrides (a few hundred bytes
of pickle, never tensors). On timeout or preemption submitit calls `checkpoint()`, which
resubmits the same callable; the new process finds `last.pt` in the run directory and
continues from it (the dinov2 pattern: the state lives on disk, not in the pickle).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import submitit
import torch
from omegaconf import DictConfig

from bacl.config import load_config
from bacl.errors import ConfigError
from bacl.trainer import Trainer

PROFILE_KEYS = {
    "executor", "partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "nodes",
    "array_parallelism", "max_array_size", "signal_delay_s", "parallel", "additional_parameters", "max_requeues",
}
EXECUTORS = ("local", "slurm", "debug")


class TrainJob(submitit.helpers.Checkpointable):
    def __call__(self, overrides: Sequence[str], threads: int = 0) -> dict:
        if threads:
            torch.set_num_threads(threads)
        if submitit.JobEnvironment().num_tasks > 1:  # one task per GPU: join the process group
            submitit.helpers.TorchDistributedEnvironment().export()
        trainer = Trainer(load_config(list(overrides)))
        result = trainer.run()
        return {"run_id": trainer.run_id, "status": result["status"], "error": result.get("error")}


def validate_profile(profile: DictConfig, path: str) -> None:
    unknown = set(profile.keys()) - PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(PROFILE_KEYS))}")
    if profile.get("executor") not in EXECUTORS:
        raise ConfigError(f"{path}: executor={profile.get('executor')!r}: valid choices are {', '.join(EXECUTORS)}")
    for key in ("cpus_per_task", "timeout_min", "max_array_size", "array_parallelism", "nodes"):
        value = profile.get(key, 1)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: {key}={value!r} is out of range: expected a positive integer")
    for key in ("gpus_per_node", "parallel", "signal_delay_s", "max_requeues"):
        value = profile.get(key, 0)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{path}: {key}={value!r} is out of range: expected an integer >= 0")
    if float(profile.get("mem_gb", 1)) <= 0:
        raise ConfigError(f"{path}: mem_gb={profile.get('mem_gb')!r} is out of range: expected > 0")


def make_executor(profile: DictConfig, folder: Path, name: str) -> submitit.Executor:
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=profile.executor,
                                     slurm_max_num_timeout=profile.get("max_requeues", 3))
    params = dict(name=name, timeout_min=profile.timeout_min, cpus_per_task=profile.cpus_per_task,
                  mem_gb=profile.get("mem_gb", 4), nodes=profile.get("nodes", 1),
                  gpus_per_node=profile.get("gpus_per_node", 0),
                  tasks_per_node=max(1, profile.get("gpus_per_node", 0)))
    if profile.executor == "slurm":
        params.update(
            slurm_array_parallelism=profile.array_parallelism,
            slurm_signal_delay_s=profile.get("signal_delay_s", 90),
            slurm_additional_parameters=dict(profile.get("additional_parameters") or {}),
        )
        if profile.get("partition"):
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
    return profile.get("parallel", 0) or max(1, (os.cpu_count() or 1) // profile.cpus_per_task)
