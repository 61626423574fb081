"""The feature store: frozen-encoder features on disk, written shard by shard, read as splits.

Layout of a store directory:
    manifest.json                the dataset config it was extracted with, its item streams and shards
    shards/<shard>/              one per input shard; written to a temporary name, then renamed,
        items.json               so a shard directory either is complete or does not exist
        <stream>.tokens.npy      [n, L, d] float16 token features of each item stream
        <stream>.pooled.npy      [n, d] float16 pooled embedding (the encoder's own)
        text.tokens.npy / text.pooled.npy / text_item.npy   captions and their item (shard-local)
        text_hash.npy            [m] int64 hash of each normalised caption (`caption_hash`), for duplicate tests
    pool/<split>-<modality>.npy  [N, k] candidate pool, with <...>.json describing how it was built
                                 (index, duplicate filter, per-slot counts of the dropped candidates)
    dedup/test-<signature>.json  test items excluded as duplicates of training items (bacl/data/dedup.py)
An extraction interrupted anywhere restarts with the first shard that has no directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from bacl.data.split import FeatureSplit
from bacl.results import read_json, write_json

SPLITS = ("train", "test")


@dataclass
class ShardArrays:
    """Features of one shard, as the extractor produces them."""

    keys: list[str]
    splits: list[str]
    streams: dict[str, tuple[np.ndarray, np.ndarray]]  # stream -> (tokens [n, L, d], pooled [n, d])
    text_tokens: np.ndarray  # [m, Lt, dt]
    text_pooled: np.ndarray  # [m, dt]
    text_item: np.ndarray  # [m] shard-local item index
    skipped: list[dict[str, str]]  # {"key", "reason"} of every sample that could not be used
    text_hash: np.ndarray | None = None  # [m] caption_hash of each caption (None: not known, nothing written)
    shard_skipped: str | None = None  # why a shard without any usable sample was skipped (then keys is empty)

    @classmethod
    def empty(cls, skipped: list[dict[str, str]], reason: str) -> ShardArrays:
        """A shard with no usable sample: only its items.json (keys, skipped samples, the reason) is written."""
        none = np.zeros(0)
        return cls(keys=[], splits=[], streams={}, text_tokens=none, text_pooled=none,
                   text_item=np.zeros(0, dtype=np.int64), skipped=skipped, shard_skipped=reason)


class StoreMissing(FileNotFoundError):
    pass


def normalise_caption(text: str) -> str:
    """What "identical caption" compares: Unicode NFKC, case-folded, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def caption_hash(text: str) -> int:
    """A signed 64-bit hash of the normalised caption (about 0.004 expected collisions among 4e8 captions)."""
    digest = hashlib.blake2b(normalise_caption(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class FeatureStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    # ---- writing ------------------------------------------------------------------------------
    def init(self, config: dict, streams: list[str], shards: list[str]) -> None:
        """Create or reopen a store; refuses to mix features extracted with another config."""
        manifest = {"config": config, "streams": streams, "shards": shards}  # streams in token order
        existing = read_json(self.path / "manifest.json")
        if existing is not None and existing["config"] != config:
            raise ValueError(f"{self.path} holds features extracted with another config; "
                             "remove it or set dataset.store to a new directory")
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / "manifest.json", manifest)

    def done(self, shard: str) -> bool:
        return (self.path / "shards" / shard / "items.json").exists()

    def write_shard(self, shard: str, arrays: ShardArrays) -> None:
        final = self.path / "shards" / shard
        tmp = final.with_name(f".{shard}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if not arrays.keys:  # a skipped shard: nothing to read but its items.json
            arrays = ShardArrays.empty(arrays.skipped, arrays.shard_skipped or "no usable sample")
        for name, (tokens, pooled) in arrays.streams.items():
            np.save(tmp / f"{name}.tokens.npy", tokens.astype(np.float16))
            np.save(tmp / f"{name}.pooled.npy", pooled.astype(np.float16))
        if arrays.keys:
            np.save(tmp / "text.tokens.npy", arrays.text_tokens.astype(np.float16))
            np.save(tmp / "text.pooled.npy", arrays.text_pooled.astype(np.float16))
            np.save(tmp / "text_item.npy", arrays.text_item.astype(np.int64))
        if arrays.keys and arrays.text_hash is not None:
            np.save(tmp / "text_hash.npy", arrays.text_hash.astype(np.int64))
        items = {"keys": arrays.keys, "splits": arrays.splits, "skipped": arrays.skipped}
        if arrays.shard_skipped is not None:
            items["shard_skipped"] = arrays.shard_skipped
        write_json(tmp / "items.json", items)
        if final.exists():  # another array task finished this shard first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)

    # ---- reading ------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        manifest = read_json(self.path / "manifest.json")
        if manifest is None:
            raise StoreMissing(f"no feature store at {self.path}")
        return manifest

    def missing_shards(self) -> list[str]:
        return [s for s in self.manifest["shards"] if not self.done(s)]

    def counts(self) -> dict[str, Any]:
        """Items per split, skipped samples by reason kind (the text before the first ':') and shards
        skipped for want of any usable sample (`shards_skipped`, named in `shards_skipped_names`)."""
        out: dict[str, Any] = {f"{s}_items": 0 for s in SPLITS}
        skipped: dict[str, int] = {}
        skipped_shards = []
        for shard in self.manifest["shards"]:
            meta = read_json(self.path / "shards" / shard / "items.json") or {}
            if "shard_skipped" in meta:
                skipped_shards.append(shard)
            for split in meta.get("splits", []):
                out[f"{split}_items"] += 1
            for s in meta.get("skipped", []):
                kind = s["reason"].split(":")[0]
                skipped[kind] = skipped.get(kind, 0) + 1
        out["skipped"] = skipped
        out["skipped_total"] = sum(skipped.values())
        out["shards_skipped"] = len(skipped_shards)
        out["shards_skipped_names"] = skipped_shards
        return out

    def _rows(self, split: str, exclude: Collection[str] = ()) -> Iterator[tuple[Path, dict, np.ndarray]]:
        """(shard directory, its items.json, which of its items belong to `split` and are not excluded by key);
        skipped shards (no items, no arrays) are passed over."""
        exclude = exclude if isinstance(exclude, (set, frozenset)) else frozenset(exclude)
        for shard in self.manifest["shards"]:
            d = self.path / "shards" / shard
            meta = read_json(d / "items.json")
            if meta is None:
                raise StoreMissing(f"{self.path}: shard {shard} was not extracted")
            if not meta["keys"]:
                continue
            yield d, meta, split_keep(meta, split, exclude)

    def keys(self, split: str, exclude: Collection[str] = ()) -> list[str]:
        """Item keys of a split, in the order of its rows."""
        return [k for _, meta, keep in self._rows(split, exclude) for k, kept in zip(meta["keys"], keep) if kept]

    def item_pooled(self, split: str, exclude: Collection[str] = ()) -> np.ndarray:
        """[N, d] float32 pooled embedding of each item's first stream (what the pool searches), nothing else loaded."""
        first = self.manifest["streams"][0]
        parts = [np.load(d / f"{first}.pooled.npy", mmap_mode="r")[keep] for d, _, keep in self._rows(split, exclude)]
        return np.concatenate(parts).astype(np.float32)

    def has_caption_hashes(self, shard: str) -> bool:
        d = self.path / "shards" / shard
        return (d / "text_hash.npy").exists() or not (read_json(d / "items.json") or {}).get("keys")

    def caption_hashes(self, split: str, exclude: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """(caption_hash of each caption [M], its item index in the split [M]), in the split's caption order."""
        hashes, items, offset = [], [], 0
        for d, _, keep in self._rows(split, exclude):
            if not (d / "text_hash.npy").exists():
                raise StoreMissing(f"{self.path}: shard {d.name} has no caption hashes (extracted before they were "
                                   "stored); run experiments/extract.py again with the same config to add them")
            text_item = np.load(d / "text_item.npy")
            text_keep = keep[text_item] if text_item.size else np.zeros(0, dtype=bool)
            hashes.append(np.load(d / "text_hash.npy")[text_keep])
            items.append((np.cumsum(keep) - 1 + offset)[text_item[text_keep]])
            offset += int(keep.sum())
        return np.concatenate(hashes).astype(np.int64), np.concatenate(items).astype(np.int64)

    def write_caption_hashes(self, shard: str, hashes: np.ndarray) -> None:
        """Add text_hash.npy to a shard extracted before caption hashes were stored (atomic)."""
        d = self.path / "shards" / shard
        expected = np.load(d / "text_item.npy").shape[0]
        if hashes.shape != (expected,):
            raise ValueError(f"{self.path}: shard {shard} holds {expected} captions, got {hashes.shape[0]} hashes")
        tmp = d / f".text_hash.tmp-{os.getpid()}.npy"
        np.save(tmp, hashes.astype(np.int64))
        os.replace(tmp, d / "text_hash.npy")

    def split(self, split: str, exclude: Collection[str] = (), max_items: int = 0) -> FeatureSplit:
        """All items of one split (less the `exclude`d keys), or its first `max_items` (0: all; shards past
        them are not read), item streams side by side in one token sequence.

        Streams of different widths are placed in disjoint channel blocks
        ([frames | 0 | 0], [0 | audio | 0], ...) so that the model's single input
        projection acts as one projection per stream.
        """
        manifest = self.manifest
        names = manifest["streams"]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("text_tokens", "text_pooled", "text_item")}
        stream_parts: dict[str, list[np.ndarray]] = {f"{n}.{a}": [] for n in names for a in ("tokens", "pooled")}
        offset = 0
        for d, _, keep in self._rows(split, exclude):
            if max_items and offset >= max_items:
                break
            if max_items:
                keep = keep & (np.cumsum(keep) <= max_items - offset)
            for key in stream_parts:
                stream_parts[key].append(np.load(d / f"{key}.npy", mmap_mode="r")[keep])
            text_item = np.load(d / "text_item.npy")
            text_keep = keep[text_item] if text_item.size else np.zeros(0, dtype=bool)
            new_index = np.cumsum(keep) - 1 + offset  # shard-local item -> split-global item
            parts["text_item"].append(new_index[text_item[text_keep]])
            parts["text_tokens"].append(np.load(d / "text.tokens.npy", mmap_mode="r")[text_keep])
            parts["text_pooled"].append(np.load(d / "text.pooled.npy", mmap_mode="r")[text_keep])
            offset += int(keep.sum())
        if offset == 0:
            raise StoreMissing(f"{self.path}: the {split} split has no items")
        tokens = [np.concatenate(stream_parts[f"{n}.tokens"]) for n in names]
        pooled = [np.concatenate(stream_parts[f"{n}.pooled"]) for n in names]
        return FeatureSplit(
            vision=torch.from_numpy(block_concat(tokens)),
            text=torch.from_numpy(np.concatenate(parts["text_tokens"])),
            text_item=torch.from_numpy(np.concatenate(parts["text_item"])).long(),
            vision_pooled=torch.from_numpy(pooled[0].astype(np.float32)),
            text_pooled=torch.from_numpy(np.concatenate(parts["text_pooled"]).astype(np.float32)),
        )

    # ---- candidate pools ----------------------------------------------------------------------
    def pool_path(self, split: str, modality: str) -> Path:
        return self.path / "pool" / f"{split}-{modality}.npy"

    def save_pool(self, split: str, modality: str, pool: np.ndarray, index: Any, duplicates: dict) -> None:
        """`duplicates`: the filter signature and per-slot counts of `filtered_candidate_pool`."""
        path = self.pool_path(split, modality)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npy")
        np.save(tmp, pool.astype(np.int64))
        os.replace(tmp, path)
        write_json(path.with_suffix(".json"), {"k": int(pool.shape[1]), "index": index_signature(index),
                                               "duplicates": duplicates})

    def load_pool(self, split: str, modality: str, k: int, index: Any, duplicates: dict, mmap: bool = False
                  ) -> tuple[torch.Tensor | PoolTable, dict] | None:
        """(the stored pool cut to k, its duplicate metadata) if it was built with the same index and
        duplicate filter (`duplicates` holds the filter signature) and at least k neighbours. `mmap`: the
        pool as a `PoolTable` that reads only the rows asked for (64 GB at 400 M x 20 would not fit a rank)."""
        path = self.pool_path(split, modality)
        meta = read_json(path.with_suffix(".json"))
        if meta is None or meta["index"] != index_signature(index) or meta["k"] < k:
            return None
        stored = meta.get("duplicates") or {}
        if any(stored.get(key) != value for key, value in duplicates.items()):
            return None
        if mmap:
            return PoolTable(path, k), stored
        return torch.from_numpy(np.load(path)[:, :k]).long(), stored

    # ---- test items excluded as duplicates of training items ---------------------------------------
    def dedup_path(self, signature: dict) -> Path:
        blob = json.dumps(signature, sort_keys=True)
        return self.path / "dedup" / f"test-{hashlib.sha256(blob.encode()).hexdigest()[:10]}.json"

    def save_dedup(self, record: dict) -> None:
        write_json(self.dedup_path(record["signature"]), record)

    def load_dedup(self, signature: dict) -> dict | None:
        record = read_json(self.dedup_path(signature))
        return record if record is not None and record.get("signature") == signature else None


class PoolTable:
    """A stored [N, K] pool, memory-mapped and cut to its first k columns, indexed like the [N, k] tensor it
    stands for: `table[items]` reads only those rows (a batch's), so no rank holds the N-row table."""

    def __init__(self, path: Path | str, k: int, device: torch.device | str = "cpu"):
        self.path, self.k, self.device = Path(path), int(k), torch.device(device)
        self._table = np.load(self.path, mmap_mode="r")
        if self._table.ndim != 2 or not 0 < self.k <= self._table.shape[1]:
            raise ValueError(f"{self.path}: a pool of shape {self._table.shape} has no first {self.k} columns")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._table.shape[0], self.k))

    def __len__(self) -> int:
        return self._table.shape[0]

    def __getitem__(self, items: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """int64 [*items.shape, k] candidates of `items` (anchor rows, on any device), on this table's device."""
        rows = torch.as_tensor(items).cpu().numpy()
        found = np.ascontiguousarray(self._table[rows, :self.k], dtype=np.int64)  # a copy of those rows only
        return torch.from_numpy(found).to(self.device)

    def to(self, device: torch.device | str) -> PoolTable:
        """The same table answering on `device` (the rows stay on disk): what `pool.to(device)` does to a tensor."""
        return self if torch.device(device) == self.device else PoolTable(self.path, self.k, device)

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers, spawn) as its path: pickling the memory map would copy the whole table."""
        return {"path": self.path, "k": self.k, "device": str(self.device)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["k"], state["device"])


def split_keep(meta: dict, split: str, exclude: Collection[str]) -> np.ndarray:
    """[items in the shard] which of a shard's items (its items.json `meta`) are in `split` and not excluded by key."""
    return np.array([s == split and k not in exclude for s, k in zip(meta["splits"], meta["keys"])], dtype=bool)


def index_signature(index: Any) -> dict:
    """The index settings that change which neighbours are found (not batching, not the device)."""
    data = OmegaConf.to_container(index) if OmegaConf.is_config(index) else dict(vars(index))
    return {k: v for k, v in data.items() if k not in ("query_batch", "gpu")}


def block_concat(tokens: list[np.ndarray]) -> np.ndarray:
    """[n, L1, d1], [n, L2, d2], ... -> [n, L1 + L2 + ..., d1 + d2 + ...] with disjoint channel blocks."""
    if len(tokens) == 1:
        return np.ascontiguousarray(tokens[0])
    n = tokens[0].shape[0]
    total_l, total_d = sum(t.shape[1] for t in tokens), sum(t.shape[2] for t in tokens)
    out = np.zeros((n, total_l, total_d), dtype=np.float16)
    l0 = d0 = 0
    for t in tokens:
        out[:, l0:l0 + t.shape[1], d0:d0 + t.shape[2]] = t
        l0, d0 = l0 + t.shape[1], d0 + t.shape[2]
    return out

