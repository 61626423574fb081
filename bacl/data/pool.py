"""BNS candidate pools: the k nearest items of each anchor in the frozen space, by FAISS.

Exact search costs N^2·d, which stops being feasible somewhere past 10^5 items on a CPU;
`pool.index.kind` switches to an approximate index (IVF or HNSW) for larger corpora (see
benchmarks/pool_build.py). Flat and IVF pools are reproducible at a fixed thread count; faiss
inserts HNSW nodes concurrently, so with several threads a few HNSW pool entries may differ
from run to run.
"""
from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import faiss
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bacl.errors import ConfigError, require

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


def _torch_threads(fn: Fn) -> Fn:
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


def _training_sample(x: np.ndarray, cfg: IndexConfig | DictConfig, nlist: int) -> np.ndarray:
    size = min(x.shape[0], cfg.train_size or 256 * nlist)
    require(size >= nlist, f"{KEY}.train_size", cfg.train_size, f"0 or at least {KEY}.nlist={nlist}")
    if size == x.shape[0]:
        return x
    rows = np.random.default_rng(TRAIN_SEED).choice(x.shape[0], size, replace=False)
    return x[np.sort(rows)]


@_torch_threads
def build_index(x: np.ndarray, cfg: IndexConfig | DictConfig | None = None) -> faiss.Index:
    """An inner-product index over `x` (float32, rows L2-normalised, so scores are cosines)."""
    cfg = IndexConfig() if cfg is None else cfg
    validate_index(cfg)
    n, d = x.shape
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
    if _use_gpu(cfg):
        index = faiss.index_cpu_to_all_gpus(index)
        if cfg.kind in ("ivf", "ivfpq"):  # also reaches the per-GPU replicas, whatever the cloner copied
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", cfg.nprobe)
    if not index.is_trained:
        index.train(_training_sample(x, cfg, _nlist(cfg, n)))
    index.add(x)
    return index


def _normalised(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    x = torch.as_tensor(embeddings).detach().cpu().float()
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())


def _without_anchor(found: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """Drop each row's anchor; if ties or an approximate search left it out, drop the last instead."""
    is_anchor = found == anchors[:, None]
    keep = np.argsort(is_anchor, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, keep, axis=1)


@_torch_threads
def search_pool(searcher: faiss.Index, x: np.ndarray, rows: np.ndarray, k: int,
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
        _, found = faiss.knn(x[rows[short]], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
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
    x = _normalised(embeddings)
    return torch.from_numpy(search_pool(build_index(x, cfg), x, np.arange(n), k, cfg.query_batch))
