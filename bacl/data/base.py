"""What the trainer needs from any dataset: two feature splits, a candidate pool, extra metrics."""
from __future__ import annotations

from typing import Any

import torch

from bacl.data.pool import candidate_pool
from bacl.data.split import FeatureSplit
from bacl.errors import ConfigError
from bacl.metrics import PairScores


class FeatureDataset:
    """Base of every registered dataset. Subclasses set `train` and `test` in `__init__`."""

    train: FeatureSplit
    test: FeatureSplit

    def candidate_pool(self, pool: Any, streamed: bool = False) -> torch.Tensor:
        """[N_train, k] BNS candidates of each training item (the `pool` section of the run config);
        `streamed`: for a streamed run (a store may then hand out a memory-mapped table)."""
        return candidate_pool(self.train.pooled(pool.modality), pool.k, pool.index)

    def test_split(self, max_items: int) -> FeatureSplit:
        """The test split to evaluate (`eval.max_items`: its first items; evaluate cuts an in-memory split)."""
        return self.test

    def streamed_train(self, stream: Any) -> Any:
        """The training split as a `StreamedSplit` over a feature store (`train.stream`), for splits beyond memory."""
        raise ConfigError(f"train.stream.enabled=true: dataset {type(self).__name__} has no feature store to stream")

    def extra_metrics(self, scores: PairScores) -> dict[str, float]:
        """Dataset-specific evaluation from the scores of (test item, test caption) index pairs."""
        return {}

    def data_counts(self) -> dict[str, Any]:
        """Sample counts (and skipped samples) that land in result.json."""
        return {"train_items": self.train.n_items, "train_texts": self.train.n_texts,
                "test_items": self.test.n_items, "test_texts": self.test.n_texts}
