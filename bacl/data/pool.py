"""BNS candidate pools: the k nearest items of each anchor in the frozen space, by FAISS."""
from __future__ import annotations

import faiss
import numpy as np
import torch

from bacl.registry import ConfigError


def candidate_pool(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] indices of each item's k most cosine-similar *other* items, best first.

    Pools are over items, so excluding the anchor excludes its positive and every
    other caption of the same item.
    """
    n = embeddings.shape[0]
    if not 0 < k < n:
        raise ConfigError(f"pool.k={k} is out of range: the split has {n} items, so k must be in [1, {n - 1}]")
    x = torch.nn.functional.normalize(embeddings.float(), dim=1).numpy().astype(np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, k + 1)
    found = torch.from_numpy(found).long()
    # Drop the anchor itself; if ties pushed it out of the top k+1, drop the last instead.
    not_self = found != torch.arange(n)[:, None]
    keep = torch.argsort((~not_self).to(torch.int8), dim=1, stable=True)[:, :k]
    return torch.gather(found, 1, keep)
