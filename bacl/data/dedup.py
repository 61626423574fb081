"""Test items that duplicate training items, found once after extraction and excluded by key.

A test item is excluded when one of its captions is identical (after `normalise_caption`)
to a training caption, or when its frozen pooled embedding (the first item stream, the one
the candidate pool searches) has cosine above `dataset.dedup_threshold` with some training
item. The nearest training item is found with the pool's FAISS index helpers
(`pool.index`: exact by default, IVF / IVF-PQ / HNSW at scale). Nothing is deleted: the
store gets `dedup/test-<signature>.json` with the excluded keys, the reason, the training
item each duplicates and the counts, and the test split is read without those keys.
The training split is read from the memory-mapped shards a chunk at a time (`PooledRows`), so the
search holds the test split, one chunk and the index (at 400 M: IVF-PQ, or the out-of-core pool's
own index, reused), never the N x d training embeddings.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bacl.data.pool import IndexConfig, neighbours, normalised, torch_threads
from bacl.data.pool_out_of_core import PooledRows, chunked_index
from bacl.data.store import FeatureStore, index_signature

CHUNK = 100_000  # training rows read at a time (pool.out_of_core_chunk)


def dedup_signature(threshold: float, same_caption: bool) -> dict:
    """What decides the excluded set, beyond the features (1.0 and above: no embedding test)."""
    return {"dedup_threshold": min(float(threshold), 1.0), "dedup_same_caption": bool(same_caption)}


@torch_threads
def nearest_train_item(train: PooledRows, test: np.ndarray, index: Any, searcher: Any = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, row) of each test item's nearest training item, with the pool's index, never holding the
    training split: an exact index is a running best over chunks, any other is filled a chunk at a time
    (`searcher`: one already built over `train` with `index`, the out-of-core pool's)."""
    q = normalised(test)
    if searcher is None and index.kind == "flat":
        scores, found = train.knn(q, 1)
    else:
        scores, found = neighbours(chunked_index(train, index) if searcher is None else searcher, train, q, 1)
    return scores[:, 0], found[:, 0]


def caption_partners(train_hashes: np.ndarray, train_item: np.ndarray, test_hashes: np.ndarray,
                     test_item: np.ndarray, n_test: int) -> np.ndarray:
    """[n_test] the first training item (in caption order) holding the first of each test item's captions that
    some training caption repeats; -1 where none does. Sorted arrays, not a dict: 16 B a caption, not ~100."""
    partner = np.full(n_test, -1, dtype=np.int64)
    order = np.argsort(train_hashes, kind="stable")  # equal hashes keep caption order: the first is the earliest
    hashes, first = np.unique(train_hashes[order], return_index=True)
    if hashes.size == 0 or test_hashes.size == 0:
        return partner
    at = np.minimum(np.searchsorted(hashes, test_hashes), hashes.size - 1)
    hits = np.flatnonzero(hashes[at] == test_hashes)  # test captions in caption order
    items, first_hit = np.unique(test_item[hits], return_index=True)
    partner[items] = train_item[order[first[at[hits[first_hit]]]]]
    return partner


def _keys_at(store: FeatureStore, split: str, rows: np.ndarray) -> dict[int, str]:
    """The keys of a split's `rows`, one shard's items.json at a time (all N keys are ~40 GB of str at 400 M)."""
    wanted, out, offset = np.unique(rows), {}, 0
    for _, meta, keep in store._rows(split):
        keys = [k for k, kept in zip(meta["keys"], keep) if kept]
        for row in wanted[(wanted >= offset) & (wanted < offset + len(keys))].tolist():
            out[row] = keys[row - offset]
        offset += len(keys)
    return out


def find_test_duplicates(store: FeatureStore, threshold: float, same_caption: bool,
                         index: Any = None, chunk: int = CHUNK, searcher: Any = None) -> dict[str, Any]:
    """The exclusion record of `store` for these settings (not saved: `FeatureStore.save_dedup`). Peak memory is
    the test split, one chunk of training rows and `index` (`searcher`: an index over the training split's vision
    embeddings built with `index`, reused instead of a second one)."""
    index = IndexConfig() if index is None else index
    signature = dedup_signature(threshold, same_caption)
    test_keys = store.keys("test")
    caption_partner = np.full(len(test_keys), -1, dtype=np.int64)
    if same_caption:
        caption_partner = caption_partners(*store.caption_hashes("train"), *store.caption_hashes("test"), len(test_keys))
    cosine = np.full(len(test_keys), np.nan, dtype=np.float32)
    embed_partner = np.full(len(test_keys), -1, dtype=np.int64)
    if signature["dedup_threshold"] < 1.0 and test_keys:
        train = PooledRows(store, "train", "vision", chunk)
        cosine, embed_partner = nearest_train_item(train, store.item_pooled("test"), index, searcher)
    near = cosine > threshold
    same = caption_partner >= 0
    partners = np.where(same, caption_partner, embed_partner)
    flagged = np.flatnonzero(near | same)
    train_keys = _keys_at(store, "train", partners[flagged])
    excluded = [{"key": test_keys[i], "train_key": train_keys[int(partners[i])],
                 "same_caption": bool(same[i]), "near_duplicate": bool(near[i]),
                 "cosine": None if np.isnan(cosine[i]) else round(float(cosine[i]), 6)} for i in flagged]
    return {"signature": signature, "index": index_signature(index), "excluded": excluded,
            "counts": {"test_items_extracted": len(test_keys), "test_removed": len(excluded),
                       "test_removed_same_caption": int(same.sum()), "test_removed_near_duplicate": int(near.sum())}}


def excluded_keys(record: dict) -> frozenset[str]:
    return frozenset(e["key"] for e in record["excluded"])
