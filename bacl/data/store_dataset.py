"""Datasets read from their real on-disk format and trained from an extracted feature store.

A subclass describes one dataset: its config, its item streams (what each item is made of:
an image, video frames, audio, a subtitle), how its raw data is cut into shards, how a
shard lists its samples (cheap) and how one sample is decoded (expensive, in loader
workers). `experiments/extract.py` turns that into a `FeatureStore`; the trainer then
builds the subclass, which reads the store: the test split less the items excluded as
duplicates of training items (bacl/data/dedup.py), and the candidate pool less each anchor's
duplicates (bacl/data/pool.py). Its data counts say how many of each were removed, and warn
when a frozen encoder was pretrained on the evaluated data (bacl/encoders/pretraining.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from bacl.data.base import FeatureDataset
from bacl.data.dedup import dedup_signature, excluded_keys
from bacl.data.pool import CaptionSets, filter_signature, filtered_candidate_pool, pool_counts
from bacl.data.split import FeatureSplit
from bacl.data.store import FeatureStore, PoolTable, StoreMissing
from bacl.data.stream import ShardIndex, StreamedSplit
from bacl.encoders import EncoderConfig, validate_encoder
from bacl.encoders.pretraining import overlap_warnings
from bacl.errors import ConfigError, require
from bacl.neutral import neutral, without_neutral

log = logging.getLogger(__name__)

ENCODER_OF_KIND = {"image": "vision_encoder", "video": "vision_encoder", "audio": "audio_encoder",
                   "text": "text_encoder"}


def clap_encoder() -> EncoderConfig:
    return EncoderConfig(name="clap", model="laion/clap-htsat-unfused", pretrained="laion/clap-htsat-unfused")


def roberta_encoder() -> EncoderConfig:
    return EncoderConfig(name="roberta", model="roberta-base", pretrained="roberta-base")


@dataclass
class StoreDatasetConfig:
    name: str = ""
    root: Optional[str] = neutral()  # the dataset as its public tools leave it on disk; null: <data_root>/<name>
    store: Optional[str] = neutral()  # feature store directory; null: <root>/bacl_features/<config hash>
    strict: bool = neutral(False)  # true: a missing or corrupt sample stops the extraction
    # Test items whose frozen pooled embedding has cosine above this with a training item are excluded
    # as its near-duplicates (1.0: no embedding test); the store keeps their keys, not their deletion.
    dedup_threshold: float = 0.95
    dedup_same_caption: bool = True  # also exclude test items with a caption identical to a training caption
    # Every dataset has all three, so that one override (e.g. random weights) fits a sweep over
    # datasets; the encoders its streams do not use are ignored and leave the store path alone.
    vision_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    audio_encoder: EncoderConfig = field(default_factory=clap_encoder)


@dataclass
class RawSample:
    """One sample as listed by its shard: small, so that it pickles cheaply to a loader worker."""

    key: str
    split: str  # train | test
    source: Any  # what `decode` needs: bytes, a path, a row
    captions: list[str]


@dataclass
class Skipped:
    key: str
    reason: str  # "<kind>: <detail>", e.g. "image: UnidentifiedImageError ..." or "missing: <path>"


def hash_split(key: str, test_fraction: float) -> str:
    """A stable train/test assignment by key that does not depend on shard order."""
    u = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2 ** 32
    return "test" if u < test_fraction else "train"


def clean_captions(values: list[Any]) -> list[str]:
    return [str(v).strip() for v in values if isinstance(v, str) and str(v).strip()]


class StoreDataset(FeatureDataset):
    Config = StoreDatasetConfig
    STREAMS: dict[str, str] = {}  # stream name -> kind (image | video | audio | text); the first is the pool's
    NOT_FEATURES = ("dedup_threshold", "dedup_same_caption")  # change the splits read, not the features stored

    # ---- what a subclass provides --------------------------------------------------------------
    @classmethod
    def shards(cls, cfg: Any) -> list[str]:
        raise NotImplementedError

    @classmethod
    def entries(cls, cfg: Any, shard: str) -> Iterator[RawSample | Skipped]:
        raise NotImplementedError

    @classmethod
    def shard_source(cls, cfg: Any, shard: str) -> str:
        """Where a shard's data is read from, for messages (a file for tar shards; else the shard name)."""
        return shard

    @classmethod
    def decode(cls, cfg: Any, entry: RawSample) -> dict[str, Any]:
        """Raw media of each stream (PIL image, list of frames, (waveform, rate), str); raises CorruptSample."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------------
    @classmethod
    def validate(cls, cfg: Any) -> None:
        require(cfg.root is not None, "dataset.root", cfg.root, f"the directory holding {cfg.name}")
        require(0 < cfg.dedup_threshold <= 1, "dataset.dedup_threshold", cfg.dedup_threshold,
                "a cosine in (0, 1]: test items above it with a training item are excluded; 1.0 disables")
        for kind in cls.STREAMS.values():
            validate_encoder(cfg[ENCODER_OF_KIND[kind]], f"dataset.{ENCODER_OF_KIND[kind]}")
        validate_encoder(cfg.text_encoder, "dataset.text_encoder")

    @classmethod
    def root(cls, cfg: Any) -> Path:
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"dataset.root={cfg.root!r}: no such directory "
                              f"(expected {cfg.name} as its tools write it; see docs/datasets.md)")
        return root

    @classmethod
    def extraction_config(cls, cfg: Any) -> dict:
        """The part of the config that determines the features: no result-neutral field, no unused encoder."""
        data = without_neutral(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg),
                               cls.Config)
        used = {ENCODER_OF_KIND[kind] for kind in cls.STREAMS.values()} | {"text_encoder"}
        for key in {"vision_encoder", "text_encoder", "audio_encoder"} - used:
            data.pop(key, None)
        for key in cls.NOT_FEATURES:
            data.pop(key, None)
        return data

    @classmethod
    def encoders(cls, cfg: Any) -> dict[str, Any]:
        """`dataset.<key>` -> encoder config, for the encoders the streams and captions use."""
        keys = [ENCODER_OF_KIND[kind] for kind in cls.STREAMS.values()] + ["text_encoder"]
        return {f"dataset.{key}": cfg[key] for key in dict.fromkeys(keys)}

    @classmethod
    def pretraining_warnings(cls, cfg: Any) -> list[str]:
        """Warnings for frozen encoders whose pretraining data holds this dataset (a tag heuristic)."""
        return overlap_warnings(cfg.name, cls.encoders(cfg))

    @classmethod
    def dedup_signature(cls, cfg: Any) -> dict:
        return dedup_signature(cfg.dedup_threshold, cfg.dedup_same_caption)

    @classmethod
    def store_path(cls, cfg: Any) -> Path:
        if cfg.store:
            return Path(cfg.store).expanduser()
        blob = json.dumps(cls.extraction_config(cfg), sort_keys=True)
        first_encoder = cfg[ENCODER_OF_KIND[next(iter(cls.STREAMS.values()))]]
        tag = f"{first_encoder.model}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
        return Path(cfg.root).expanduser() / "bacl_features" / tag.replace("/", "_")

    @classmethod
    def check_extracted(cls, cfg: Any) -> FeatureStore:
        """The complete store for this config, or a ConfigError with the command that makes it."""
        store = FeatureStore(cls.store_path(cfg))
        try:
            missing = store.missing_shards()
            problem = f"{len(missing)} of {len(store.manifest['shards'])} shard(s) not extracted at {store.path}"
        except StoreMissing:
            missing, problem = [None], f"no feature store at {store.path}"
        if not missing and store.load_dedup(cls.dedup_signature(cfg)) is None:
            missing, problem = [None], (f"no test-split deduplication with dataset.dedup_threshold={cfg.dedup_threshold} "
                                        f"and dataset.dedup_same_caption={cfg.dedup_same_caption} at {store.path}")
        if missing:
            raise ConfigError(f"{cfg.name}: {problem}. Run first: python experiments/extract.py dataset={cfg.name} "
                              f"dataset.root={cfg.root} (plus the same dataset.* overrides)")
        return store

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.store = self.check_extracted(cfg)
        self.dedup = self.store.load_dedup(self.dedup_signature(cfg))
        self.warnings = self.pretraining_warnings(cfg)
        for warning in self.warnings:
            log.warning("%s", warning)
        self.max_test_items = 0  # read only the first test items (eval.max_items: a paper-scale test split)
        self.pool_counts: dict[str, Any] = {}

    @cached_property
    def test(self) -> FeatureSplit:
        """The test split less the duplicates of training items (its first `max_test_items`, when set)."""
        cfg = self.cfg
        try:
            return self.store.split("test", excluded_keys(self.dedup), self.max_test_items)
        except StoreMissing:
            c = self.dedup["counts"]
            if not c["test_removed"]:
                raise
            raise ConfigError(
                f"dataset.dedup_threshold={cfg.dedup_threshold}, dataset.dedup_same_caption={cfg.dedup_same_caption}: "
                f"all {c['test_items_extracted']} test items of {self.store.path} are duplicates of training items "
                f"({c['test_removed_same_caption']} by caption, {c['test_removed_near_duplicate']} by frozen cosine); "
                "expected some test items to remain. Random-weight encoders (pretrained=null) put every embedding "
                "close together: set dataset.dedup_threshold=1.0 with them") from None

    def test_split(self, max_items: int) -> FeatureSplit:
        """The test split to evaluate, read from the store only up to its first `max_items` items (0: all)."""
        if max_items != self.max_test_items:
            self.max_test_items = max_items
            self.__dict__.pop("test", None)
        return self.test

    @cached_property
    def train(self) -> FeatureSplit:
        """The whole training split in memory (a streamed run never reads it: `streamed_train`)."""
        return self.store.split("train")

    def streamed_train(self, stream: Any) -> StreamedSplit:
        split = StreamedSplit(ShardIndex(self.store, "train", read_threads=stream.read_threads))
        self.__dict__["train"] = split  # data_counts and the pool's counts read its sizes, not its arrays
        return split

    def candidate_pool(self, pool: Any, streamed: bool = False) -> torch.Tensor | PoolTable:
        """The pool extract.py stored, if built with this index, duplicate filter and k; else built now
        (not stored: concurrent training jobs must not race on the store). Either way without each
        anchor's duplicates (pool.duplicate_threshold, pool.drop_same_caption), counted in data_counts.
        A streamed run reads the stored table memory-mapped and never builds one (that needs the split)."""
        signature = filter_signature(pool.duplicate_threshold, pool.drop_same_caption)
        stored = self.store.load_pool("train", pool.modality, pool.k, pool.index, signature, mmap=streamed)
        if stored is not None:
            candidates, meta = stored
        elif streamed:
            raise ConfigError(f"train.stream.enabled=true needs the {pool.modality} pool stored in {self.store.path} "
                              f"with pool.k >= {pool.k}, this pool.index and duplicate filter: run bacl-extract with "
                              f"the same pool.* overrides first (pool.out_of_core_parts=P builds it out of core)")
        else:
            log.info("no stored %s pool with k >= %d, this index and duplicate filter: building it", pool.modality, pool.k)
            candidates, meta = self.build_pool(self.store, self.train, pool)
        self.pool_counts = pool_counts(meta, pool.k, candidates.shape[0])
        return candidates

    @staticmethod
    def build_pool(store: FeatureStore, train: Any, pool: Any) -> tuple[torch.Tensor, dict]:
        """The train split's filtered pool and its metadata (extract.py stores it; training may build it)."""
        captions = None
        if pool.drop_same_caption:
            try:
                hashes, text_item = store.caption_hashes("train")
            except StoreMissing as err:
                raise ConfigError(f"pool.drop_same_caption=true needs caption hashes: {err}") from None
            captions = CaptionSets.from_captions(hashes, text_item, train.n_items)
        return filtered_candidate_pool(train.pooled(pool.modality), pool.k, pool.index,
                                       pool.duplicate_threshold, captions)

    def data_counts(self) -> dict[str, Any]:
        """Store counts, the split sizes actually used (test: after deduplication), what the test
        deduplication and the pool's duplicate filter removed, and pretraining-overlap warnings."""
        return {**self.store.counts(), **super().data_counts(), **self.dedup["counts"],
                **self.dedup["signature"], "dedup_index": self.dedup["index"], **self.pool_counts,
                "warnings": list(self.warnings), "store": str(self.store.path)}
