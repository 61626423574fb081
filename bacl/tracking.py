"""Per-step scalars of a run to TensorBoard (default) and optionally Weights & Biases.

`metrics.jsonl` has one line per epoch, and a LAION epoch lasts hours, so every
`log.every_steps` steps rank 0 writes the mean of each training statistic over those steps
(every loss term, α where the method has one, the temperature), the learning rate and the
training throughput, and at each epoch's end its held-out metrics. It reads only the floats the
loop already has (no extra device sync) and draws no random number, so results do not change.

TensorBoard event files go to `<run_dir>/tb/`. A run resumed from the checkpoint of step s
opens a new event file there with `purge_step` s + 1, so TensorBoard drops what the killed
process wrote after that checkpoint (those steps are trained again) and the series reads as
one. (An epoch end redone at s may then show its held-out point twice.)
W&B runs offline unless `WANDB_MODE` says otherwise (cluster nodes rarely reach the
internet; `wandb sync <run_dir>/wandb/offline-run-*` uploads later), resuming the W&B run
whose id is the run id.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bacl.errors import ConfigError

TB_DIR = "tb"


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("log.tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or set log.tensorboard=false)") from None
    return SummaryWriter


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("log.wandb=true needs the wandb package, which is not a dependency: pip install wandb "
                          "(or set log.wandb=false)") from None
    return wandb


def require_packages(log: Any) -> None:
    """Raise ConfigError before training when a requested tracker's package is missing."""
    if log.tensorboard:
        _summary_writer()
    if log.wandb:
        _wandb()


class Tracker:
    """The writers of one run (rank 0 only; other ranks get a tracker that writes nothing)."""

    def __init__(self, log: Any, run_dir: Path, run_id: str, config: dict, start_step: int, batch_size: int,
                 main: bool):
        self.every = log.every_steps
        self.batch_size = batch_size
        self.tensorboard = self.wandb = None
        if main and log.tensorboard:
            self.tensorboard = _summary_writer()(str(Path(run_dir) / TB_DIR), purge_step=start_step + 1 if start_step else None)
        if main and log.wandb:
            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = _wandb().init(project=os.environ.get("WANDB_PROJECT", "bacl"), id=run_id, name=run_id,
                                       dir=str(run_dir), config=config, resume="allow")
        self.sums: dict[str, float] = defaultdict(float)
        self.n = 0  # steps in self.sums
        self.clock, self.timed = time.perf_counter(), 0  # throughput counts training steps only

    @property
    def active(self) -> bool:
        return self.tensorboard is not None or self.wandb is not None

    def step(self, step: int, stats: dict[str, float], lr: float) -> None:
        """Add one step's statistics; every `every_steps` steps write their means."""
        if not self.active:
            return
        for k, v in stats.items():
            self.sums[k] += v
        self.n += 1
        self.timed += 1
        if step % self.every:
            return
        now = time.perf_counter()
        scalars = {f"train/{k}": v / self.n for k, v in self.sums.items()}
        scalars["train/lr"] = lr
        scalars["train/samples_per_s"] = self.timed * self.batch_size / max(now - self.clock, 1e-9)
        self._write(step, scalars)
        self.sums.clear()
        self.n = 0
        self.clock, self.timed = now, 0

    def epoch_end(self, step: int, eval_metrics: dict[str, float] | None) -> None:
        """Held-out metrics of an evaluated epoch; the throughput clock restarts after the evaluation."""
        if self.active and eval_metrics:
            self._write(step, {f"eval/{k}": v for k, v in eval_metrics.items() if isinstance(v, (int, float))})
        self.clock, self.timed = time.perf_counter(), 0

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close the writers (on every way out of training, so a killed run's events are kept)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
