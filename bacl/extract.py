"""The extract stage: raw dataset -> frozen features in a `FeatureStore` -> candidate pool.

Work is cut by the dataset's shards. A shard is listed (cheap), its samples are decoded
and preprocessed in DataLoader workers (the expensive, parallel part), encoded in batches
by the frozen encoders and written atomically; shards already in the store are skipped,
so an interrupted extraction resumes where it stopped, and a SLURM array task `i` of `n`
takes shards i, i+n, i+2n, ... Once every shard exists, the train split's candidate pool
is built with FAISS (without each anchor's duplicates) and stored next to the features, and
test items that duplicate training items are listed for exclusion (bacl/data/dedup.py). `stages`
lists the jobs: the pool in memory, or out of core (pool.out_of_core_parts=P: a prepare job, an
array of P search parts, the deduplication and a finish job, each after those it needs).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import submitit
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bacl.config import load_config
from bacl.data import pool_out_of_core as ooc
from bacl.data.dedup import find_test_duplicates
from bacl.data.media import CorruptSample, resample
from bacl.data.pool import filter_signature, pool_counts
from bacl.data.store import FeatureStore, ShardArrays, caption_hash
from bacl.data.store_dataset import ENCODER_OF_KIND, RawSample, Skipped, StoreDataset
from bacl.encoders import FrozenEncoder, load_encoder
from bacl.errors import ConfigError
from bacl.registry import DATASETS
from bacl.results import read_json

log = logging.getLogger(__name__)
MODALITY_OF_KIND = {"image": "image", "video": "image", "audio": "audio", "text": "text"}


class DataError(RuntimeError):
    """An unusable sample under dataset.strict=true."""


@dataclass
class Prepared:
    key: str
    split: str
    streams: dict[str, torch.Tensor]  # encoder inputs per stream
    captions: list[torch.Tensor]
    caption_hashes: list[int]  # caption_hash of each caption, for the duplicate tests


class _Samples(Dataset):
    """Decode + preprocess, run in loader workers; failures come back as `Skipped`."""

    def __init__(self, dataset_cls: type[StoreDataset], cfg: Any, entries: list[RawSample], towers: dict[str, Tower]):
        self.dataset_cls, self.cfg, self.entries = dataset_cls, cfg, entries
        self.encoders = {name: tower.encoder for name, tower in towers.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Prepared | Skipped:
        entry = self.entries[i]
        try:
            raw = self.dataset_cls.decode(self.cfg, entry)
        except CorruptSample as err:
            return Skipped(entry.key, str(err))
        streams = {}
        for name, kind in self.dataset_cls.STREAMS.items():
            enc = self.encoders[name]
            if kind == "video":
                streams[name] = torch.stack([enc.preprocess(frame) for frame in raw[name]])
            elif kind == "audio":
                wave, rate = raw[name]
                streams[name] = enc.preprocess(resample(wave, rate, enc.sample_rate))
            else:
                streams[name] = enc.preprocess(raw[name])
        text = self.encoders["captions"]
        return Prepared(entry.key, entry.split, streams, [text.preprocess(c) for c in entry.captions],
                        [caption_hash(c) for c in entry.captions])


@dataclass
class Tower:
    encoder: FrozenEncoder
    batch_size: int  # samples per forward pass (the encoder config's batch_size)

    def __call__(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        tokens, pooled = [], []
        for i in range(0, len(inputs), self.batch_size):
            t, p = self.encoder.encode(inputs[i:i + self.batch_size])
            tokens.append(t.cpu().numpy())
            pooled.append(p.cpu().numpy())
        return np.concatenate(tokens), np.concatenate(pooled)


def load_towers(dataset_cls: type[StoreDataset], cfg: Any, device: str) -> dict[str, Tower]:
    """One frozen encoder per item stream plus `captions` (open_clip models are shared where configs agree)."""
    configs = {name: cfg[ENCODER_OF_KIND[kind]] for name, kind in dataset_cls.STREAMS.items()}
    modalities = {name: MODALITY_OF_KIND[kind] for name, kind in dataset_cls.STREAMS.items()}
    configs["captions"], modalities["captions"] = cfg.text_encoder, "text"
    return {name: Tower(load_encoder(c, modalities[name], device), c.batch_size) for name, c in configs.items()}


def encode_batch(dataset_cls: type[StoreDataset], batch: list[Prepared], towers: dict[str, Tower]
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    streams = {}
    for name, kind in dataset_cls.STREAMS.items():
        inputs = torch.stack([p.streams[name] for p in batch])
        if kind == "video":  # each frame's pooled embedding is one token of the clip
            b, f = inputs.shape[:2]
            per_frame = towers[name](inputs.flatten(0, 1))[1].reshape(b, f, -1)
            streams[name] = (per_frame, per_frame.mean(axis=1))
        else:
            streams[name] = towers[name](inputs)
    text_tokens, text_pooled = towers["captions"](torch.stack([c for p in batch for c in p.captions]))
    return streams, text_tokens, text_pooled


def extract_shard(dataset_cls: type[StoreDataset], cfg: Any, shard: str, towers: dict[str, Tower],
                  workers: int, batch_size: int) -> ShardArrays:
    skipped: list[dict[str, str]] = []

    def skip(s: Skipped) -> None:
        if cfg.strict:
            raise DataError(f"dataset.strict=true and sample {s.key!r} of shard {shard} is unusable: {s.reason}")
        log.warning("skipping %s (shard %s): %s", s.key, shard, s.reason)
        skipped.append({"key": s.key, "reason": s.reason})

    listed = list(dataset_cls.entries(cfg, shard))
    entries = [e for e in listed if isinstance(e, RawSample)]
    if not entries:  # nothing to decode: the whole shard is unusable (empty, not a tar, ...)
        reasons = "; ".join(f"{s.key}: {s.reason}" for s in listed[:3]) or "it lists no sample"
        reasons += f"; and {len(listed) - 3} more" if len(listed) > 3 else ""
        where = dataset_cls.shard_source(cfg, shard)
        if cfg.strict:
            raise ConfigError(f"dataset.strict=true and shard {where} has no usable sample: {reasons}")
        log.warning("skipping shard %s (%s): no usable sample: %s", shard, where, reasons)
        return ShardArrays.empty([{"key": s.key, "reason": s.reason} for s in listed],
                                 f"no usable sample in {where}: {reasons}")
    for e in listed:
        if isinstance(e, Skipped):
            skip(e)
    loader = DataLoader(_Samples(dataset_cls, cfg, entries, towers), batch_size=batch_size,
                        num_workers=workers, collate_fn=list)
    keys, splits, text_item, text_hash = [], [], [], []
    parts: dict[str, list] = {}
    for batch in tqdm(loader, desc=f"shard {shard}", unit="batch", leave=False, disable=None):
        ok = [p for p in batch if isinstance(p, Prepared)]
        for s in batch:
            if isinstance(s, Skipped):
                skip(s)
        if not ok:
            continue
        streams, text_tokens, text_pooled = encode_batch(dataset_cls, ok, towers)
        for p in ok:
            text_item += [len(keys)] * len(p.captions)
            text_hash += p.caption_hashes
            keys.append(p.key)
            splits.append(p.split)
        for name, (t, pooled) in streams.items():
            parts.setdefault(f"{name}.tokens", []).append(t)
            parts.setdefault(f"{name}.pooled", []).append(pooled)
        parts.setdefault("text.tokens", []).append(text_tokens)
        parts.setdefault("text.pooled", []).append(text_pooled)
    if not keys:  # every listed sample failed to decode (each is counted by key in `skipped`)
        reason = f"no usable sample in {dataset_cls.shard_source(cfg, shard)}: all {len(skipped)} listed sample(s) unusable"
        log.warning("skipping shard %s: %s", shard, reason)
        return ShardArrays.empty(skipped, reason)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return ShardArrays(keys=keys, splits=splits,
                       streams={n: (cat[f"{n}.tokens"], cat[f"{n}.pooled"]) for n in dataset_cls.STREAMS},
                       text_tokens=cat["text.tokens"], text_pooled=cat["text.pooled"],
                       text_item=np.asarray(text_item, dtype=np.int64), skipped=skipped,
                       text_hash=np.asarray(text_hash, dtype=np.int64))


def dataset_shards(cfg: DictConfig) -> tuple[type[StoreDataset], list[str]]:
    """The dataset class and its shards, nothing written (what --dry-run needs)."""
    dataset_cls = DATASETS.entry(cfg.dataset.name).load()
    if not issubclass(dataset_cls, StoreDataset):
        raise ConfigError(f"dataset={cfg.dataset.name!r} is generated in memory and has nothing to extract")
    return dataset_cls, dataset_cls.shards(cfg.dataset)


def open_store(cfg: DictConfig) -> tuple[type[StoreDataset], FeatureStore, list[str]]:
    dataset_cls, shards = dataset_shards(cfg)
    store = FeatureStore(dataset_cls.store_path(cfg.dataset))
    store.init(dataset_cls.extraction_config(cfg.dataset), list(dataset_cls.STREAMS), shards)
    return dataset_cls, store, shards


def extract_features(cfg: DictConfig, task: int = 0, tasks: int = 1, workers: int = 0, batch_size: int = 32,
                     on_shard: Callable[[str, int, float], None] | None = None) -> FeatureStore:
    """Extract the shards of array task `task` of `tasks` that the store does not hold yet."""
    dataset_cls, store, shards = open_store(cfg)
    todo = [s for s in shards[task::tasks] if not store.done(s)]
    if not todo:
        return store
    towers = load_towers(dataset_cls, cfg.dataset, cfg.train.device)
    for shard in tqdm(todo, desc=f"extract {cfg.dataset.name}", unit="shard", disable=None):
        t0 = time.perf_counter()
        arrays = extract_shard(dataset_cls, cfg.dataset, shard, towers, workers, batch_size)
        store.write_shard(shard, arrays)
        if on_shard is not None:
            on_shard(shard, len(arrays.keys) + len(arrays.skipped), time.perf_counter() - t0)
    return store


def add_caption_hashes(dataset_cls: type[StoreDataset], cfg: Any, store: FeatureStore) -> list[str]:
    """Shards extracted before caption hashes were stored get them from a listing pass (no decoding)."""
    done = []
    for shard in store.manifest["shards"]:
        if store.has_caption_hashes(shard):
            continue
        captions = {e.key: e.captions for e in dataset_cls.entries(cfg, shard) if isinstance(e, RawSample)}
        keys = read_json(store.path / "shards" / shard / "items.json")["keys"]
        store.write_caption_hashes(shard, np.asarray([caption_hash(c) for k in keys for c in captions[k]], dtype=np.int64))
        done.append(shard)
    return done


def ready_store(cfg: DictConfig) -> tuple[type[StoreDataset], FeatureStore]:
    """The store once every shard exists, with caption hashes added to shards extracted before they were stored."""
    dataset_cls, store, _ = open_store(cfg)
    missing = store.missing_shards()
    if missing:
        raise DataError(f"{store.path}: {len(missing)} shard(s) still missing (first: {missing[0]}); "
                        "run the extraction again to finish them before building the pool")
    added = add_caption_hashes(dataset_cls, cfg.dataset, store)
    if added:
        log.warning("%s: added caption hashes to %d shard(s) extracted without them", store.path, len(added))
    return dataset_cls, store


def save_dedup(cfg: DictConfig, store: FeatureStore, searcher: Any = None) -> None:
    """The test items that duplicate training items (dataset.dedup_threshold, dataset.dedup_same_caption,
    searched with pool.index, pool.out_of_core_chunk training rows at a time; `searcher`: a prepared index)."""
    store.save_dedup(find_test_duplicates(store, cfg.dataset.dedup_threshold, cfg.dataset.dedup_same_caption,
                                          cfg.pool.index, cfg.pool.out_of_core_chunk, searcher))


def _pool_in_memory(dataset_cls: type[StoreDataset], store: FeatureStore, pool: Any) -> None:
    """Its own frame, so the train split is freed before the deduplication."""
    table, meta = dataset_cls.build_pool(store, store.split("train"), pool)
    store.save_pool("train", pool.modality, table.numpy(), pool.index, meta)


def build_pool(cfg: DictConfig) -> FeatureStore:
    """After the last shard: the train split's candidate pool without each anchor's duplicates (pool.k,
    pool.modality, pool.index, pool.duplicate_threshold, pool.drop_same_caption of the run config), built
    in memory, and the test items that duplicate training items, both stored."""
    dataset_cls, store = ready_store(cfg)
    _pool_in_memory(dataset_cls, store, cfg.pool)
    save_dedup(cfg, store)
    return store


@dataclass(frozen=True)
class Stage:
    """One job (tasks = 1) or array (tasks > 1) of an extraction, started once every stage in `after` succeeded."""

    name: str
    tasks: int
    after: tuple[str, ...]
    does: str


def stages(pool: Any, extract_tasks: int = 1, max_array_size: int = 0) -> list[Stage]:
    """The extraction's jobs in submission order: the shards, then the pool and the test deduplication, in memory
    (pool.out_of_core_parts=0) or out of core (bacl/data/pool_out_of_core.py), where the deduplication reuses the
    prepared index when it searches the same (vision) embeddings."""
    parts = ooc.validate_out_of_core(pool, max_array_size)
    shards = Stage("extract", extract_tasks, (), "features of the shards (task i of n: shards i, i+n, ...)")
    if not parts:
        return [shards, Stage("pool", 1, ("extract",), "the pool in memory, then the test deduplication")]
    chunk = pool.out_of_core_chunk
    return [shards,
            Stage("pool-prepare", 1, ("extract",), f"the index trained and filled {chunk} rows at a time; the empty table"),
            Stage("pool-part", parts, ("pool-prepare",), f"task p of {parts} searches table rows [p*N/{parts}, (p+1)*N/{parts})"),
            Stage("dedup", 1, ("pool-prepare",), f"test items that duplicate training items, {chunk} training rows at a time"),
            Stage("pool-finish", 1, ("pool-part", "dedup"), "the parts checked, the table stored, the summary printed")]


def _dedup_searcher(cfg: DictConfig, store: FeatureStore) -> Any:
    """The prepared pool index when it is over what the deduplication searches (the vision embeddings) and small
    enough to be worth reading (not flat: an exact search is a running best over chunks instead)."""
    if cfg.pool.modality != "vision" or cfg.pool.index.kind == "flat":
        return None
    return ooc.read_index(ooc.PoolFiles(store, "train", "vision"), cfg.pool.index)


def run_stage(cfg: DictConfig, name: str, task: int = 0) -> FeatureStore:
    """One pool stage of `stages` in this process (`task`: which part of pool-part)."""
    pool, chunk = cfg.pool, cfg.pool.out_of_core_chunk
    if name == "pool":
        return build_pool(cfg)
    if name == "pool-prepare":
        _, store = ready_store(cfg)
        ooc.prepare(store, pool, chunk)
        return store
    _, store, _ = open_store(cfg)
    if name == "pool-part":
        ooc.search_part(task, pool.out_of_core_parts, store, pool, chunk)
    elif name == "dedup":
        save_dedup(cfg, store, _dedup_searcher(cfg, store))
    elif name == "pool-finish":
        ooc.finish(store, pool, pool.out_of_core_parts)
    else:
        raise ValueError(f"no extraction stage {name!r}")
    return store


def run_stages_here(cfg: DictConfig) -> FeatureStore:
    """Every pool stage after the extraction, in submission order, in this process (cluster=local)."""
    done = [run_stage(cfg, stage.name, task) for stage in stages(cfg.pool)[1:] for task in range(stage.tasks)]
    return done[-1]


def _above(threshold: float) -> str:
    return f"cosine > {threshold}" if threshold < 1.0 else "by cosine: test off"


def summary(cfg: DictConfig, store: FeatureStore) -> list[str]:
    """What extract.py prints after the pool: duplicates removed from the pool and the test split, warnings."""
    dataset_cls = DATASETS.entry(cfg.dataset.name).load()
    stored = store.load_pool("train", cfg.pool.modality, cfg.pool.k, cfg.pool.index,
                             filter_signature(cfg.pool.duplicate_threshold, cfg.pool.drop_same_caption), mmap=True)
    lines = []
    if stored is not None:
        c = pool_counts(stored[1], cfg.pool.k, stored[0].shape[0])
        lines.append(f"pool: {c['pool_dropped']} of {c['pool_candidates']} nearest candidates were duplicates of their "
                     f"anchor and replaced ({c['pool_near_duplicate']} {_above(c['pool_duplicate_threshold'])}, "
                     f"{c['pool_same_caption']} same caption; {c['pool_anchors_with_duplicates']} anchors had some); "
                     f"{c['pool_filled']} slots filled with duplicates for lack of other items")
    record = store.load_dedup(dataset_cls.dedup_signature(cfg.dataset))
    if record is not None:
        c = record["counts"]
        lines.append(f"test split: {c['test_removed']} of {c['test_items_extracted']} items excluded as duplicates of "
                     f"training items ({c['test_removed_same_caption']} same caption, {c['test_removed_near_duplicate']} "
                     f"{_above(record['signature']['dedup_threshold'])})")
    lines += [f"warning: {w}" for w in dataset_cls.pretraining_warnings(cfg.dataset)]
    return lines


class ExtractJob(submitit.helpers.Checkpointable):
    """One array task; requeued after a timeout it skips the shards it already wrote."""

    def __call__(self, overrides: list[str], task: int, tasks: int, workers: int, batch_size: int) -> str:
        store = extract_features(load_config(overrides), task, tasks, workers, batch_size)
        return str(store.path)


class PoolJob(submitit.helpers.Checkpointable):
    """One pool stage (`stages`) or array task of one; requeued, it runs the stage again from its start."""

    def __call__(self, overrides: list[str], stage: str = "pool", task: int = 0) -> str:
        cfg = load_config(overrides)
        store = run_stage(cfg, stage, task)
        if stage in ("pool", "pool-finish"):
            print("\n".join(summary(cfg, store)))  # into the job's log
        return str(store.path)
