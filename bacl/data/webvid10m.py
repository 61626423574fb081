"""WebVid-10M as released: the CSVs (videoid, contentUrl, duration, page_dir, name) and the
videos as its download script saves them, <video_dir>/<page_dir>/<videoid>.mp4."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bacl.data.media import video_frames
from bacl.data.store_dataset import RawSample, Skipped, StoreDataset, StoreDatasetConfig
from bacl.errors import ConfigError, require

COLUMNS = ("videoid", "page_dir", "name")


@dataclass
class WebVid10MConfig(StoreDatasetConfig):
    name: str = "webvid10m"
    train_csv: str = "results_10M_train.csv"  # relative to root
    test_csv: str = "results_10M_val.csv"  # the released validation split: the held-out test set
    video_dir: str = "videos"
    frames: int = 8  # frames sampled uniformly per clip; each frame's pooled feature is one token
    shard_size: int = 1000  # CSV rows per extraction shard


@functools.lru_cache(maxsize=4)
def read_table(path: Path, columns: tuple[str, ...], key: str) -> pd.DataFrame:
    """The table, read once per process (every shard's listing needs it). Callers must not modify it."""
    if not path.is_file():
        raise ConfigError(f"{key}: {path} not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{key}: {path} is not a readable CSV ({type(err).__name__}: {err}); "
                          f"expected a header with the column(s) {list(columns)}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"{key}: {path} lacks column(s) {missing}; it has {list(table.columns)}")
    return table


def table_shards(n_rows: int, shard_size: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(0, n_rows, shard_size)]


def shard_start(shard: str) -> tuple[str, int]:
    """The (prefix, first row) a `table_shards` name encodes."""
    prefix, start = shard.rsplit("-", 1)
    return prefix, int(start)


class WebVid10M(StoreDataset):
    Config = WebVid10MConfig
    STREAMS = {"frames": "video"}

    @classmethod
    def validate(cls, cfg: Any) -> None:
        super().validate(cfg)
        require(cfg.frames >= 1, "dataset.frames", cfg.frames, ">= 1")
        require(cfg.shard_size >= 1, "dataset.shard_size", cfg.shard_size, ">= 1")

    @classmethod
    def _table(cls, cfg: Any, split: str) -> pd.DataFrame:
        name, key = (cfg.train_csv, "dataset.train_csv") if split == "train" else (cfg.test_csv, "dataset.test_csv")
        return read_table(cls.root(cfg) / name, COLUMNS, key)

    @classmethod
    def shards(cls, cfg: Any) -> list[str]:
        return [s for split in ("train", "test") for s in table_shards(len(cls._table(cfg, split)), cfg.shard_size, split)]

    @classmethod
    def entries(cls, cfg: Any, shard: str) -> Iterator[RawSample | Skipped]:
        split, start = shard_start(shard)
        rows = cls._table(cfg, split).iloc[start:start + cfg.shard_size]
        video_dir = cls.root(cfg) / cfg.video_dir
        for row in rows.itertuples(index=False):
            path = video_dir / row.page_dir / f"{row.videoid}.mp4"
            if not path.is_file():
                yield Skipped(row.videoid, f"missing: {path}")
            elif not row.name.strip():
                yield Skipped(row.videoid, "missing: empty caption")
            else:
                yield RawSample(row.videoid, split, path, [row.name.strip()])

    @classmethod
    def decode(cls, cfg: Any, entry: RawSample) -> dict[str, Any]:
        return {"frames": video_frames(entry.source, cfg.frames)}
