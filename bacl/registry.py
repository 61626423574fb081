"""Name -> implementation registries for methods and datasets.

Entries are import strings so that registering a name costs one line and importing
the registry never imports every baseline. Each entry may carry preset overrides
(dotted keys) applied on top of the defaults before the user's own overrides: this
is how the BACL component ablations and the variance-aware variants reuse one class.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from bacl.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    target: str  # "package.module:Attribute"
    preset: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    def __init__(self, kind: str, entries: dict[str, Entry]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}: valid choices are {', '.join(self.names())}"
            )
        return self._entries[name]


# One line per method. Presets are dotted keys inside the method's own config.
METHODS = Registry("method", {
    "clip": Entry("baselines.clip:CLIP", {"itm_weight": 0.0}),  # the paper's CLIP: dual encoder only
    "clip_itm": Entry("baselines.clip:CLIP"),  # + the match head on in-batch hard negatives (ALBEF)
    "uniform_data": Entry("baselines.uniform_hn:UniformHardNegatives", {"negatives": "uniform_data"}),
    "uniform_hn": Entry("baselines.uniform_hn:UniformHardNegatives"),
    "hardest": Entry("baselines.uniform_hn:UniformHardNegatives", {"negatives": "hardest"}),
    "hcl": Entry("baselines.hcl:HCL"),
    "variance_aware": Entry("baselines.variance_aware:VarianceAware"),
    "variance_aware_entropy": Entry("baselines.variance_aware:VarianceAware", {"statistic": "entropy"}),
    "variance_aware_cosine_spread": Entry("baselines.variance_aware:VarianceAware", {"statistic": "cosine_spread"}),
    "bacl": Entry("bacl.bacl_method:BACL"),
    "bns_only": Entry("bacl.bacl_method:BACL", {"cla.enabled": False}),
    "cla_only": Entry("bacl.bacl_method:BACL", {"negatives": "hardest", "negatives_in_contrast": False}),
    # cla_only without CLA: the match head on the same hardest candidate, CLA's one-change control
    "itm_hardest": Entry("bacl.bacl_method:BACL", {"negatives": "hardest", "negatives_in_contrast": False,
                                                   "cla.enabled": False}),
    "bns_no_curriculum": Entry("bacl.bacl_method:BACL", {"schedule.kind": "constant"}),
    "bns_curriculum_only": Entry("bacl.bacl_method:BACL", {"policy.weight": 0.0}),
})

# Presets here are dotted keys of the whole run config (a dataset may suit a smaller model).
DATASETS = Registry("dataset", {
    # Chosen on the validation world (dataset.seed=1; docs/synthetic-dataset.md): a 2-layer width-128 model,
    # batch 64, 6 epochs, evaluated at epochs 3 and 6, one thread (two OpenMP threads stall on a shared machine).
    "synthetic": Entry("bacl.data.synthetic:SyntheticDataset",
                       {"model.width": 128, "model.heads": 4, "model.layers": 2, "train.batch_size": 64,
                        "train.epochs": 6, "eval.every_epochs": 3, "train.threads": 1}),
    "laion400m": Entry("bacl.data.laion400m:Laion400M"),
    "webvid10m": Entry("bacl.data.webvid10m:WebVid10M"),
    "wavtext5k": Entry("bacl.data.wavtext5k:WavText5K"),
    "vast27m": Entry("bacl.data.vast27m:Vast27M"),
})
