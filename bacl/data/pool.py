"""BNS candidate pools: the k nearest items of each anchor in the frozen space, by FAISS.

Exact search costs N^2·d, which stops being feasible somewhere past 10^5 items on a CPU;
`pool.index.kind` switches to an approximate index (IVF or HNSW) for larger corpora (see
benchmarks/pool_build.py). Flat and IVF pools are reproducible at a fixed thread count; faiss
inserts HNSW nodes concurrently, so with several threads a few HNSW pool entries may differ
from run to run.

On real data the pool also drops each anchor's duplicates (`filtered_candidate_pool`):
candidates whose frozen cosine to the anchor exceeds `pool.duplicate_threshold`, and
candidates with a caption identical to one of the anchor's (`pool.drop_same_caption`). Both
are false negatives that `hardest` and late BACL, which prefer the hardest candidates, would
otherwise pick first. The synthetic dataset keeps `candidate_pool`: its items are distinct
attribute tuples by construction, so its closest candidates are ambiguous negatives, not copies.
"""
from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bacl.errors import ConfigError, require
from bacl.extras import optional_import

faiss = optional_import("faiss")  # the [cpu] or [gpu] extra

KEY = "pool.index"
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
GPU_CHOICES = ("auto", "never", "always")
TRAIN_SEED = 0  # fixed so that the IVF training sample, hence the pool, is reproducible

Fn = TypeVar("Fn", bound=Callable[..., Any])


@dataclass
class IndexConfig:
    kind: str = "flat"  # flat (exact) | ivf | ivfpq | hnsw, all inner product on unit vectors = cosine
    nlist: int = 0  # ivf lists; 0 -> about 4*sqrt(N)
    nprobe: int = 16  # ivf / ivfpq lists searched per query
    pq_m: int = 64  # ivfpq: bytes per vector (sub-quantizers of 8 bits); must divide d
    hnsw_m: int = 32  # hnsw graph degree
    ef_search: int = 128
    ef_construction: int = 200
    train_size: int = 0  # ivf training sample; 0 -> min(N, 256*nlist), what faiss k-means would use
    query_batch: int = 65536  # queries per search call: bounds result memory, drives the progress bar
    gpu: str = "auto"  # auto (faiss-gpu and a GPU present) | never | always (error if unavailable)


def validate_index(cfg: IndexConfig | DictConfig, key: str = KEY) -> None:
    """Static checks only: whether a GPU is usable is known where the pool is built, not where a sweep is submitted."""
    require(cfg.kind in KINDS, f"{key}.kind", cfg.kind, " | ".join(KINDS))
    require(cfg.gpu in GPU_CHOICES, f"{key}.gpu", cfg.gpu, " | ".join(GPU_CHOICES))
    require(not (cfg.kind == "hnsw" and cfg.gpu == "always"), f"{key}.gpu", cfg.gpu,
             f"auto or never with {key}.kind='hnsw': faiss has no GPU implementation of HNSW")
    require(cfg.nlist >= 0, f"{key}.nlist", cfg.nlist, ">= 0 (0 picks about 4*sqrt(N))")
    require(cfg.pq_m > 0, f"{key}.pq_m", cfg.pq_m, "a positive divisor of the embedding width")
    require(cfg.nprobe > 0, f"{key}.nprobe", cfg.nprobe, "> 0")
    require(cfg.hnsw_m >= 2, f"{key}.hnsw_m", cfg.hnsw_m, ">= 2")
    require(cfg.ef_search > 0, f"{key}.ef_search", cfg.ef_search, "> 0")
    require(cfg.ef_construction > 0, f"{key}.ef_construction", cfg.ef_construction, "> 0")
    require(cfg.train_size >= 0, f"{key}.train_size", cfg.train_size, ">= 0 (0 picks min(N, 256*nlist))")
    require(cfg.query_batch > 0, f"{key}.query_batch", cfg.query_batch, "> 0")


def torch_threads(fn: Fn) -> Fn:
    """faiss has its own OpenMP pool, blind to torch.set_num_threads (train.threads): mirror it."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(torch.get_num_threads())
        try:
            return fn(*args, **kwargs)
        finally:
            faiss.omp_set_num_threads(before)
    return wrapper  # type: ignore[return-value]


def _use_gpu(cfg: IndexConfig | DictConfig) -> bool:
    if cfg.gpu == "never":
        return False
    has_gpu_build = hasattr(faiss, "StandardGpuResources")
    gpus = faiss.get_num_gpus() if has_gpu_build else 0
    if cfg.gpu == "always" and not gpus:
        why = "faiss sees no GPU" if has_gpu_build else "faiss-gpu is not installed (this is the faiss-cpu build)"
        raise ConfigError(f"{KEY}.gpu='always' cannot be honoured: {why}; expected auto or never here")
    if gpus and cfg.kind == "hnsw":
        warnings.warn("faiss has no GPU implementation of HNSW: the pool is built and searched on CPU", stacklevel=2)
        return False
    return gpus > 0


def _nlist(cfg: IndexConfig | DictConfig, n: int) -> int:
    nlist = cfg.nlist or max(1, round(4 * math.sqrt(n)))
    require(nlist <= n, f"{KEY}.nlist", cfg.nlist, f"at most the number of items, {n}")
    return nlist


def training_rows(n: int, cfg: IndexConfig | DictConfig) -> np.ndarray | None:
    """The sorted rows an IVF index is trained on (None: all n), drawn with TRAIN_SEED so the pool is reproducible."""
    nlist = _nlist(cfg, n)
    size = min(n, cfg.train_size or 256 * nlist)
    require(size >= nlist, f"{KEY}.train_size", cfg.train_size, f"0 or at least {KEY}.nlist={nlist}")
    if size == n:
        return None
    return np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))


def empty_index(cfg: IndexConfig | DictConfig, n: int, d: int) -> faiss.Index:
    """The index `cfg` describes for n vectors of width d, untrained and empty (on the GPUs where `cfg.gpu` says so)."""
    validate_index(cfg)
    if cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    elif cfg.kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, _nlist(cfg, n), faiss.METRIC_INNER_PRODUCT)
        index.nprobe = cfg.nprobe
    elif cfg.kind == "ivfpq":
        require(d % cfg.pq_m == 0, f"{KEY}.pq_m", cfg.pq_m, f"a divisor of the embedding width {d}")
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, _nlist(cfg, n), cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = cfg.nprobe
    else:
        index = faiss.IndexFlatIP(d)
    return to_device(index, cfg)


def to_device(index: faiss.Index, cfg: IndexConfig | DictConfig) -> faiss.Index:
    """`index` on every GPU if `cfg.gpu` and the faiss build allow it, else unchanged."""
    if _use_gpu(cfg):
        index = faiss.index_cpu_to_all_gpus(index)
        if cfg.kind in ("ivf", "ivfpq"):  # also reaches the per-GPU replicas, whatever the cloner copied
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", cfg.nprobe)
    return index


@torch_threads
def build_index(x: np.ndarray, cfg: IndexConfig | DictConfig | None = None) -> faiss.Index:
    """An inner-product index over `x` (float32, rows L2-normalised, so scores are cosines)."""
    cfg = IndexConfig() if cfg is None else cfg
    n, d = x.shape
    index = empty_index(cfg, n, d)
    if not index.is_trained:
        rows = training_rows(n, cfg)
        index.train(x if rows is None else x[rows])
    index.add(x)
    return index


class Vectors(Protocol):
    """What the searches read besides an array: rows by index and an exact search over all of them
    (bacl/data/pool_out_of_core.py reads both from memory-mapped shards, a chunk at a time)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, rows: np.ndarray) -> np.ndarray: ...

    def knn(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]: ...


def exact_knn(queries: np.ndarray, base: np.ndarray | Vectors, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the `depth` largest inner products of each query over all of `base`."""
    if isinstance(base, np.ndarray):
        return faiss.knn(queries, base, depth, metric=faiss.METRIC_INNER_PRODUCT)
    return base.knn(queries, depth)


def normalised(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    x = torch.as_tensor(embeddings).detach().cpu().float()
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())


def _without_anchor(found: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """Drop each row's anchor; if ties or an approximate search left it out, drop the last instead."""
    is_anchor = found == anchors[:, None]
    keep = np.argsort(is_anchor, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, keep, axis=1)


@torch_threads
def search_pool(searcher: faiss.Index, x: np.ndarray | Vectors, rows: np.ndarray, k: int,
                query_batch: int = IndexConfig.query_batch) -> np.ndarray:
    """[len(rows), k] pools of the items `rows` of `x`; separate from candidate_pool so a benchmark
    can time the production search on a subset of queries."""
    pool = np.empty((len(rows), k), dtype=np.int64)
    bar = tqdm(total=len(rows), desc="candidate pool", unit="query", dynamic_ncols=True,
               disable=len(rows) <= query_batch or not sys.stderr.isatty())
    for start in range(0, len(rows), query_batch):
        batch = rows[start:start + query_batch]
        _, found = searcher.search(x[batch], k + 1)
        pool[start:start + len(batch)] = _without_anchor(found, batch, k)
        bar.update(len(batch))
    bar.close()
    # -1 marks results an approximate search did not find (IVF: the probed lists hold fewer than
    # k+1 items): search those rows exactly.
    short = np.flatnonzero((pool < 0).any(axis=1))
    if len(short):
        _, found = exact_knn(x[rows[short]], x, k + 1)
        pool[short] = _without_anchor(found, rows[short], k)
    return pool


def candidate_pool(embeddings: torch.Tensor | np.ndarray, k: int,
                   index: IndexConfig | DictConfig | None = None) -> torch.Tensor:
    """[N, k] indices of each item's k most cosine-similar *other* items, best first.

    Pools are over items, so excluding the anchor excludes its positive and every
    other caption of the same item. `index` is an IndexConfig or its DictConfig
    (`pool.index`); the default is exact search.
    """
    cfg = IndexConfig() if index is None else index
    n = embeddings.shape[0]
    if not 0 < k < n:
        raise ConfigError(f"pool.k={k} is out of range: the split has {n} items, so k must be in [1, {n - 1}]")
    x = normalised(embeddings)
    return torch.from_numpy(search_pool(build_index(x, cfg), x, np.arange(n), k, cfg.query_batch))


# ---- duplicate filtering (real datasets) ----------------------------------------------------------
SLOTS = ("near_duplicate", "same_caption", "dropped", "anchors_with_duplicates", "filled")
# Deeper searches than this go to exact CPU search: faiss GPU indexes return at most 2048 neighbours, and
# anchors with that many duplicates are few (LAION's placeholder images), so brute force on them is affordable.
MAX_INDEX_DEPTH = 1024


@dataclass
class CaptionSets:
    """The caption hashes of each item, [N, C] with a validity mask (items may have several captions)."""

    hashes: np.ndarray  # [N, C] int64
    valid: np.ndarray  # [N, C] bool

    @classmethod
    def from_captions(cls, hashes: np.ndarray | torch.Tensor, text_item: np.ndarray | torch.Tensor,
                      n_items: int) -> CaptionSets:
        """Per-caption hashes [M] and their item indices [M] -> per-item sets."""
        hashes, text_item = np.asarray(hashes, dtype=np.int64), np.asarray(text_item, dtype=np.int64)
        order = np.argsort(text_item, kind="stable")
        counts = np.bincount(text_item, minlength=n_items)
        width = max(1, int(counts.max(initial=0)))
        slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
        out = np.zeros((n_items, width), dtype=np.int64)
        valid = np.zeros((n_items, width), dtype=bool)
        out[text_item[order], slot] = hashes[order]
        valid[text_item[order], slot] = True
        return cls(out, valid)

    def shared(self, anchors: np.ndarray, found: np.ndarray) -> np.ndarray:
        """[R, D] whether candidate found[r, d] has a caption identical to one of anchor r's."""
        safe = np.maximum(found, 0)
        cand, cand_ok = self.hashes[safe], self.valid[safe]  # [R, D, C]
        anch, anch_ok = self.hashes[anchors], self.valid[anchors]  # [R, C]
        same = (cand[..., :, None] == anch[:, None, None, :]) & cand_ok[..., :, None] & anch_ok[:, None, None, :]
        return same.any(axis=(2, 3)) & (found >= 0)


def filter_signature(threshold: float, captions: bool) -> dict:
    """The filter settings that change which candidates are kept (1.0 and above: no embedding test)."""
    return {"duplicate_threshold": min(float(threshold), 1.0), "drop_same_caption": bool(captions)}


def neighbours(searcher: faiss.Index, base: np.ndarray | Vectors, queries: np.ndarray, depth: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) [len(queries), depth] in `searcher`, an index over `base`; queries an approximate
    search left short (-1) are searched exactly."""
    scores, found = searcher.search(queries, depth)
    short = np.flatnonzero((found < 0).any(axis=1))
    if len(short):
        scores[short], found[short] = exact_knn(queries[short], base, depth)
    return scores, found


@torch_threads
def search_filtered_pool(searcher: faiss.Index, x: np.ndarray | Vectors, rows: np.ndarray, k: int, threshold: float,
                         captions: CaptionSets | None, query_batch: int = IndexConfig.query_batch,
                         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """[len(rows), k] pools without each anchor's duplicates, and per-slot counts of what was dropped.

    Each anchor's neighbours are searched k + 1 + k deep; an anchor with fewer than k survivors
    is searched again twice as deep (exactly past MAX_INDEX_DEPTH), up to the whole split, so the pool is the first k
    non-duplicates in similarity order whatever the margin. An anchor that has fewer than k
    non-duplicates in the whole split gets its nearest duplicates in the remaining slots
    (deterministic, and counted as `filled`). Counts are per slot j (summed over anchors):
    whether the j-th candidate of the *unfiltered* pool was a near-duplicate, had the same
    caption, either; whether slot j was the anchor's first duplicate; whether slot j of the
    filtered pool had to be filled. The count for a pool cut to k' <= k is the sum of the first k'.
    """
    n = x.shape[0]
    embedding = threshold < 1.0
    pool = np.empty((len(rows), k), dtype=np.int64)
    counts = {name: np.zeros(k, dtype=np.int64) for name in SLOTS}
    slots = np.arange(k)
    bar = tqdm(total=len(rows), desc="candidate pool", unit="query", dynamic_ncols=True,
               disable=len(rows) <= query_batch or not sys.stderr.isatty())
    for start in range(0, len(rows), query_batch):
        left = np.arange(start, min(start + query_batch, len(rows)))  # positions in `rows` still to fill
        depth = min(n, 2 * k + 1)
        while len(left):
            anchors = rows[left]
            if depth > MAX_INDEX_DEPTH:
                scores, found = exact_knn(x[anchors], x, depth)
            else:
                scores, found = neighbours(searcher, x, x[anchors], depth)
            is_anchor = found == anchors[:, None]
            near = (scores > threshold) & ~is_anchor if embedding else np.zeros_like(is_anchor)
            same = captions.shared(anchors, found) & ~is_anchor if captions is not None else np.zeros_like(is_anchor)
            duplicate = near | same
            survivors = (~duplicate & ~is_anchor).sum(axis=1)
            done = (survivors >= k) | (depth >= n)
            # survivors in similarity order, then duplicates in similarity order, the anchor last
            rank = np.where(is_anchor, 2, duplicate.astype(np.int64))
            chosen = np.take_along_axis(found, np.argsort(rank, axis=1, kind="stable")[:, :k], axis=1)
            raw = np.argsort(is_anchor, axis=1, kind="stable")[:, :k]  # the unfiltered pool's slots
            d = done
            raw_near = np.take_along_axis(near, raw, axis=1)[d]
            raw_same = np.take_along_axis(same, raw, axis=1)[d]
            raw_dup = raw_near | raw_same
            counts["near_duplicate"] += raw_near.sum(axis=0)
            counts["same_caption"] += raw_same.sum(axis=0)
            counts["dropped"] += raw_dup.sum(axis=0)
            first = raw_dup.argmax(axis=1)[raw_dup.any(axis=1)]
            counts["anchors_with_duplicates"] += np.bincount(first, minlength=k)
            counts["filled"] += (slots[None, :] >= survivors[d, None]).sum(axis=0)
            pool[left[d]] = chosen[d]
            bar.update(int(d.sum()))
            left = left[~d]
            depth = min(n, 2 * depth)
    bar.close()
    return pool, counts


def filtered_candidate_pool(embeddings: torch.Tensor | np.ndarray, k: int, index: IndexConfig | DictConfig | None = None,
                            threshold: float = 1.0, captions: CaptionSets | None = None,
                            ) -> tuple[torch.Tensor, dict[str, Any]]:
    """`candidate_pool` without each anchor's duplicates, and what was dropped (see `search_filtered_pool`).

    `threshold`: frozen cosine above which a candidate is a near-duplicate of the anchor (1.0:
    no embedding test); `captions`: the items' caption hashes (None: no caption test). With
    neither, the pool is `candidate_pool`'s, bit for bit. Returns the pool and its metadata:
    the filter signature and the per-slot counts (`pool_counts` turns them into totals).
    """
    cfg = IndexConfig() if index is None else index
    meta: dict[str, Any] = filter_signature(threshold, captions is not None)
    if threshold >= 1.0 and captions is None:
        pool = candidate_pool(embeddings, k, cfg)
        return pool, {**meta, **{name: [0] * k for name in SLOTS}}
    n = embeddings.shape[0]
    if not 0 < k < n:
        raise ConfigError(f"pool.k={k} is out of range: the split has {n} items, so k must be in [1, {n - 1}]")
    if captions is not None and captions.hashes.shape[0] != n:
        raise ValueError(f"caption sets of {captions.hashes.shape[0]} items for a split of {n}")
    x = normalised(embeddings)
    pool, counts = search_filtered_pool(build_index(x, cfg), x, np.arange(n), k, threshold, captions, cfg.query_batch)
    return torch.from_numpy(pool), {**meta, **{name: c.tolist() for name, c in counts.items()}}


def pool_counts(meta: dict[str, Any], k: int, n: int) -> dict[str, Any]:
    """Totals for the pool cut to its first k candidates, as they land in result.json under `data`."""
    out: dict[str, Any] = {"pool_anchors": n, "pool_candidates": n * k,
                           "pool_duplicate_threshold": meta.get("duplicate_threshold"),
                           "pool_drop_same_caption": meta.get("drop_same_caption")}
    for name in SLOTS:
        out[f"pool_{name}"] = int(sum(meta[name][:k])) if name in meta else None
    return out
