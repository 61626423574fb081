"""One training run, from a validated config to `<output_dir>/<run_id>/result.json`.

A run directory is self-describing: `config.yaml` (resolved), `metrics.jsonl` (one line
per epoch), `last.pt` (atomic, every `train.checkpoint_every` steps: everything needed to
continue bit-for-bit on CPU), `attention_example.json` (the final model's CLA maps for the
report's heat map), `result.json` and `run.lock`. The method owns its state (parameters,
buffers, its cache of candidate embeddings, its generators), so a checkpoint holds the method's
`state_dict()` and nothing method-specific.

No result lost, no run done twice:
- One writer per run directory. `run()` takes the directory's `RunLock` (flock, released by
  the kernel when the process dies) before it reads the result or resumes; a process that
  finds the lock held returns `{"status": "running"}` and writes nothing.
- The checkpoint is the commit point. It holds, besides the training state, the records of
  every epoch whose end (record, evaluation) came before it. The checkpoint at an epoch's
  last step is written *before* that epoch's end, and a resume from it redoes that end from
  the checkpointed state, RNG included, which is bitwise what an uninterrupted run does
  there (evaluation changes no training state). `metrics.jsonl` is a view of the checkpoint:
  on every start it is rewritten to the checkpoint's records (records written after the
  checkpoint are redone, a torn last line is dropped, a lost one is restored), then appended
  to, fsynced, as epochs end. So a kill anywhere loses no epoch record and duplicates none.
- The final checkpoint is the one at the last step, written before the final evaluation: a
  run resumed there (killed during the final evaluation, or finished but with `result.json`
  missing or unreadable) reruns only the final evaluation. A run is `ok` only with the
  metrics of that evaluation.
- A checkpoint is written only after the parameters and optimizer state are checked finite
  (the loss is checked before each update). A non-finite loss or state stops the run as
  `failed`; `last.pt` stays the last finite checkpoint, whose step `result.json` records.
- A `last.pt` that cannot be loaded is moved aside (`last.pt.corrupt-<time>`), never
  deleted, and the run starts over with a warning; temporary files of interrupted writes
  are removed at start.
- `result.json` is written on every way out: `ok`, `failed` (with the error), or
  `interrupted` (Ctrl-C, SIGTERM, or submitit's SystemExit after it requeued a preempted or
  timed-out job, which then resumes from `last.pt`). SIGTERM is turned into an interruption
  only where nobody else handles it: under submitit its own handlers stay in place.
"""
from __future__ import annotations

import bisect
import itertools
import json
import math
import signal
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from bacl.attention_example import ATTENTION_EXAMPLE, write_attention_example
from bacl.batch import Batch
from bacl.config import run_id, to_container
from bacl.data.split import FeatureSplit
from bacl.data.store import PoolTable
from bacl.data.stream import StreamedSplit, StreamLoader
from bacl.distributed import init_from_env
from bacl.errors import ConfigError
from bacl.evaluate import evaluate
from bacl.method import Method, build_method
from bacl.registry import DATASETS
from bacl.results import (
    RunLock,
    append_jsonl,
    describe_holder,
    git_state,
    package_versions,
    read_result,
    remove_orphans,
    save_checkpoint,
    write_json,
    write_text,
)
from bacl.rng import stream_seed
from bacl.tracking import Tracker, require_packages

CHECKPOINT_KEYS = ("step", "method", "optimizer", "scheduler", "torch_rng", "epoch_sums")


class NonFiniteLoss(RuntimeError):
    """A non-finite loss, or non-finite parameters or optimizer state after an update."""


class Terminated(KeyboardInterrupt):
    """SIGTERM where no one else handles it: the run stops as on Ctrl-C and its result says `interrupted`."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_device(device: str) -> None:
    """A CUDA device must be visible on this machine. Not a load_config check: sweeps are
    submitted from machines without GPUs; this runs where the run runs, before any data."""
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"train.device={device!r}: no CUDA GPU is visible on {socket.gethostname()} "
                          f"(torch.cuda.is_available() is False); use train.device=cpu or run on a GPU node")
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(f"train.device={device!r}: only {count} CUDA GPU(s) visible here: "
                          f"expected cuda or cuda:0 .. cuda:{count - 1}")


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises `Terminated` while the run trains, unless a handler is already set (submitit
    sets its own: it ignores SIGTERM and checkpoints and requeues on USR2)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise Terminated("SIGTERM")
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interruption(err: BaseException, step: int) -> str:
    if isinstance(err, SystemExit):
        return (f"stopped at step {step} by SystemExit({err.code}): submitit exits so after requeueing a preempted "
                f"or timed-out job, which resumes from last.pt")
    cause = "SIGTERM" if isinstance(err, Terminated) else "Ctrl-C (KeyboardInterrupt)"
    return f"stopped at step {step} by {cause}; run it again to resume from last.pt"


def _checkpoint_problem(state, total_steps: int, streamed: bool) -> str | None:
    """Why a loaded last.pt is not a checkpoint of this run, or None."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a checkpoint dict"
    missing = [k for k in (*CHECKPOINT_KEYS, *(("stream",) if streamed else ())) if k not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(state["step"], int) or not 0 <= state["step"] <= total_steps:
        return f"step {state['step']!r} is not in this run's [0, {total_steps}]"
    return None


def _set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.corrupt-<UTC time>[-n]` beside it (kept for inspection, never deleted)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    path.rename(aside)
    return aside


def warmup_cosine(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
    return factor


def exempt_from_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip's rule (training/main.py): no weight decay on gains, biases, norms and the temperature.

    Our CLS tokens are stored [1, 1, W] but are open_clip's 1-D `class_embedding`, so they are exempt too.
    """
    leaf = name.rsplit(".", 1)[-1]
    return (param.ndim < 2 or "bias" in leaf or "norm" in name or "logit_scale" in name
            or name.split(".")[-2:-1] == ["cls"])


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices and embeddings only."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not exempt_from_decay(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if exempt_from_decay(n, p)], "weight_decay": 0.0}]


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_id = run_id(cfg)
        self.run_dir = Path(cfg.output_dir) / self.run_id

    def build(self) -> None:
        """Data, pool, model, method and optimizer; raises ConfigError before any step."""
        cfg = self.cfg
        check_device(cfg.train.device)
        require_packages(cfg.log)
        torch.manual_seed(cfg.seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.world = init_from_env(cfg.train.device)
        self.device = torch.device(cfg.train.device)
        if self.world.size > 1 and self.device.type == "cuda":  # init_from_env chose GPU LOCAL_RANK for this rank
            if self.device.index is not None:
                raise ConfigError(f"train.device={cfg.train.device!r} with {self.world.size} ranks would put every "
                                  f"rank on one GPU: expected train.device=cuda (each rank uses GPU LOCAL_RANK)")
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dataset = DATASETS.entry(cfg.dataset.name).load()(cfg.dataset)
        streamed = cfg.train.stream.enabled
        train = self.dataset.train
        if streamed:  # rank 0 writes the stream index (and a synthetic store) first; the others then read it
            if not self.world.is_main:
                self.world.barrier()
            train = self.dataset.streamed_train(cfg.train.stream)
            if self.world.is_main:
                self.world.barrier()
        test = self.dataset.test_split(cfg.eval.max_items)
        self.setup(train, test, self.dataset.candidate_pool(cfg.pool, streamed=streamed))

    def setup(self, train: FeatureSplit | StreamedSplit, test: FeatureSplit, pool: torch.Tensor | PoolTable) -> None:
        """Model, method and optimizer for given splits and [N, k] pool (benchmarks call this directly)."""
        cfg = self.cfg
        self.train_split, self.test_split = train.to(self.device), test.to(self.device)
        self.batch_size = min(cfg.train.batch_size, train.n_items)
        self.world.rows(self.batch_size)  # a batch the ranks cannot split evenly fails here
        self.loader: StreamLoader | None = None
        if isinstance(train, StreamedSplit):
            s = cfg.train.stream
            self.loader = StreamLoader(train.index, self.batch_size, s.readers or self.world.size, s.buffer_size,
                                       cfg.seed, self.world, s.prefetch)
            self.epoch_steps = [self.loader.steps(e) for e in range(cfg.train.epochs)]
            if min(self.epoch_steps) == 0:
                raise ConfigError(f"train.batch_size={self.batch_size}: some of the {self.loader.readers} stream "
                                  f"readers hold fewer than batch_size / readers rows in an epoch; "
                                  f"expected a smaller batch or fewer train.stream.readers")
        else:
            self.epoch_steps = [train.n_items // self.batch_size] * cfg.train.epochs
        self.epoch_ends = list(itertools.accumulate(self.epoch_steps))
        self.total_steps = self.epoch_ends[-1]
        self.method: Method = build_method(cfg, self.train_split, pool.to(self.device), self.world).to(self.device)
        if cfg.train.compile:
            for path in ("shared", "encode", "cross_map"):
                setattr(self.method.model, path, torch.compile(getattr(self.method.model, path), dynamic=True))
        # the bank's shard differs per rank: with several ranks each checkpoints its own beside last.pt
        self.bank_keys = [k for k in self.method.state_dict() if k.startswith("bank.")]
        self.rank_keys = self.bank_keys if self.world.size > 1 else []
        self.forward: nn.Module = self.method
        if self.world.size > 1:
            self.forward = DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # buffers (variance_aware's EMA) come from the gathered batch: equal on every rank
                find_unused_parameters=True)  # e.g. CLIP never uses the match head; the bank is extra state, not synced
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda")
        self.params = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(decay_groups(self.method, cfg.train.weight_decay), lr=cfg.train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.total_steps, cfg.train.warmup_fraction))
        self.step = 0
        self.epoch_sums: dict[str, float] = defaultdict(float)  # running means of the current epoch
        self.records: list[dict] = []  # metrics.jsonl: one record per ended epoch
        self.checkpoint_step: int | None = None  # the step of the last.pt on disk (None: none yet)

    # ---- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint; collective with several ranks (it gathers every stream reader's position)."""
        state = {
            "step": self.step,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch_sums": dict(self.epoch_sums),
            "records": list(self.records),  # epochs ended before this step (the module docstring)
            "world_size": self.world.size,
        }
        if self.loader is not None:
            state["stream"] = {j: s for part in self.world.gather_objects(self.loader.state_dict())
                               for j, s in part.items()}
        return state

    def rank_path(self, step: int) -> Path:
        """This rank's part of the checkpoint at `step` (its bank shard), when ranks hold different state."""
        return self.run_dir / f"last.rank{self.world.rank}-of{self.world.size}.step{step}.pt"

    def load(self, state: dict) -> None:
        saved = state.get("world_size", 1)
        if saved != self.world.size and self.bank_keys:
            raise ConfigError(f"last.pt (step {state['step']}) was written by {saved} rank(s), each holding its own "
                              f"shard of the embedding bank; this run has {self.world.size}: resume it with {saved}")
        self.step = state["step"]
        if self.rank_keys:
            path = self.rank_path(self.step)
            if not path.exists():
                raise ConfigError(f"{path.name} is missing: last.pt at step {self.step} needs this rank's part "
                                  f"of the embedding bank, which every rank writes before last.pt")
            state["method"].update(torch.load(path, weights_only=False, mmap=True))  # no second copy of the shard
        self.method.load_state_dict(state["method"])
        if self.loader is not None:
            self.loader.load_state_dict(state["stream"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch_sums = defaultdict(float, state["epoch_sums"])
        records = state.get("records")
        if records is None:  # written before checkpoints held records: metrics.jsonl has them
            records = [r for r in self._logged_records() if r.get("step", math.inf) < self.step]
        self.records = list(records)
        self.checkpoint_step = self.step

    def _logged_records(self) -> list[dict]:
        """The parseable records of metrics.jsonl (restore_metrics reports the others)."""
        try:
            lines = (self.run_dir / "metrics.jsonl").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def restore_metrics(self) -> None:
        """metrics.jsonl := the records the checkpoint holds: epochs logged after it are dropped (they
        are redone), a torn or corrupt line is dropped and a lost record restored, with a warning."""
        path = self.run_dir / "metrics.jsonl"
        expected = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            text = None
        if text == expected or (text is None and not expected):
            return
        lines = (text or "").splitlines()
        for i, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                where = "its last line, cut short by a kill during the write" if i == len(lines) else f"line {i}"
                _say(f"warning: {path}: {where} is not valid JSON: dropped ({line[:60]!r})")
        if not (text or "").startswith(expected):
            _say(f"warning: {path}: restored the records of epochs 1-{len(self.records)} from last.pt")
        write_text(path, expected)

    def _check_finite(self) -> None:
        """Raise NonFiniteLoss when a parameter or an optimizer state tensor holds NaN or inf."""
        bad = []
        for name, p in self.method.named_parameters():
            if not bool(torch.isfinite(p).all()):
                bad.append(name)
            for key, value in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    bad.append(f"{name} (optimizer {key})")
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise NonFiniteLoss(f"non-finite parameters or optimizer state after step {self.step}: "
                                f"{', '.join(bad[:5])}{more}")

    def checkpoint(self) -> None:
        """last.pt, once the updated state is checked finite: a bad update never replaces a good checkpoint.

        With per-rank state, each rank first writes its part for this step; rank 0's last.pt, written
        after every part, is the commit point, and only then are the parts of older steps removed."""
        self._check_finite()
        state = self.state()
        if self.rank_keys:
            save_checkpoint(self.rank_path(self.step), {k: state["method"].pop(k) for k in self.rank_keys})
            self.world.barrier()
        if self.world.is_main:
            save_checkpoint(self.run_dir / "last.pt", state)
        if self.rank_keys:
            self.world.barrier()
            for old in self.run_dir.glob(f"last.rank{self.world.rank}-of{self.world.size}.step*.pt"):
                if old != self.rank_path(self.step):
                    old.unlink(missing_ok=True)
        self.checkpoint_step = self.step

    def read_checkpoint(self) -> dict | None:
        """last.pt, or None without one. One that cannot be loaded, or is no checkpoint of this run,
        is moved aside (renamed, never deleted) and the run starts over, with a warning naming it."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=False)
            problem = _checkpoint_problem(state, self.total_steps, self.loader is not None)
        except FileNotFoundError:  # moved aside by rank 0 meanwhile
            return None
        except Exception as err:  # torch raises many kinds for random bytes, a truncated or an empty file
            problem = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if problem is None:
            return state
        if self.world.is_main:
            aside = _set_aside(path)
            _say(f"warning: {path} cannot be resumed from ({problem}); moved aside to {aside.name}, "
                 f"the run starts over from step 0")
        return None

    # ---- the loop ----------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.cfg.seed, "epoch_order", epoch))
        return torch.randperm(self.train_split.n_items, generator=gen)

    def batches(self, epoch: int, first: int) -> Iterator[Batch]:
        """This rank's batches of steps first, first + 1, ... of `epoch`."""
        if self.loader is not None:
            for b in self.loader.batches(epoch, first):
                yield self.method.stream_batch(b.ids, b.items, b.vision, b.text, self.batch_size)
            return
        order = self._epoch_order(epoch)
        for i in range(first, self.epoch_steps[epoch]):
            yield self.method.batch(order[i * self.batch_size:(i + 1) * self.batch_size])

    def backward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of this rank's rows, gradients averaged over ranks (by DDP); stops on a non-finite loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            out = self.forward(batch, self.step, self.step / self.total_steps)
        loss = sum(v for k, v in out.items() if k.endswith("_loss"))
        if not torch.isfinite(self.world.mean(loss)):
            terms = {k: float(v.detach()) for k, v in out.items() if k.endswith("_loss")}
            raise NonFiniteLoss(f"non-finite loss at step {self.step}: {terms}")
        loss.backward()
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
        main = self.world.is_main
        progress = tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg.method.name} {self.run_id}",
                        unit="step", dynamic_ncols=True, disable=not main,
                        mininterval=0.1 if sys.stderr.isatty() else 30)  # job logs: a line per 30 s
        tracker = Tracker(cfg.log, self.run_dir, self.run_id, to_container(cfg), self.step, self.batch_size, main)
        try:
            return self._epochs(progress, tracker)
        finally:
            if self.loader is not None:
                self.loader.close()
            tracker.close()
            progress.close()

    def _epochs(self, progress: tqdm, tracker: Tracker) -> dict[str, float]:
        cfg = self.cfg
        main = self.world.is_main
        metrics: dict[str, float] = {}
        # at an epoch's last step (a checkpoint there is written before the epoch's end), redo that end
        first_epoch = bisect.bisect_right(self.epoch_ends, max(self.step - 1, 0))
        for epoch in range(first_epoch, cfg.train.epochs):
            offset = self.step - (self.epoch_ends[epoch] - self.epoch_steps[epoch])
            if offset == 0:
                self.epoch_sums = defaultdict(float)
            for batch in self.batches(epoch, offset):
                stats = self.train_step(batch)
                for k, v in stats.items():
                    self.epoch_sums[k] += v
                progress.update(1)
                progress.set_postfix(loss=f"{stats['loss']:.3f}")
                tracker.step(self.step, stats, self.scheduler.get_last_lr()[0])
                if self.step % cfg.train.checkpoint_every == 0 or self.step == self.total_steps:
                    self.checkpoint()  # before this epoch's end below: a resume from it redoes that end
            record = {"epoch": epoch + 1, "step": self.step, "progress": self.step / self.total_steps,
                      "lr": self.scheduler.get_last_lr()[0],
                      "train": {k: v / self.epoch_steps[epoch] for k, v in self.epoch_sums.items()}}
            last_epoch = self.step == self.total_steps
            if main and (last_epoch or (epoch + 1) % cfg.eval.every_epochs == 0):
                metrics = evaluate(self.method.model, self.test_split, cfg.eval.ks, self.dataset.extra_metrics,
                                   rerank_k=cfg.eval.rerank_k if self.method.reranks else 0,
                                   cross_attention=self.method.trains_cross_attention, max_items=cfg.eval.max_items)
                record["eval"] = metrics
            tracker.epoch_end(self.step, record.get("eval"))
            if main and last_epoch and self.method.trains_cross_attention:  # what the report's CLA heat map draws
                write_attention_example(self.method.model, self.test_split, self.run_dir / ATTENTION_EXAMPLE)
            self.records.append(record)
            if main:
                append_jsonl(self.run_dir / "metrics.jsonl", record)
            self.world.barrier()
        return metrics

    def run(self) -> dict:
        """Train, resume, re-evaluate or skip; return the result record that was written.

        A process that finds the run directory locked by another returns `{"status": "running",
        "holder": ...}` and writes nothing. ConfigError (bad input) leaves nothing behind.
        """
        result_path = self.run_dir / "result.json"
        previous = read_result(result_path)  # ConfigError for valid JSON that is not a result
        if previous and previous.get("status") == "ok":
            return previous
        check_device(self.cfg.train.device)
        self.world = init_from_env(self.cfg.train.device)
        main = self.world.is_main
        created = next((d for d in reversed([self.run_dir, *self.run_dir.parents]) if not d.exists()), None)
        lock = RunLock(self.run_dir)
        holder, finished = self._lock(lock, result_path)
        if holder is not None:
            if main:
                _say(f"run {self.run_id}: running in {describe_holder(holder)} ({lock.path} is locked); skipped")
            return {"run_id": self.run_id, "status": "running", "holder": holder, "run_dir": str(self.run_dir)}
        try:
            if finished is not None:  # finished by another process since the first look
                return finished
            with _sigterm_interrupts():
                return self._run_locked(result_path, created, lock)
        finally:
            lock.release()

    def _lock(self, lock: RunLock, result_path: Path) -> tuple[dict | None, dict | None]:
        """(holder, finished): rank 0 takes the lock, then reads the result again under it; every rank learns both."""
        outcome: list = [None, None]
        if self.world.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                holder = lock.acquire()
            except OSError as err:
                raise ConfigError(f"output_dir={self.cfg.output_dir!r}: cannot create the run directory "
                                  f"or its lock file {lock.path}: {err.strerror or err}") from None
            if holder is not None:
                outcome = [holder, None]
            else:
                try:
                    done = read_result(result_path)
                except BaseException:
                    lock.release()
                    raise
                outcome = [None, done if done and done.get("status") == "ok" else None]
        if self.world.size > 1:
            dist.broadcast_object_list(outcome, src=0)
        return outcome[0], outcome[1]

    def _run_locked(self, result_path: Path, created: Path | None, lock: RunLock) -> dict:
        started, t0 = _now(), time.perf_counter()
        main = self.world.is_main
        try:
            self.build()  # bad input fails here, before anything is written
        except ConfigError:
            if main and created is not None:  # leave no trace: the directories made for the lock file
                lock.path.unlink(missing_ok=True)
                for d in [self.run_dir, *self.run_dir.parents]:
                    try:
                        d.rmdir()
                    except OSError:  # something else appeared there meanwhile: keep it
                        break
                    if d == created:
                        break
            raise
        if main:
            for orphan in remove_orphans(self.run_dir):
                _say(f"run {self.run_id}: removed {orphan.name}, left by a write that was interrupted")
            write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg))
        record = {"run_id": self.run_id, "method": self.cfg.method.name, "dataset": self.cfg.dataset.name,
                  "seed": self.cfg.seed, "config": to_container(self.cfg), "data": self.dataset.data_counts(),
                  "packages": package_versions(), "started_at": started}
        git = git_state()
        record.update(git=git, git_commit=git and git["commit"])  # git_commit: the key results before git.dirty had
        ckpt = self.run_dir / "last.pt"
        try:
            state = self.read_checkpoint()
            if state is not None:
                try:
                    self.load(state)
                except ConfigError:  # resumable, but not like this (another world size): the message says how
                    raise
                except Exception as err:
                    raise RuntimeError(f"{ckpt} cannot be restored into this run ({type(err).__name__}: {err}); "
                                       f"move it aside to start the run over") from err
                record["resumed_from_step"] = self.step
            if main:
                self.restore_metrics()
                _say(f"run {self.run_id}: " + (
                    f"finished at step {self.step}; rerunning the final evaluation from {ckpt}"
                    if self.step == self.total_steps else
                    f"resuming from step {self.step} of {self.total_steps} ({ckpt})" if self.step else
                    f"starting ({self.total_steps} steps) in {self.run_dir}"))
            metrics = self.fit()
            if main and not metrics:
                raise RuntimeError("training ended without the final evaluation's metrics")
            record.update(status="ok", metrics=metrics)
        except NonFiniteLoss as err:
            kept = self.checkpoint_step is not None and ckpt.exists()
            record.update(status="failed", error=str(err), checkpoint=str(ckpt) if kept else None,
                          checkpoint_step=self.checkpoint_step if kept else None)
        except Exception as err:
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        except BaseException as err:  # Ctrl-C, SIGTERM, submitit's exit after a requeue
            record.update(status="interrupted", error=_interruption(err, self.step), checkpoint_step=self.checkpoint_step)
            raise
        finally:
            record.update(step=self.step, finished_at=_now(),
                          wall_time_s=round(time.perf_counter() - t0, 3))
            if main:
                write_json(result_path, record)
        return record
