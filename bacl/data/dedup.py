"""Test items that duplicate training items, found once after extraction and excluded by key.

A test item is excluded when one of its captions is identical (after `normalise_caption`)
to a training caption, or when its frozen pooled embedding (the first item stream, the one
the candidate pool searches) has cosine above `dataset.dedup_threshold` with some training
item. The nearest training item is found with the pool's FAISS index helpers
(`pool.index`: exact by default, IVF / IVF-PQ / HNSW at scale). Nothing is deleted: the
store gets `dedup/test-<signature>.json` with the excluded keys, the reason, the training
item each duplicates and the counts, and the test split is read without those keys.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bacl.data.pool import IndexConfig, build_index, neighbours, normalised, torch_threads
from bacl.data.store import FeatureStore, index_signature


def dedup_signature(threshold: float, same_caption: bool) -> dict:
    """What decides the excluded set, beyond the features (1.0 and above: no embedding test)."""
    return {"dedup_threshold": min(float(threshold), 1.0), "dedup_same_caption": bool(same_caption)}


@torch_threads
def nearest_train_item(train: np.ndarray, test: np.ndarray, index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, row) of each test item's nearest training item, with the pool's index."""
    x, q = normalised(train), normalised(test)
    scores, found = neighbours(build_index(x, index), x, q, 1)
    return scores[:, 0], found[:, 0]


def find_test_duplicates(store: FeatureStore, threshold: float, same_caption: bool,
                         index: Any = None) -> dict[str, Any]:
    """The exclusion record of `store` for these settings (not saved: `FeatureStore.save_dedup`)."""
    index = IndexConfig() if index is None else index
    signature = dedup_signature(threshold, same_caption)
    train_keys, test_keys = store.keys("train"), store.keys("test")
    caption_partner = np.full(len(test_keys), -1, dtype=np.int64)
    if same_caption:
        train_hashes, train_item = store.caption_hashes("train")
        test_hashes, test_item = store.caption_hashes("test")
        first_item = {}  # caption hash -> the first training item that has it
        for h, i in zip(train_hashes.tolist(), train_item.tolist()):
            first_item.setdefault(h, i)
        for h, i in zip(test_hashes.tolist(), test_item.tolist()):
            if caption_partner[i] < 0 and h in first_item:
                caption_partner[i] = first_item[h]
    cosine = np.full(len(test_keys), np.nan, dtype=np.float32)
    embed_partner = np.full(len(test_keys), -1, dtype=np.int64)
    if signature["dedup_threshold"] < 1.0:
        cosine, embed_partner = nearest_train_item(store.item_pooled("train"), store.item_pooled("test"), index)
    near = cosine > threshold
    same = caption_partner >= 0
    excluded = []
    for i in np.flatnonzero(near | same):
        partner = caption_partner[i] if same[i] else embed_partner[i]
        excluded.append({"key": test_keys[i], "train_key": train_keys[partner],
                         "same_caption": bool(same[i]), "near_duplicate": bool(near[i]),
                         "cosine": None if np.isnan(cosine[i]) else round(float(cosine[i]), 6)})
    return {"signature": signature, "index": index_signature(index), "excluded": excluded,
            "counts": {"test_items_extracted": len(test_keys), "test_removed": len(excluded),
                       "test_removed_same_caption": int(same.sum()), "test_removed_near_duplicate": int(near.sum())}}


def excluded_keys(record: dict) -> frozenset[str]:
    return frozenset(e["key"] for e in record["excluded"])

