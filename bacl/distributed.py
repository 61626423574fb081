"""Data parallelism: one global batch split into contiguous per-rank slices.

The contrastive loss follows open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`:
each rank scores its own rows against the gathered global batch, and
`torch.distributed.nn.functional.all_gather` passes gradients back to the rank that owns each
feature. `DistributedDataParallel` (the trainer wraps the method in it) averages gradients over
ranks in buckets, overlapped with the backward; with equal slices this equals the
single-process gradient of the global-batch loss. Random draws (captions, negatives, Gumbel
noise) are made for the whole global batch on every rank and sliced, so every rank consumes
its generator exactly like a single process would.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from bacl.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int) -> slice:
        if global_batch % self.size:
            raise ConfigError(f"train.batch_size={global_batch} must be divisible by the {self.size} ranks")
        local = global_batch // self.size
        return slice(self.rank * local, (self.rank + 1) * local)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` along dim 0, keeping the gradient path to each owner."""
        if self.size == 1:
            return x
        return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Detached mean over ranks (for logging and for agreeing on a stop)."""
        if self.size == 1:
            return x.detach()
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / self.size

    def gather_objects(self, obj: object) -> list:
        """Every rank's picklable `obj`, in rank order (small things: stream positions)."""
        if self.size == 1:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def current_world() -> World:
    """The process group set up by the launcher (submitit or torchrun), or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: str) -> World:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR (submitit exports them)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return current_world()


def free_port() -> int:
    """A TCP port free on this machine now, for a local process group's MASTER_PORT (tests, benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
