"""One training run, from a validated config to `<output_dir>/<run_id>/result.json`.

A run directory is self-describing: `config.yaml` (resolved), `metrics.jsonl` (one line
per epoch), `last.pt` (atomic, every `train.checkpoint_every` steps: everything needed to
continue bit-for-bit on CPU), `attention_example.json` (the final model's CLA maps for the
report's heat map) and `result.json`. The method owns its state (parameters, buffers, the
candidate-score bank, its generators), so a checkpoint holds the method's `state_dict()`
and nothing method-specific. A run whose result says `ok` is not
redone; one with a checkpoint continues from it. A non-finite loss stops the run as
`failed` with the step, and the last good checkpoint is left untouched.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bacl.attention_example import ATTENTION_EXAMPLE, write_attention_example
from bacl.batch import Batch
from bacl.config import run_id, to_container
from bacl.data.split import FeatureSplit
from bacl.distributed import init_from_env
from bacl.evaluate import evaluate
from bacl.method import Method, build_method
from bacl.registry import DATASETS
from bacl.results import append_jsonl, git_commit, package_versions, read_json, save_checkpoint, write_json, write_text


class NonFiniteLoss(RuntimeError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def warmup_cosine(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
    return factor


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_id = run_id(cfg)
        self.run_dir = Path(cfg.output_dir) / self.run_id

    def build(self) -> None:
        """Data, pool, model, method and optimizer; raises ConfigError before any step."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = torch.device(cfg.train.device)
        self.world = init_from_env(cfg.train.device)
        self.dataset = DATASETS.entry(cfg.dataset.name).load()(cfg.dataset)
        self.setup(self.dataset.train, self.dataset.test, self.dataset.candidate_pool(cfg.pool))

    def setup(self, train: FeatureSplit, test: FeatureSplit, pool: torch.Tensor) -> None:
        """Model, method and optimizer for given splits and [N, k] pool (benchmarks call this directly)."""
        cfg = self.cfg
        self.train_split, self.test_split = train.to(self.device), test.to(self.device)
        self.batch_size = min(cfg.train.batch_size, train.n_items)
        self.world.rows(self.batch_size)  # a batch the ranks cannot split evenly fails here
        self.steps_per_epoch = train.n_items // self.batch_size
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.method: Method = build_method(cfg, self.train_split, pool.to(self.device), self.world).to(self.device)
        if cfg.train.compile:
            for path in ("shared", "encode", "cross_map"):
                setattr(self.method.model, path, torch.compile(getattr(self.method.model, path), dynamic=True))
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda")
        self.params = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.total_steps, cfg.train.warmup_fraction))
        self.step = 0
        self.epoch_sums: dict[str, float] = defaultdict(float)  # running means of the current epoch

    # ---- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch_sums": dict(self.epoch_sums),
        }

    def load(self, state: dict) -> None:
        self.step = state["step"]
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch_sums = defaultdict(float, state["epoch_sums"])
        metrics_path = self.run_dir / "metrics.jsonl"
        if self.world.is_main and metrics_path.exists():  # drop epochs logged after this checkpoint: they are redone
            kept = [line for line in metrics_path.read_text().splitlines()
                    if json.loads(line)["step"] <= self.step]
            write_text(metrics_path, "".join(line + "\n" for line in kept))

    # ---- the loop ----------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(self.train_split.n_items, generator=gen)

    def backward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of this rank's rows, gradients averaged over ranks; stops on a non-finite loss."""
        with self.autocast:
            out = self.method(batch, self.step, self.step / self.total_steps)
        loss = sum(v for k, v in out.items() if k.endswith("_loss"))
        if not torch.isfinite(self.world.mean(loss)):
            terms = {k: float(v.detach()) for k, v in out.items() if k.endswith("_loss")}
            raise NonFiniteLoss(f"non-finite loss at step {self.step}: {terms}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.params)
        return loss, out

    def train_step(self, batch: Batch) -> dict[str, float]:
        loss, out = self.backward(batch)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        stats = {k: float(self.world.mean(v)) for k, v in out.items()}
        stats["loss"] = float(self.world.mean(loss))
        return stats

    def fit(self) -> dict[str, float]:
        cfg = self.cfg
        metrics_path = self.run_dir / "metrics.jsonl"
        ckpt_path = self.run_dir / "last.pt"
        main = self.world.is_main
        progress = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.method.name} {self.run_id}",
                        unit="step", dynamic_ncols=True, disable=not main,
                        mininterval=0.1 if sys.stderr.isatty() else 30)  # job logs: a line per 30 s
        metrics: dict[str, float] = {}
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            order = self._epoch_order(epoch)
            if offset == 0:
                self.epoch_sums = defaultdict(float)
            for i in range(offset, self.steps_per_epoch):
                stats = self.train_step(self.method.batch(order[i * self.batch_size:(i + 1) * self.batch_size]))
                for k, v in stats.items():
                    self.epoch_sums[k] += v
                progress.update(1)
                progress.set_postfix(loss=f"{stats['loss']:.3f}")
                if main and self.step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(ckpt_path, self.state())
            record = {"epoch": epoch + 1, "step": self.step, "progress": self.step / self.total_steps,
                      "lr": self.scheduler.get_last_lr()[0],
                      "train": {k: v / self.steps_per_epoch for k, v in self.epoch_sums.items()}}
            last_epoch = self.step == self.total_steps
            if main and (last_epoch or (epoch + 1) % cfg.eval.every_epochs == 0):
                metrics = evaluate(self.method.model, self.test_split, cfg.eval.ks, self.dataset.extra_metrics,
                                   rerank_k=cfg.eval.rerank_k if self.method.reranks else 0,
                                   cross_attention=self.method.trains_cross_attention)
                record["eval"] = metrics
            if main and last_epoch and self.method.trains_cross_attention:  # what the report's CLA heat map draws
                write_attention_example(self.method.model, self.test_split, self.run_dir / ATTENTION_EXAMPLE)
            if main:
                append_jsonl(metrics_path, record)
            self.world.barrier()
        progress.close()
        if main:
            save_checkpoint(ckpt_path, self.state())
        return metrics

    def run(self) -> dict:
        """Train (or resume, or skip) and return the result record that was written."""
        result_path = self.run_dir / "result.json"
        previous = read_json(result_path)
        if previous and previous.get("status") == "ok":
            return previous
        started, t0 = _now(), time.perf_counter()
        self.build()  # bad input fails here, before anything is written
        main = self.world.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg))
        record = {"run_id": self.run_id, "method": self.cfg.method.name, "dataset": self.cfg.dataset.name,
                  "seed": self.cfg.seed, "config": to_container(self.cfg), "data": self.dataset.data_counts(),
                  "git_commit": git_commit(), "packages": package_versions(), "started_at": started}
        try:
            ckpt = self.run_dir / "last.pt"
            if ckpt.exists():
                self.load(torch.load(ckpt, weights_only=False))
                record["resumed_from_step"] = self.step
            metrics = self.fit()
            record.update(status="ok", metrics=metrics)
        except NonFiniteLoss as err:
            record.update(status="failed", error=str(err),
                          checkpoint=str(self.run_dir / "last.pt") if (self.run_dir / "last.pt").exists() else None)
        except Exception as err:
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            record.update(step=self.step, finished_at=_now(),
                          wall_time_s=round(time.perf_counter() - t0, 3))
            if main:
                write_json(result_path, record)
        return record
