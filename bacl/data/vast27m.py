"""VAST-27M as released: the annotation JSON (a list of {clip_id, vision_cap, audio_cap,
subtitle, vast_cap}) and the clips, <video_dir>/<clip_id>.mp4, with their audio tracks.

Items are tri-modal (frames, audio, subtitle); captions are the omni `vast_cap` ones by
default. Besides retrieval, evaluation runs the tri-modal match classification defined in
docs/paper-gaps.md (the paper reports accuracy, F1 and recall without defining the task).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bacl.data.media import CorruptSample, read_audio, video_frames
from bacl.data.pool import candidate_pool
from bacl.data.store_dataset import RawSample, Skipped, StoreDataset, StoreDatasetConfig, clean_captions, hash_split
from bacl.data.webvid10m import shard_start, table_shards
from bacl.errors import ConfigError, require
from bacl.metrics import PairScores

CAPTION_FIELDS = ("vast_cap", "vision_cap", "audio_cap")


@dataclass
class Vast27MConfig(StoreDatasetConfig):
    name: str = "vast27m"
    annotations: str = "annotations.json"  # relative to root
    video_dir: str = "videos"
    frames: int = 8
    caption_field: str = "vast_cap"  # vast_cap (omni) | vision_cap | audio_cap
    test_fraction: float = 0.05  # held out by a hash of clip_id
    shard_size: int = 1000


class Vast27M(StoreDataset):
    Config = Vast27MConfig
    STREAMS = {"frames": "video", "audio": "audio", "subtitle": "text"}

    @classmethod
    def validate(cls, cfg: Any) -> None:
        super().validate(cfg)
        require(cfg.frames >= 1, "dataset.frames", cfg.frames, ">= 1")
        require(cfg.caption_field in CAPTION_FIELDS, "dataset.caption_field", cfg.caption_field, " | ".join(CAPTION_FIELDS))
        require(0 < cfg.test_fraction < 1, "dataset.test_fraction", cfg.test_fraction, "in (0, 1)")
        require(cfg.shard_size >= 1, "dataset.shard_size", cfg.shard_size, ">= 1")

    @classmethod
    def _records(cls, cfg: Any) -> list[dict]:
        return read_records(cls.root(cfg) / cfg.annotations)

    @classmethod
    def shards(cls, cfg: Any) -> list[str]:
        return table_shards(len(cls._records(cfg)), cfg.shard_size, "clips")

    @classmethod
    def entries(cls, cfg: Any, shard: str) -> Iterator[RawSample | Skipped]:
        start = shard_start(shard)[1]
        video_dir = cls.root(cfg) / cfg.video_dir
        for record in cls._records(cfg)[start:start + cfg.shard_size]:
            key = str(record.get("clip_id", ""))
            captions = record.get(cfg.caption_field)
            captions = clean_captions(captions if isinstance(captions, list) else [captions])
            path = video_dir / f"{key}.mp4"
            if not key:
                yield Skipped(f"{shard}", "missing: a record without clip_id")
            elif not path.is_file():
                yield Skipped(key, f"missing: {path}")
            elif not captions:
                yield Skipped(key, f"missing: no {cfg.caption_field}")
            else:
                yield RawSample(key, hash_split(key, cfg.test_fraction), (path, str(record.get("subtitle") or "")), captions)

    @classmethod
    def decode(cls, cfg: Any, entry: RawSample) -> dict[str, Any]:
        path, subtitle = entry.source
        frames = video_frames(path, cfg.frames)
        try:
            audio = read_audio(path)
        except CorruptSample as err:
            if "no audio stream" not in str(err):
                raise
            audio = (np.zeros(16000, dtype=np.float32), 16000)  # a clip without sound track: silence
        return {"frames": frames, "audio": audio, "subtitle": subtitle}

    def extra_metrics(self, scores: PairScores) -> dict[str, float]:
        """Match classification on the evaluated test split; the hardest frozen-space neighbour of each
        test clip supplies its mismatched caption (searched per evaluation: the split may be cut to eval.max_items)."""
        neighbour = candidate_pool(self.test.pooled("vision"), 1)[:, 0]
        return match_classification(scores, self.test.captions_padded()[:, 0], neighbour)


@functools.lru_cache(maxsize=1)
def read_records(path: Path) -> list[dict]:
    """The annotation list, parsed once per process (every shard's listing needs it)."""
    if not path.is_file():
        raise ConfigError(f"dataset.annotations: {path} not found")
    try:
        records = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"dataset.annotations: {path} is not valid JSON: {err}") from None
    if not isinstance(records, list):
        raise ConfigError(f"dataset.annotations: {path} must hold a list of clip records (objects); "
                          f"its top level is {_json_type(records)}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ConfigError(f"dataset.annotations: {path}: record {i} is {_json_type(record)}, expected an object "
                              f"{{clip_id, {', '.join(CAPTION_FIELDS)}, subtitle}}")
    return records


def _json_type(value: Any) -> str:
    """'an object', 'a str', ... : the JSON value's Python type, with its article."""
    names = {dict: "an object", list: "a list", str: "a str", bool: "a bool", int: "an int", float: "a float",
             type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def match_classification(scores: PairScores, own_caption: torch.Tensor, neighbour: torch.Tensor) -> dict[str, float]:
    """Binary match/mismatch classification of (clip, caption) pairs, in percent.

    Every test clip gives a matched pair (its first caption) and a mismatched one (the first
    caption of its nearest clip in the frozen space: an ambiguous negative). The decision
    threshold on the model's score is fitted on the even-indexed clips (best accuracy) and
    applied to the odd-indexed ones, on which accuracy, F1 and recall of the match class are reported.
    """
    n = own_caption.numel()
    if n < 4:
        return {}
    items = torch.arange(n)
    pos, neg = scores(items, own_caption), scores(items, own_caption[neighbour])
    fit, held = items % 2 == 0, items % 2 == 1
    fit_scores = torch.cat([pos[fit], neg[fit]])
    fit_labels = torch.cat([torch.ones_like(pos[fit]), torch.zeros_like(neg[fit])]).bool()
    candidates = torch.sort(fit_scores).values
    thresholds = torch.cat([candidates[:1] - 1, (candidates[1:] + candidates[:-1]) / 2, candidates[-1:] + 1])
    accuracy = ((fit_scores[None, :] > thresholds[:, None]) == fit_labels[None, :]).float().mean(dim=1)
    threshold = thresholds[int(accuracy.argmax())]
    predicted = torch.cat([pos[held], neg[held]]) > threshold
    truth = torch.cat([torch.ones_like(pos[held]), torch.zeros_like(neg[held])]).bool()
    tp = float((predicted & truth).sum())
    precision = tp / max(1.0, float(predicted.sum()))
    recall = tp / float(truth.sum())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"cls_accuracy": 100 * float((predicted == truth).float().mean()), "cls_f1": 100 * f1,
            "cls_recall": 100 * recall, "cls_threshold": float(threshold)}
