"""Training-step cost of BACL against CLIP on the same model, batch and features.

Every method runs through the real `Trainer` (`setup` + `_batch` + `train_step`) on random
fp16 features shaped like the LAION store (17 image tokens, 32 caption tokens, d = 512) and a
random [N, k] pool, so the costs are the harness's own, not a re-implementation. The
methods are timed interleaved (one step of each in turn, repeated) and the fastest repetition
is kept: on a shared machine other work only ever adds time, so the minimum is the estimate
least disturbed by it (timeit's rule), and interleaving makes slow phases hit all methods.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacl.config import load_config  # noqa: E402
from bacl.data.split import FeatureSplit  # noqa: E402
from bacl.distributed import World  # noqa: E402
from bacl.trainer import Trainer  # noqa: E402

# The component waterfall: each method adds one BACL part to the one before it.
WATERFALL = (
    ("clip", "CLIP: symmetric InfoNCE, in-batch negatives"),
    ("clip_itm", "+ match head (ITM) on an in-batch hard negative, as every arm but clip trains it"),
    ("uniform_hn", "+ pool negatives: text pass of m per anchor, in the contrast, and ITM on one"),
    ("hardest", "+ boundary scores: bank gather and scoring of the k candidates"),
    ("bns_only", "+ BNS policy and Gumbel selection"),
    ("bacl", "+ CLA: cross-attention maps of positive and hardest negative"),
)


@dataclass(frozen=True)
class Shape:
    batch: int = 256
    k: int = 20  # pool candidates per anchor
    vision_tokens: int = 17  # pooled + 4 x 4 patch grid (the LAION store)
    text_tokens: int = 32
    dim: int = 512  # frozen feature width (ViT-B-16)
    width: int = 512  # the trainable model's width (the paper's)
    layers: int = 4
    captions_per_item: int = 1

    def overrides(self) -> list[str]:
        return [f"train.batch_size={self.batch}", f"pool.k={self.k}", f"model.width={self.width}",
                f"model.layers={self.layers}", "model.heads=8"]


def random_split(shape: Shape, n_items: int, seed: int = 0) -> FeatureSplit:
    """fp16 token features like the store's, L2-normalised rows of a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    n_text = n_items * shape.captions_per_item

    def tokens(n: int, length: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, length, shape.dim, generator=gen), dim=-1).half()
    return FeatureSplit(vision=tokens(n_items, shape.vision_tokens), text=tokens(n_text, shape.text_tokens),
                        text_item=torch.arange(n_text) // shape.captions_per_item)


def random_pool(n_items: int, k: int, seed: int = 0) -> torch.Tensor:
    """[N, k] distinct neighbours other than the anchor (the pool's contract, not its search)."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.stack([torch.randperm(n_items - 1, generator=gen)[:k] for _ in range(min(n_items, 64))])
    rows = torch.arange(n_items)[:, None]
    return (rows + 1 + offsets[rows.squeeze(1) % offsets.shape[0]]) % n_items


class Bench:
    """One method's trainer on a shared split and pool, stepping through one epoch order."""

    def __init__(self, method: str, shape: Shape, split: FeatureSplit, pool: torch.Tensor, device: str,
                 extra: list[str] = ()):
        cfg = load_config([f"method={method}", f"train.device={device}", *shape.overrides(), *extra])
        self.trainer = Trainer(cfg)
        t = self.trainer
        t.device, t.world = torch.device(device), World()
        torch.manual_seed(0)
        t.setup(split, split, pool)
        self.order = torch.randperm(split.n_items, generator=torch.Generator().manual_seed(0))
        self.i = 0

    def next_items(self) -> torch.Tensor:
        b = self.trainer.batch_size
        if (self.i + 1) * b > self.order.numel():
            self.i = 0
        items = self.order[self.i * b:(self.i + 1) * b]
        self.i += 1
        return items

    def step(self) -> None:
        self.trainer.train_step(self.trainer.method.batch(self.next_items()))

    def selection(self) -> Callable[[], None]:
        """BNS alone on one batch: candidates, scores, policy, Gumbel pick and the policy's backward."""
        t = self.trainer
        batch = t.method.batch(self.next_items())
        with torch.no_grad():
            img = t.method.model.encode(batch.vision, "vision").embedding
            txt = t.method.model.encode(batch.text, "text").embedding

        def run() -> None:
            t.method.select_negatives(batch, img, txt, t.step, 0.5)[1]["policy_loss"].backward()
        return run

    def bank_refresh_per_step(self) -> float:
        """Seconds per step of the per-epoch bank refresh (0 for methods without a bank).

        A full re-encode is timed and scaled by the rows an epoch leaves stale: training
        rewrites the caption it draws for each item, so with c captions per item about
        1 − 1/c of the rows (an upper bound: rewrites by negatives are not counted).
        """
        method = self.trainer.method
        if method.bank is None:
            return 0.0
        bank, encode = method.bank, lambda t: method.model.encode(t, "text").embedding
        every = int(bank.written.max()) + bank.refresh_every  # makes every row stale
        start = time.perf_counter()
        bank.refresh(every, self.trainer.train_split.text_tokens, encode)
        sync(self.trainer.device)
        split = self.trainer.train_split
        stale = 1 - split.n_items / split.n_texts
        return (time.perf_counter() - start) * stale / self.trainer.epoch_steps[0]


def benches(methods: Iterable[str], shape: Shape, device: str, steps: int) -> dict[str, Bench]:
    """Trainers of `methods` on one shared split and pool, with room for `steps` batches in one epoch."""
    n = items_for(shape, steps)
    split, pool = random_split(shape, n), random_pool(n, shape.k)
    return {m: Bench(m, shape, split, pool, device) for m in methods}


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int, device: str) -> dict[str, float]:
    """Fastest of `reps` timings of each callable, timed in turn so load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


# ---- memory ----------------------------------------------------------------------------------
def saved_activation_bytes(bench: Bench) -> int:
    """Bytes autograd keeps for the backward of one step (unique storages, parameters excluded).

    The dominant, batch-proportional part of a training step's memory, counted exactly and
    alike on every device; CPU has no allocator statistics to give a peak.
    """
    params = {p.untyped_storage().data_ptr() for p in bench.trainer.method.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bench.step()
    return sum(saved.values())


def peak_step_bytes(bench: Bench, device: str) -> int | None:
    """CUDA: peak allocated during one step above what is held between steps; None elsewhere."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    bench.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ---- scaling fits ----------------------------------------------------------------------------
def fitted_exponent(xs: list[float], ts: list[float]) -> float:
    """Least-squares slope of log t against log x."""
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def items_for(shape: Shape, steps: int) -> int:
    """Enough items that `steps` batches stay inside one epoch (no bank refresh while timing)."""
    return shape.batch * max(steps + 2, 4)
