"""Cluster profiles: `bacl/conf/cluster/<name>.yaml`, selected with `cluster=<name>`.

A profile says where runs execute and with what resources, so that nothing site-specific
lives in code. A file sets only what differs from the defaults below; bacl/schema.py
rejects unknown keys and wrong types, `check` the out-of-range values.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from bacl.errors import ConfigError, require

EXECUTORS = ("local", "slurm", "debug")


@dataclass
class ClusterProfile:
    # required: local (subprocesses here), slurm (sbatch arrays through submitit), debug (in-process, pdb works)
    executor: str = field(default=MISSING, metadata={"choices": EXECUTORS})
    cpus_per_task: int = 1  # CPUs of each run, also its torch threads
    timeout_min: int = 60  # each run's time limit; SLURM requeues a run that hits it
    mem_gb: float = 4  # memory of each node of a run (SLURM --mem): all its tasks on that node share it
    nodes: int = 1  # > 1: SLURM only; the run's tasks on every node join one data-parallel process group
    gpus_per_node: int = 0  # >= 1: one task per GPU (nccl), data-parallel over the global batch
    tasks_per_node: Optional[int] = None  # null: one per GPU, or 1 without GPUs; set only on CPU profiles (gloo)
    parallel: int = 0  # local: runs at once; 0 = cores // cpus_per_task
    partition: Optional[str] = None  # SLURM partition; null: the cluster's default
    array_parallelism: int = 16  # SLURM: at most this many runs of one array at once
    max_array_size: int = 1000  # the cluster's MaxArraySize: bigger sweeps are split into several arrays
    signal_delay_s: int = 90  # SLURM: USR2 this long before the time limit, to checkpoint and requeue
    max_requeues: int = 3  # SLURM: timeouts after which a run is no longer requeued (preemptions do not count)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {account: x}

    def check(self, path: str) -> None:
        for key in ("cpus_per_task", "timeout_min", "nodes", "array_parallelism", "max_array_size"):
            require(getattr(self, key) >= 1, f"{path}: {key}", getattr(self, key), "a positive integer")
        for key in ("gpus_per_node", "parallel", "signal_delay_s", "max_requeues"):
            require(getattr(self, key) >= 0, f"{path}: {key}", getattr(self, key), "an integer >= 0")
        require(self.mem_gb > 0, f"{path}: mem_gb", self.mem_gb, "> 0")
        if self.tasks_per_node is not None:
            require(self.tasks_per_node >= 1, f"{path}: tasks_per_node", self.tasks_per_node, "a positive integer or null")
            if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
                raise ConfigError(f"{path}: tasks_per_node={self.tasks_per_node} with gpus_per_node={self.gpus_per_node}: a GPU "
                                  f"profile runs one task per GPU; leave tasks_per_node out (null), or set gpus_per_node=0 "
                                  f"for CPU tasks")
        # submitit's local executor starts tasks on this machine only; debug runs one task in this process.
        if self.executor != "slurm" and self.nodes > 1:
            raise ConfigError(f"{path}: nodes={self.nodes} with executor={self.executor}: only executor=slurm spans "
                              f"several nodes; use nodes=1 (tasks_per_node still gives several tasks with local)")
        if self.executor == "debug" and tasks_per_node(self) > 1:
            raise ConfigError(f"{path}: tasks_per_node={tasks_per_node(self)} with executor=debug: debug runs one task in "
                              f"this process; use executor local or slurm for several tasks")


def tasks_per_node(profile: ClusterProfile | DictConfig) -> int:
    """Tasks of a run on each node: the profile's `tasks_per_node`, else one per GPU, else 1. Each task is
    one rank of the run's process group (nccl with GPUs, gloo without)."""
    if profile.tasks_per_node is not None:
        return profile.tasks_per_node
    return max(1, profile.gpus_per_node)


def check_devices(profile: DictConfig, devices: Iterable[str], where: str) -> None:
    """Refuse, before anything is submitted, jobs whose GPUs do not match their runs' `train.device`:
    a job with gpus_per_node=0 sees no GPU (SLURM allocates none; submitit's local executor hides them),
    so cuda runs would queue and then crash, and GPUs held by cpu runs sit idle. `debug` runs in this process."""
    if profile.executor == "debug":
        return
    devices = sorted(set(devices))
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda and profile.gpus_per_node == 0:
        raise ConfigError(f"{where}: gpus_per_node=0 but the runs ask for train.device={cuda[0]}: the jobs would get no GPU; "
                          f"pick a GPU profile (cluster=slurm-gpu), add cluster.gpus_per_node=1, or set train.device=cpu")
    if "cpu" in devices and profile.gpus_per_node > 0:
        raise ConfigError(f"{where}: gpus_per_node={profile.gpus_per_node} but runs use train.device=cpu: their GPUs "
                          f"would sit idle; set train.device=cuda, or cluster.gpus_per_node=0 (a CPU profile)")
