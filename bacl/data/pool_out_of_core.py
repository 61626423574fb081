"""The candidate pool of a split too large for memory, built from the store's memory-mapped shards.

`FeatureStore.split` + `filtered_candidate_pool` hold all N x d embeddings (819 GB at 400 M
captions). Here nothing larger than one chunk of rows is read at a time:
    prepare      the index (`pool.index`: ivfpq at scale) trained on a sample of `training_rows`
                 (the in-memory builder's rows), vectors added chunk by chunk, written to disk;
                 the [N, k] int64 table created as an .npy of N x k (sparse until filled)
    search_part  part p of P fills rows [p*N//P, (p+1)*N//P) of the table, a chunk at a time
                 (one SLURM array task per part), and records its dropped-duplicate counts
    finish       checks every part, sums the counts, moves the table to `store.pool_path` with
                 the metadata `FeatureStore.load_pool` reads.
Peak memory is the index, the training sample (train_size x d, freed before the vectors are
added), one chunk and its search results; with `pool.drop_same_caption` also the split's caption
hashes (8 B a caption: `CaptionSets`), never N x d. The candidates are the in-memory builder's:
the same index, training rows, anchor exclusion and duplicate filters (`search_pool`,
`search_filtered_pool`), whose exact searches (short IVF lists, deep duplicate runs) scan the
shards a chunk at a time. Flat, IVF-flat and HNSW indexes hold every vector themselves; only
IVF-PQ (pq_m bytes a vector) makes the index small.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from bacl.data.pool import (
    SLOTS,
    CaptionSets,
    _use_gpu,
    empty_index,
    filter_signature,
    normalised,
    search_filtered_pool,
    search_pool,
    to_device,
    torch_threads,
    training_rows,
)
from bacl.data.store import FeatureStore, StoreMissing, index_signature, split_keep
from bacl.errors import ConfigError, require
from bacl.extras import optional_import
from bacl.results import read_json, write_json

faiss = optional_import("faiss")

MODALITIES = ("vision", "text")


class PooledRows:
    """A split's pooled item embeddings in the pool's `modality`, L2-normalised float32, as `FeatureSplit.pooled`
    computes them (vision: the first stream's; text: the mean of the item's captions), read from the memory-mapped
    shards on demand. `largest_read` is the most rows one read returned: the tests' proof that no N x d array exists."""

    def __init__(self, store: FeatureStore, split: str, modality: str, chunk: int, exclude: Collection[str] = ()):
        require(modality in MODALITIES, "pool.modality", modality, " | ".join(MODALITIES))
        require(chunk >= 1, "chunk", chunk, ">= 1")
        self.modality, self.chunk, self.split = modality, chunk, split
        self.exclude = exclude if isinstance(exclude, (set, frozenset)) else frozenset(exclude)
        self.stream = store.manifest["streams"][0]
        self.dirs: list[Path] = []
        counts = []
        for d, _, keep in store._rows(split, self.exclude):
            self.dirs.append(d)
            counts.append(int(keep.sum()))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if not self.dirs or self.offsets[-1] == 0:
            raise StoreMissing(f"{store.path}: the {split} split has no items")
        name = f"{self.stream}.pooled.npy" if modality == "vision" else "text.pooled.npy"
        self.width = int(np.load(self.dirs[0] / name, mmap_mode="r").shape[1])
        self.largest_read = 0

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), self.width

    def _shard(self, s: int, local: np.ndarray) -> np.ndarray:
        """Unnormalised float32 embeddings of the split items `local` (sorted positions among shard s's split items)."""
        d = self.dirs[s]
        rows = np.flatnonzero(split_keep(read_json(d / "items.json"), self.split, self.exclude))[local]
        if self.modality == "vision":
            return np.load(d / f"{self.stream}.pooled.npy", mmap_mode="r")[rows].astype(np.float32)
        text_item = np.load(d / "text_item.npy", mmap_mode="r")
        captions = np.flatnonzero(np.isin(text_item, rows))  # in caption order, as FeatureSplit.pooled adds them
        text = np.load(d / "text.pooled.npy", mmap_mode="r")[captions].astype(np.float32)
        return _mean_by_item(text, np.searchsorted(rows, text_item[captions]), len(rows))

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), d] normalised embeddings of the split items `rows`, in that order."""
        wanted, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        self.largest_read = max(self.largest_read, wanted.size)
        out = np.empty((wanted.size, self.width), dtype=np.float32)
        shard = np.searchsorted(self.offsets, wanted, side="right") - 1
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            out[at] = self._shard(int(s), wanted[at] - self.offsets[s])
        return normalised(out[inverse.reshape(-1)])

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, its chunk of normalised embeddings) over the whole split."""
        n = self.shape[0]
        for start in range(0, n, self.chunk):
            yield start, self[np.arange(start, min(n, start + self.chunk))]

    def knn(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (scores, ids) of the `depth` largest inner products over the split, merged chunk by chunk."""
        scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        ids = np.zeros((len(queries), 0), dtype=np.int64)
        for start, block in self.chunks():
            s, i = faiss.knn(queries, block, min(depth, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            scores, ids = np.concatenate([scores, s], axis=1), np.concatenate([ids, i + start], axis=1)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
            scores, ids = np.take_along_axis(scores, best, axis=1), np.take_along_axis(ids, best, axis=1)
        return scores, ids


def _mean_by_item(text: np.ndarray, which: np.ndarray, n: int) -> np.ndarray:
    """Per-item mean of caption embeddings, summed in caption order as `FeatureSplit.pooled` does (torch index_add_)."""
    import torch

    t = torch.from_numpy(text)
    index = torch.from_numpy(which.astype(np.int64))
    total = torch.zeros(n, text.shape[1]).index_add_(0, index, t)
    count = torch.bincount(index, minlength=n).float()
    return (total / count[:, None]).numpy()


class PoolFiles:
    """Where a pool under construction lives: `pool/<split>-<modality>.parts/` beside its final .npy."""

    def __init__(self, store: FeatureStore, split: str, modality: str):
        self.final = store.pool_path(split, modality)
        self.dir = self.final.with_suffix(".parts")
        self.index = self.dir / "index.faiss"
        self.table = self.dir / "pool.npy"
        self.plan = self.dir / "plan.json"

    def part(self, part: int, parts: int) -> Path:
        return self.dir / f"part-{part}-of-{parts}.json"


def _plan(rows: PooledRows, pool: Any) -> dict:
    """What every part must agree on: a part run with other settings would mix two pools in one table."""
    return {"n": rows.shape[0], "k": int(pool.k), "index": index_signature(pool.index),
            "duplicates": filter_signature(pool.duplicate_threshold, pool.drop_same_caption)}


def _check_plan(files: PoolFiles, rows: PooledRows, pool: Any) -> None:
    stored = read_json(files.plan)
    if stored is None:
        raise ConfigError(f"{files.dir}: no prepared pool; run prepare first")
    if stored != _plan(rows, pool):
        raise ConfigError(f"{files.dir} was prepared for {stored}, not {_plan(rows, pool)}; prepare it again")


def chunked_index(rows: PooledRows, cfg: Any) -> faiss.Index:
    """`build_index` over `rows` without holding them: trained on the same sample, filled a chunk at a time
    (the same index for flat, IVF and IVF-PQ; HNSW inserts each add call's nodes by level, so its graph differs)."""
    n, d = rows.shape
    index = empty_index(cfg, n, d)
    if not index.is_trained:
        sample = training_rows(n, cfg)
        index.train(rows[np.arange(n) if sample is None else sample])
    for _, block in rows.chunks():
        index.add(block)
    return index


def read_index(files: PoolFiles, cfg: Any) -> faiss.Index:
    """The index `prepare` wrote, on the devices `cfg.gpu` allows."""
    return to_device(faiss.read_index(str(files.index)), cfg)


@torch_threads
def prepare(store: FeatureStore, pool: Any, chunk: int, split: str = "train") -> PoolFiles:
    """Train the index on its sample, add the split's vectors a chunk at a time, write it and the empty table."""
    rows = PooledRows(store, split, pool.modality, chunk)
    n = rows.shape[0]
    if not 0 < pool.k < n:
        raise ConfigError(f"pool.k={pool.k} is out of range: the split has {n} items, so k must be in [1, {n - 1}]")
    index = chunked_index(rows, pool.index)
    files = PoolFiles(store, split, pool.modality)
    shutil.rmtree(files.dir, ignore_errors=True)
    files.dir.mkdir(parents=True)
    faiss.write_index(faiss.index_gpu_to_cpu(index) if _use_gpu(pool.index) else index, str(files.index))
    open_memmap(files.table, mode="w+", dtype=np.int64, shape=(n, int(pool.k))).flush()  # sparse until filled
    write_json(files.plan, _plan(rows, pool))
    return files


def part_rows(part: int, parts: int, n: int) -> range:
    """Rows [part*n//parts, (part+1)*n//parts): the parts tile [0, n) whatever n and parts."""
    require(1 <= parts <= n, "parts", parts, f"in [1, {n}], the split's items")
    require(0 <= part < parts, "part", part, f"in [0, {parts})")
    return range(part * n // parts, (part + 1) * n // parts)


def _captions(store: FeatureStore, pool: Any, split: str, n: int) -> CaptionSets | None:
    if not pool.drop_same_caption:
        return None
    try:
        hashes, text_item = store.caption_hashes(split)
    except StoreMissing as err:
        raise ConfigError(f"pool.drop_same_caption=true needs caption hashes: {err}") from None
    return CaptionSets.from_captions(hashes, text_item, n)


def search_part(part: int, parts: int, store: FeatureStore, pool: Any, chunk: int, split: str = "train") -> dict:
    """Fill rows `part_rows(part, parts, N)` of the prepared table, `chunk` anchors at a time; returns and records
    this part's per-slot counts. Rows go in with pwrite, byte-exact: parts on other nodes share the file, and a
    memory map writes back whole pages, which on NFS would overwrite a neighbouring part's rows."""
    rows = PooledRows(store, split, pool.modality, chunk)
    files = PoolFiles(store, split, pool.modality)
    _check_plan(files, rows, pool)
    n, k = rows.shape[0], int(pool.k)
    span = part_rows(part, parts, n)
    searcher = read_index(files, pool.index)
    captions = _captions(store, pool, split, n)
    filtered = pool.duplicate_threshold < 1.0 or captions is not None
    counts = {name: np.zeros(k, dtype=np.int64) for name in SLOTS}
    offset = np.load(files.table, mmap_mode="r").offset
    fd = os.open(files.table, os.O_WRONLY)
    try:
        for start in range(span.start, span.stop, chunk):
            anchors = np.arange(start, min(span.stop, start + chunk))
            if filtered:
                found, dropped = search_filtered_pool(searcher, rows, anchors, k, pool.duplicate_threshold, captions, chunk)
                for name in SLOTS:
                    counts[name] += dropped[name]
            else:
                found = search_pool(searcher, rows, anchors, k, chunk)
            os.pwrite(fd, np.ascontiguousarray(found, dtype="<i8").tobytes(), offset + start * k * 8)
        os.fsync(fd)
    finally:
        os.close(fd)
    record = {"rows": [span.start, span.stop], **{name: c.tolist() for name, c in counts.items()}}
    write_json(files.part(part, parts), record)
    return record


def finish(store: FeatureStore, pool: Any, parts: int, split: str = "train") -> Path:
    """Once every part is done: the table moves to `store.pool_path` with the metadata `load_pool` checks
    (index signature, filter signature, per-slot counts summed over the parts)."""
    files = PoolFiles(store, split, pool.modality)
    plan = read_json(files.plan)
    if plan is None:
        raise ConfigError(f"{files.dir}: no prepared pool; run prepare first")
    records = [read_json(files.part(p, parts)) for p in range(parts)]
    missing = [p for p, r in enumerate(records) if r is None]
    if missing:
        raise ConfigError(f"{files.dir}: part(s) {missing} of {parts} have not finished; run them before finish")
    k = plan["k"]
    meta = {**plan["duplicates"], **{name: np.sum([r[name] for r in records], axis=0, dtype=np.int64).tolist()
                                     for name in SLOTS}}
    if len(meta[SLOTS[0]]) != k:
        raise ConfigError(f"{files.dir}: the parts' counts are not of length k={k}")
    os.replace(files.table, files.final)
    write_json(files.final.with_suffix(".json"), {"k": k, "index": plan["index"], "duplicates": meta})
    shutil.rmtree(files.dir)
    return files.final


def validate_out_of_core(pool: Any, max_array_size: int = 0) -> int:
    """`pool.out_of_core_parts` (0: the pool in memory) once its keys are in range; `max_array_size`: the
    cluster's (0: no limit), since the parts are one array."""
    parts, chunk = pool.out_of_core_parts, pool.out_of_core_chunk
    require(parts >= 0, "pool.out_of_core_parts", parts, "0 (the pool in memory) or P >= 1 search parts out of core")
    require(not max_array_size or parts <= max_array_size, "pool.out_of_core_parts", parts,
            f"at most the cluster profile's max_array_size={max_array_size}: the parts are one array")
    require(chunk >= 1, "pool.out_of_core_chunk", chunk, "rows read and searched at a time, >= 1")
    return int(parts)


def build(store: FeatureStore, pool: Any, chunk: int, parts: int = 1, split: str = "train") -> Path:
    """prepare, every part in turn, finish: the whole out-of-core build in this process."""
    prepare(store, pool, chunk, split)
    for part in range(parts):
        search_part(part, parts, store, pool, chunk, split)
    return finish(store, pool, parts, split)

