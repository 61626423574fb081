"""Which datasets a frozen encoder's pretraining data contains, from its pretrained tag: a heuristic table.

A frozen encoder pretrained on the very pairs a run evaluates on has seen the test split:
retrieval on it measures memorisation as well as alignment, and the comparison with a
paper that used other weights is not like for like. The table below maps pretrained tags
(fnmatch patterns) to the registered datasets their pretraining set contains or overlaps.
It is a documented heuristic, from the names and model cards of the weights, not a check of
the data: a tag it does not list (openai, datacomp*, commonpool*, dfn*, metaclip*, webli,
a checkpoint file, CLAP and RoBERTa weights) gives no warning, which does not prove there is
no overlap. Random weights (pretrained null) never warn.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pretraining:
    encoder: str  # registry name of the encoder backend
    tags: str  # fnmatch pattern over the `pretrained` value
    datasets: tuple[str, ...]  # registered dataset names its pretraining data holds
    relation: str  # contains | overlaps
    source: str  # why we believe it


PRETRAINING = (
    Pretraining("open_clip", "laion400m_*", ("laion400m",), "contains",
                "open_clip's laion400m_* weights were trained on LAION-400M itself"),
    Pretraining("open_clip", "*laion2b*", ("laion400m",), "contains",
                "LAION-2B-en comes from the same Common Crawl pipeline as LAION-400M with a looser CLIP filter "
                "(0.28 instead of 0.3), so it holds (nearly all of) LAION-400M"),
    Pretraining("open_clip", "*laion5b*", ("laion400m",), "contains", "LAION-5B includes LAION-2B-en"),
    Pretraining("open_clip", "merged2b_*", ("laion400m",), "contains", "EVA's Merged-2B is LAION-2B plus COYO-700M"),
    Pretraining("open_clip", "laion_aesthetic_*", ("laion400m",), "overlaps",
                "LAION-Aesthetics is a subset of LAION-5B selected by an aesthetic score"),
)


def matches(cfg: Any, dataset: str) -> list[Pretraining]:
    """The table rows saying that encoder config `cfg` was pretrained on data holding `dataset`."""
    if cfg.pretrained is None:
        return []
    return [p for p in PRETRAINING if p.encoder == cfg.name and dataset in p.datasets
            and fnmatch.fnmatchcase(str(cfg.pretrained), p.tags)]


def overlap_warnings(dataset: str, encoders: dict[str, Any], split: str = "test") -> list[str]:
    """One warning per distinct encoder (by name, model, pretrained) whose pretraining data holds `dataset`.

    `encoders`: config key (e.g. dataset.vision_encoder) -> encoder config, for the encoders
    the dataset's streams and captions actually use.
    """
    by_weights: dict[tuple, list[str]] = {}
    for key, cfg in encoders.items():
        by_weights.setdefault((cfg.name, cfg.model, cfg.pretrained), []).append(key)
    out = []
    for (name, model, pretrained), keys in by_weights.items():
        for p in matches(encoders[keys[0]], dataset):
            verb = "contains" if p.relation == "contains" else "overlaps"
            out.append(f"pretraining overlap: {' and '.join(keys)} ({name} {model}, pretrained={pretrained}) "
                       f"{'was' if len(keys) == 1 else 'were'} pretrained on data that {verb} {dataset}, whose "
                       f"{split} split is evaluated here ({p.source}); retrieval on it is not a held-out "
                       "measurement. Heuristic by pretrained tag: bacl/encoders/pretraining.py")
    return out
