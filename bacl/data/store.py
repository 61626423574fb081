"""The feature store: frozen-encoder features on disk, written shard by shard, read as splits.

Layout of a store directory:
    manifest.json                the dataset config it was extracted with, its item streams and shards
    shards/<shard>/              one per input shard; written to a temporary name, then renamed,
        items.json               so a shard directory either is complete or does not exist
        <stream>.tokens.npy      [n, L, d] float16 token features of each item stream
        <stream>.pooled.npy      [n, d] float16 pooled embedding (the encoder's own)
        text.tokens.npy / text.pooled.npy / text_item.npy   captions and their item (shard-local)
    pool/<split>-<modality>.npy  [N, k] candidate pool, with <...>.json describing how it was built
An extraction interrupted anywhere restarts with the first shard that has no directory.
"""
from __future__ import annotations

import os
import shutil
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


class StoreMissing(FileNotFoundError):
    pass


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
        for name, (tokens, pooled) in arrays.streams.items():
            np.save(tmp / f"{name}.tokens.npy", tokens.astype(np.float16))
            np.save(tmp / f"{name}.pooled.npy", pooled.astype(np.float16))
        np.save(tmp / "text.tokens.npy", arrays.text_tokens.astype(np.float16))
        np.save(tmp / "text.pooled.npy", arrays.text_pooled.astype(np.float16))
        np.save(tmp / "text_item.npy", arrays.text_item.astype(np.int64))
        write_json(tmp / "items.json", {"keys": arrays.keys, "splits": arrays.splits, "skipped": arrays.skipped})
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
        """Items per split and skipped samples by reason kind (the text before the first ':')."""
        out: dict[str, Any] = {f"{s}_items": 0 for s in SPLITS}
        skipped: dict[str, int] = {}
        for shard in self.manifest["shards"]:
            meta = read_json(self.path / "shards" / shard / "items.json") or {}
            for split in meta.get("splits", []):
                out[f"{split}_items"] += 1
            for s in meta.get("skipped", []):
                kind = s["reason"].split(":")[0]
                skipped[kind] = skipped.get(kind, 0) + 1
        out["skipped"] = skipped
        out["skipped_total"] = sum(skipped.values())
        return out

    def split(self, split: str) -> FeatureSplit:
        """All items of one split, item streams side by side in one token sequence.

        Streams of different widths are placed in disjoint channel blocks
        ([frames | 0 | 0], [0 | audio | 0], ...) so that the model's single input
        projection acts as one projection per stream.
        """
        manifest = self.manifest
        names = manifest["streams"]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("text_tokens", "text_pooled", "text_item")}
        stream_parts: dict[str, list[np.ndarray]] = {f"{n}.{a}": [] for n in names for a in ("tokens", "pooled")}
        offset = 0
        for shard in manifest["shards"]:
            d = self.path / "shards" / shard
            meta = read_json(d / "items.json")
            if meta is None:
                raise StoreMissing(f"{self.path}: shard {shard} was not extracted")
            keep = np.array([s == split for s in meta["splits"]], dtype=bool)
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
            vision=torch.from_numpy(_block_concat(tokens)),
            text=torch.from_numpy(np.concatenate(parts["text_tokens"])),
            text_item=torch.from_numpy(np.concatenate(parts["text_item"])).long(),
            vision_pooled=torch.from_numpy(pooled[0].astype(np.float32)),
            text_pooled=torch.from_numpy(np.concatenate(parts["text_pooled"]).astype(np.float32)),
        )

    # ---- candidate pools ----------------------------------------------------------------------
    def pool_path(self, split: str, modality: str) -> Path:
        return self.path / "pool" / f"{split}-{modality}.npy"

    def save_pool(self, split: str, modality: str, pool: np.ndarray, index: Any) -> None:
        path = self.pool_path(split, modality)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npy")
        np.save(tmp, pool.astype(np.int64))
        os.replace(tmp, path)
        write_json(path.with_suffix(".json"), {"k": int(pool.shape[1]), "index": index_signature(index)})

    def load_pool(self, split: str, modality: str, k: int, index: Any) -> torch.Tensor | None:
        """The stored pool cut to k, if it was built with the same index and at least k neighbours."""
        path = self.pool_path(split, modality)
        meta = read_json(path.with_suffix(".json"))
        if meta is None or meta["index"] != index_signature(index) or meta["k"] < k:
            return None
        return torch.from_numpy(np.load(path)[:, :k]).long()


def index_signature(index: Any) -> dict:
    """The index settings that change which neighbours are found (not batching, not the device)."""
    data = OmegaConf.to_container(index) if OmegaConf.is_config(index) else dict(vars(index))
    return {k: v for k, v in data.items() if k not in ("query_batch", "gpu")}


def _block_concat(tokens: list[np.ndarray]) -> np.ndarray:
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

