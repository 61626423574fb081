"""LAION-400M as img2dataset writes it: webdataset tar shards of <key>.jpg, <key>.txt, <key>.json."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bacl.data.media import decode_image
from bacl.data.store_dataset import RawSample, Skipped, StoreDataset, StoreDatasetConfig
from bacl.errors import ConfigError, require
from bacl.extras import optional_import

braceexpand = optional_import("braceexpand")  # the [media] extra
wds = optional_import("webdataset")


@dataclass
class Laion400MConfig(StoreDatasetConfig):
    name: str = "laion400m"
    shards: Optional[str] = None  # brace notation relative to root, e.g. "{00000..41455}.tar"; null: every *.tar
    test_shards: Optional[str] = None  # the held-out split; null: the last shard


def _expand(pattern: str) -> list[str]:
    return [s for p in pattern.split() for s in braceexpand.braceexpand(p)]


@functools.lru_cache(maxsize=4)
def split_shards(root: Path, shards_pattern: Optional[str], test_pattern: Optional[str]) -> tuple[list[str], list[str]]:
    """(train, test) shard names, listed and checked once per process (every shard's listing needs them)."""
    shards = _expand(shards_pattern) if shards_pattern else sorted(p.name for p in root.glob("*.tar"))
    missing = [s for s in shards if not (root / s).is_file()]
    if missing:
        raise ConfigError(f"dataset.shards={shards_pattern!r}: {len(missing)} shard(s) not found under {root}, e.g. {missing[0]}")
    if not shards:
        raise ConfigError(f"dataset.root={str(root)!r}: no *.tar shards found "
                          "(img2dataset --output_format webdataset writes them)")
    test = _expand(test_pattern) if test_pattern else shards[-1:]
    unknown = [s for s in test if not (root / s).is_file()]
    if unknown:
        raise ConfigError(f"dataset.test_shards={test_pattern!r}: not found under {root}: {unknown[:3]}")
    train = [s for s in shards if s not in set(test)]
    require(bool(train), "dataset.test_shards", test_pattern, "to leave at least one training shard")
    return train, test


class Laion400M(StoreDataset):
    Config = Laion400MConfig
    STREAMS = {"image": "image"}

    @classmethod
    def _split_shards(cls, cfg: Any) -> tuple[list[str], list[str]]:
        return split_shards(cls.root(cfg), cfg.shards, cfg.test_shards)

    @classmethod
    def shards(cls, cfg: Any) -> list[str]:
        train, test = cls._split_shards(cfg)
        return train + test

    @classmethod
    def entries(cls, cfg: Any, shard: str) -> Iterator[RawSample | Skipped]:
        _, test = cls._split_shards(cfg)
        split = "test" if shard in test else "train"
        errors: list[Exception] = []

        def keep_going(err: Exception) -> bool:  # a truncated tar: keep what was read, report the rest
            errors.append(err)
            return False
        path = cls.root(cfg) / shard
        samples = wds.WebDataset(str(path), shardshuffle=False, empty_check=False, handler=keep_going)
        listed = 0
        for sample in samples:
            listed += 1
            key = sample["__key__"]
            caption = sample.get("txt", b"").decode("utf-8", "replace").strip()
            if "jpg" not in sample:
                yield Skipped(key, "missing: no .jpg in the shard")
            elif not caption:
                yield Skipped(key, "missing: no caption (.txt)")
            else:
                yield RawSample(key, split, sample["jpg"], [caption])
        for err in errors:
            # A tar has no index: samples after the point where it stops being readable cannot be listed,
            # so the unreadable tail is one event naming the shard, never a made-up sample count.
            detail = f"{path}: {type(err).__name__}: {err.args[0] if err.args else err}"
            if listed:
                yield Skipped(shard, f"truncated: {detail} (unreadable after {listed} sample(s); "
                                     "how many samples followed is unknown)")
            else:
                yield Skipped(shard, f"tar: {detail}")

    @classmethod
    def shard_source(cls, cfg: Any, shard: str) -> str:
        return str(cls.root(cfg) / shard)

    @classmethod
    def decode(cls, cfg: Any, entry: RawSample) -> dict[str, Any]:
        return {"image": decode_image(entry.source)}
