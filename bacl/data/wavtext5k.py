"""WavText5K as its process.py leaves it: WavText5K.csv (view_link, download_link, title,
description, fname, tags) and the audio files, <root>/<audio_dir>/<fname>."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bacl.data.media import read_audio
from bacl.data.store_dataset import (
    RawSample,
    Skipped,
    StoreDataset,
    StoreDatasetConfig,
    clean_captions,
    hash_split,
    roberta_encoder,
)
from bacl.data.webvid10m import read_table, shard_start, table_shards
from bacl.encoders import EncoderConfig
from bacl.errors import require


@dataclass
class WavText5KConfig(StoreDatasetConfig):
    name: str = "wavtext5k"
    csv: str = "WavText5K.csv"
    audio_dir: str = "audios"  # process.py writes <save_folder>/<rate>/audios: point root at <save_folder>/<rate>
    caption_columns: list[str] = field(default_factory=lambda: ["description", "title"])  # each non-empty one is a caption
    test_fraction: float = 0.1  # no official split: held out by a hash of fname
    shard_size: int = 500
    text_encoder: EncoderConfig = field(default_factory=roberta_encoder)


class WavText5K(StoreDataset):
    Config = WavText5KConfig
    STREAMS = {"audio": "audio"}

    @classmethod
    def validate(cls, cfg: Any) -> None:
        super().validate(cfg)
        require(0 < cfg.test_fraction < 1, "dataset.test_fraction", cfg.test_fraction, "in (0, 1)")
        require(cfg.shard_size >= 1, "dataset.shard_size", cfg.shard_size, ">= 1")
        require(len(cfg.caption_columns) > 0, "dataset.caption_columns", list(cfg.caption_columns), "at least one column")

    @classmethod
    def _table(cls, cfg: Any):
        return read_table(cls.root(cfg) / cfg.csv, ("fname", *cfg.caption_columns), "dataset.csv")

    @classmethod
    def shards(cls, cfg: Any) -> list[str]:
        return table_shards(len(cls._table(cfg)), cfg.shard_size, "rows")

    @classmethod
    def entries(cls, cfg: Any, shard: str) -> Iterator[RawSample | Skipped]:
        start = shard_start(shard)[1]
        rows = cls._table(cfg).iloc[start:start + cfg.shard_size]
        audio_dir = cls.root(cfg) / cfg.audio_dir
        for row in rows.to_dict("records"):
            path = audio_dir / row["fname"]
            captions = clean_captions([row[c] for c in cfg.caption_columns])
            if not path.is_file():
                yield Skipped(row["fname"], f"missing: {path}")
            elif not captions:
                yield Skipped(row["fname"], "missing: no caption")
            else:
                yield RawSample(row["fname"], hash_split(row["fname"], cfg.test_fraction), path, captions)

    @classmethod
    def decode(cls, cfg: Any, entry: RawSample) -> dict[str, Any]:
        return {"audio": read_audio(entry.source)}
