"""Datasets read from their real on-disk format and trained from an extracted feature store.

A subclass describes one dataset: its config, its item streams (what each item is made of:
an image, video frames, audio, a subtitle), how its raw data is cut into shards, how a
shard lists its samples (cheap) and how one sample is decoded (expensive, in loader
workers). `experiments/extract.py` turns that into a `FeatureStore`; the trainer then
builds the subclass, which reads the store.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from bacl.data.base import FeatureDataset
from bacl.data.pool import candidate_pool
from bacl.data.store import FeatureStore, StoreMissing
from bacl.encoders import EncoderConfig, validate_encoder
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

    # ---- what a subclass provides --------------------------------------------------------------
    @classmethod
    def shards(cls, cfg: Any) -> list[str]:
        raise NotImplementedError

    @classmethod
    def entries(cls, cfg: Any, shard: str) -> Iterator[RawSample | Skipped]:
        raise NotImplementedError

    @classmethod
    def decode(cls, cfg: Any, entry: RawSample) -> dict[str, Any]:
        """Raw media of each stream (PIL image, list of frames, (waveform, rate), str); raises CorruptSample."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------------
    @classmethod
    def validate(cls, cfg: Any) -> None:
        require(cfg.root is not None, "dataset.root", cfg.root, f"the directory holding {cfg.name}")
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
        return data

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
        if missing:
            raise ConfigError(f"{cfg.name}: {problem}. Run first: python experiments/extract.py dataset={cfg.name} "
                              f"dataset.root={cfg.root} (plus the same dataset.* overrides)")
        return store

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.store = self.check_extracted(cfg)
        self.train, self.test = self.store.split("train"), self.store.split("test")

    def candidate_pool(self, pool: Any) -> torch.Tensor:
        """The pool extract.py stored, if built with this index and k; else built now (not stored:
        concurrent training jobs must not race on the store)."""
        stored = self.store.load_pool("train", pool.modality, pool.k, pool.index)
        if stored is not None:
            return stored
        log.info("no stored %s pool with k >= %d and this index: building it", pool.modality, pool.k)
        return candidate_pool(self.train.pooled(pool.modality), pool.k, pool.index)

    def data_counts(self) -> dict[str, Any]:
        return {**super().data_counts(), **self.store.counts(), "store": str(self.store.path)}
