"""Cross-modal retrieval metrics (several captions per item), vectorised in torch.

Conventions (read these before comparing numbers with other code bases):

* **Direction names.** ``i2t``: the query is an *item* (image / video / audio) and
  the candidates are all texts; every caption of the item is relevant.
  ``t2i``: the query is a *caption* and the candidates are all items; exactly one
  item (the caption's own) is relevant. CLIP_benchmark names these the other way
  round from what one might expect: its ``text_retrieval_recall@k`` is our
  ``i2t_R@k`` and its ``image_retrieval_recall@k`` is our ``t2i_R@k``. Its CLI
  also defaults to ``--recall_k 5`` only, so R@1 / R@10 must be asked for
  explicitly; here the default is ``ks=(1, 5, 10)``.
* **Pessimistic ties.** For every query, candidates are ordered by score
  (descending) and ties are broken so that *non-relevant candidates come before
  relevant ones*. Every rank is a 1-based position in that order. A collapsed
  model that gives every pair the same score therefore gets R@1 close to 0, not
  100 (``topk``/``argsort``-based code breaks ties by index and can score a
  degenerate model highly). Consequences:

  - ``first_rank = 1 + #{non-relevant c : score_c >= max relevant score}``;
  - a relevant candidate ``p`` gets the rank
    ``1 + #{non-relevant c : score_c >= score_p} + (number of relevant candidates
    placed before p)``, where relevant candidates are ordered by score (their
    mutual tie order does not change any metric).

  These ranks are computed by counting comparisons (no per-query sort), which
  gives exactly the positions of the sorted, pessimistic order.

Returned keys (all Python floats):

* ``i2t_R@k``, ``t2i_R@k`` for ``k`` in ``ks``: percent (0-100) of queries whose
  ``first_rank <= k`` (hit@k; for i2t any caption of the item counts).
* ``i2t_MRR``, ``t2i_MRR``: mean of ``1 / first_rank`` (0-1).
* ``i2t_nDCG@10``, ``t2i_nDCG@10``: binary relevance, ``DCG = sum_{relevant p,
  rank_p <= 10} 1 / log2(rank_p + 1)``, ``IDCG = sum_{i=1}^{min(#rel, 10)}
  1 / log2(i + 1)``, averaged over queries (0-1).
* ``i2t_mAP``, ``t2i_mAP``: average precision over all relevant candidates of a
  query (mean over them of ``hits_so_far / rank_p``), averaged over queries (0-1).
* ``i2t_mean_rank``, ``i2t_median_rank``, ``t2i_mean_rank``, ``t2i_median_rank``:
  of ``first_rank`` (1-based). The median uses numpy semantics (mean of the two
  middle values for an even number of queries).

Scale: ``blockwise_retrieval`` takes the two embedding matrices instead of the score
matrix and scores one block of queries against every candidate at a time, keeping only each
query's ranks (and, if asked, its top-k shortlist): the same numbers with peak memory
O(block x candidates), never [items x captions].

Memory: queries are processed in chunks of ``chunk_size``; a chunk needs about
``chunk_size * R * C`` booleans, where ``C`` is the number of candidates and
``R`` the largest number of relevant candidates of a query (max captions per item
for i2t, 1 for t2i). All metric arithmetic is done in float64; score comparisons
are exact in the input dtype (integer scores are converted to float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PairScores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (items, captions) index tensors of one shape -> scores

__all__ = ["BlockwiseRetrieval", "PairScores", "blockwise_retrieval", "recall_at", "retrieval_metrics", "shortlist_first_rank"]

_NDCG_CUTOFF = 10


def _validate(
    scores: torch.Tensor, text_to_item: torch.Tensor, ks: Sequence[int], chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(
            f"scores must be 2-D [N_items, M_texts], got shape {tuple(scores.shape)}"
        )
    n_items, n_texts = scores.shape
    if n_items == 0 or n_texts == 0:
        raise ValueError(f"scores is empty (shape {tuple(scores.shape)})")
    if scores.is_complex():
        raise ValueError("scores must be real-valued, got a complex tensor")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    if not bool(torch.isfinite(scores).all()):
        n_bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"scores contain {n_bad} non-finite value(s) (NaN or Inf)")
    text_to_item, ks_list, counts = _validate_labels(text_to_item, n_items, n_texts, scores.device, ks, chunk_size,
                                                     f"scores has M_texts={n_texts} columns (shape {tuple(scores.shape)})")
    return scores, text_to_item, ks_list, counts


def _validate_labels(text_to_item: torch.Tensor, n_items: int, n_texts: int, device: torch.device,
                     ks: Sequence[int], chunk_size: int, texts: str) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """text_to_item as long on `device`, ks as ints and the captions per item; `texts` says where M_texts came from."""
    text_to_item = torch.as_tensor(text_to_item)
    if text_to_item.ndim != 1:
        raise ValueError(
            f"text_to_item must be 1-D [M_texts], got shape {tuple(text_to_item.shape)}"
        )
    if text_to_item.dtype == torch.bool or text_to_item.is_floating_point() or text_to_item.is_complex():
        raise ValueError(f"text_to_item must be an integer tensor, got dtype {text_to_item.dtype}")
    if text_to_item.numel() != n_texts:
        raise ValueError(
            f"length mismatch: text_to_item has {text_to_item.numel()} entries but {texts}"
        )
    text_to_item = text_to_item.to(device=device, dtype=torch.long)
    lo, hi = int(text_to_item.min()), int(text_to_item.max())
    if lo < 0 or hi >= n_items:
        raise ValueError(
            f"text_to_item contains item indices outside [0, {n_items}) "
            f"(min {lo}, max {hi}); there are N_items={n_items} items"
        )
    counts = torch.bincount(text_to_item, minlength=n_items)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()
        shown = missing[:10].tolist()
        more = "" if missing.numel() <= 10 else f" ... ({missing.numel()} in total)"
        raise ValueError(
            f"item(s) with no caption: {shown}{more}; every item needs >= 1 caption "
            "in text_to_item"
        )

    ks_list: list[int] = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"ks must be positive integers, got {k!r}")
        ks_list.append(int(k))
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return text_to_item, ks_list, counts


def _caption_table(text_to_item: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, R] caption indices of each item (R = most captions of an item) and which slots are real."""
    n_items, n_texts, device = counts.numel(), text_to_item.numel(), text_to_item.device
    r_max = int(counts.max())
    order = torch.sort(text_to_item, stable=True).indices  # texts grouped by item
    offsets = torch.cumsum(counts, 0) - counts  # first slot of each item in `order`
    item_of_sorted = text_to_item[order]
    slot = torch.arange(n_texts, device=device) - offsets[item_of_sorted]
    caption_table = torch.zeros((n_items, r_max), dtype=torch.long, device=device)
    caption_table[item_of_sorted, slot] = order
    return caption_table, torch.arange(r_max, device=device)[None, :] < counts[:, None]


def _chunk_ranks(
    cand_scores: torch.Tensor, rel_scores: torch.Tensor, n_rel: torch.Tensor
) -> torch.Tensor:
    """Pessimistic ranks of the relevant candidates of a chunk of queries.

    cand_scores: [q, C] scores of all candidates (relevant ones included).
    rel_scores:  [q, R] scores of the relevant candidates, padding anywhere.
    n_rel:       [q] number of real (non-padding) entries; padding is marked by
                 being placed after them once sorted, see below.
    Returns [q, R] long ranks, ascending along R; entries >= n_rel are garbage.
    """
    q, r_max = rel_scores.shape
    slot = torch.arange(r_max, device=rel_scores.device)
    valid = slot[None, :] < n_rel[:, None]  # in the *sorted* layout
    # Relevant scores in descending order, padding last (padding arrives as -inf).
    rel_sorted = torch.sort(rel_scores, dim=1, descending=True).values
    # #{all candidates with score >= s_p}  (includes p and the other relevant ones)
    ge_all = (cand_scores[:, None, :] >= rel_sorted[:, :, None]).sum(dim=2)
    # #{relevant candidates with score >= s_p}  (includes p)
    ge_rel = ((rel_sorted[:, None, :] >= rel_sorted[:, :, None]) & valid[:, None, :]).sum(dim=2)
    nonrel_ge = ge_all - ge_rel
    return 1 + nonrel_ge + slot[None, :]


def _summarise(
    ranks: torch.Tensor, n_rel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """first_rank [q] (long), AP [q] and nDCG@10 [q] (float64) from sorted ranks."""
    r_max = ranks.shape[1]
    slot = torch.arange(r_max, device=ranks.device)
    valid = slot[None, :] < n_rel[:, None]
    rf = ranks.to(torch.float64)
    hits = (slot + 1).to(torch.float64)[None, :]
    ap = torch.where(valid, hits / rf, torch.zeros_like(rf)).sum(dim=1) / n_rel.to(torch.float64)
    gain = torch.where(
        valid & (ranks <= _NDCG_CUTOFF), 1.0 / torch.log2(rf + 1.0), torch.zeros_like(rf)
    )
    dcg = gain.sum(dim=1)
    ideal_disc = 1.0 / torch.log2(
        torch.arange(2, _NDCG_CUTOFF + 2, device=ranks.device, dtype=torch.float64)
    )
    ideal_cum = torch.cat([ideal_disc.new_zeros(1), torch.cumsum(ideal_disc, 0)])
    idcg = ideal_cum[n_rel.clamp(max=_NDCG_CUTOFF)]
    return ranks[:, 0], ap, dcg / idcg


def _median(x: torch.Tensor) -> float:
    """numpy-style median (average of the two middle values for even length)."""
    v = torch.sort(x.to(torch.float64)).values
    n = v.numel()
    mid = n // 2
    if n % 2 == 1:
        return float(v[mid])
    return float((v[mid - 1] + v[mid]) / 2.0)


def recall_at(prefix: str, first: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """``{prefix}_R@k``: percent of queries whose first relevant candidate is ranked within k."""
    return {f"{prefix}_R@{k}": float((first <= k).to(torch.float64).mean() * 100.0) for k in ks}


def _direction_metrics(
    prefix: str,
    first: torch.Tensor,
    ap: torch.Tensor,
    ndcg: torch.Tensor,
    ks: Sequence[int],
) -> dict[str, float]:
    out = recall_at(prefix, first, ks)
    first_f = first.to(torch.float64)
    out[f"{prefix}_MRR"] = float((1.0 / first_f).mean())
    out[f"{prefix}_nDCG@{_NDCG_CUTOFF}"] = float(ndcg.mean())
    out[f"{prefix}_mAP"] = float(ap.mean())
    out[f"{prefix}_mean_rank"] = float(first_f.mean())
    out[f"{prefix}_median_rank"] = _median(first)
    return out


@torch.no_grad()
def retrieval_metrics(
    scores: torch.Tensor,
    text_to_item: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Retrieval metrics for both directions with pessimistic tie handling.

    Args:
        scores: [N_items, M_texts] similarity of every item to every text.
        text_to_item: [M_texts] integer tensor, the item index of each caption.
            Every item must have at least one caption.
        ks: cut-offs for Recall@k (reported in percent).
        chunk_size: number of queries processed at once (bounds memory).

    Returns:
        dict with ``{i2t,t2i}_R@k`` (percent), ``_MRR``, ``_nDCG@10``, ``_mAP``
        (0-1), ``_mean_rank`` and ``_median_rank`` (1-based). See module docstring.

    Raises:
        ValueError: on shape / length mismatches, non-integer or out-of-range
            ``text_to_item``, items without captions, non-finite scores, bad ``ks``.
    """
    scores, text_to_item, ks_list, counts = _validate(scores, text_to_item, ks, chunk_size)
    chunk_size = int(chunk_size)
    n_items, n_texts = scores.shape
    device = scores.device
    # ---- i2t: query = item, candidates = texts, relevant = the item's captions.
    caption_table, table_valid = _caption_table(text_to_item, counts)

    firsts, aps, ndcgs = [], [], []
    for a in range(0, n_items, chunk_size):
        b = min(a + chunk_size, n_items)
        cand = scores[a:b]  # [q, M]
        rel = torch.gather(cand, 1, caption_table[a:b])
        rel = rel.masked_fill(~table_valid[a:b], float("-inf"))
        n_rel = counts[a:b]
        f, ap, nd = _summarise(_chunk_ranks(cand, rel, n_rel), n_rel)
        firsts.append(f)
        aps.append(ap)
        ndcgs.append(nd)
    out = _direction_metrics("i2t", torch.cat(firsts), torch.cat(aps), torch.cat(ndcgs), ks_list)

    # ---- t2i: query = caption, candidates = items, relevant = its single item.
    firsts, aps, ndcgs = [], [], []
    for a in range(0, n_texts, chunk_size):
        b = min(a + chunk_size, n_texts)
        cand = scores[:, a:b].T  # [q, N]
        rel = torch.gather(cand, 1, text_to_item[a:b, None])  # [q, 1]
        n_rel = torch.ones(b - a, dtype=torch.long, device=device)
        f, ap, nd = _summarise(_chunk_ranks(cand, rel, n_rel), n_rel)
        firsts.append(f)
        aps.append(ap)
        ndcgs.append(nd)
    out.update(
        _direction_metrics("t2i", torch.cat(firsts), torch.cat(aps), torch.cat(ndcgs), ks_list)
    )
    return out


@dataclass
class BlockwiseRetrieval:
    """What evaluation keeps of the score matrix: metrics, first ranks, shortlists and margins."""

    metrics: dict[str, float]  # those of `retrieval_metrics`
    first_rank: dict[str, torch.Tensor]  # "i2t": [N_items], "t2i": [M_texts] pessimistic rank of the first relevant
    top: dict[str, torch.Tensor]  # [queries, top_k] candidate indices, best first (top_k = 0: [queries, 0])
    top_scores: dict[str, torch.Tensor]  # [queries, top_k] their scores
    margin: torch.Tensor  # [N_items] best own-caption score minus best other caption's (+inf with no other caption)


def _check_finite(scores: torch.Tensor) -> None:
    if not bool(torch.isfinite(scores).all()):
        n_bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"scores contain {n_bad} non-finite value(s) (NaN or Inf)")


@torch.no_grad()
def blockwise_retrieval(
    items: torch.Tensor,
    texts: torch.Tensor,
    text_to_item: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block: int = 1024,
    top_k: int = 0,
) -> BlockwiseRetrieval:
    """`retrieval_metrics(items @ texts.T, ...)` without the matrix: `block` queries at a time.

    Each block of item queries is scored against every caption ([block, M_texts]) and each
    block of caption queries against every item ([block, N_items]); only ranks, the top
    `top_k` candidates (re-ranking shortlists) and the alignment margin outlive the block,
    so peak memory is O(block x max(N, M) x captions per item), not O(N x M).

    Args:
        items: [N_items, d] item embeddings; texts: [M_texts, d] caption embeddings.
        text_to_item, ks: as in `retrieval_metrics`; block: queries scored at once.
        top_k: shortlist length per query (0: none).
    """
    if items.ndim != 2 or texts.ndim != 2 or items.shape[1] != texts.shape[1]:
        raise ValueError(f"items and texts must be [N, d] and [M, d], got {tuple(items.shape)} and {tuple(texts.shape)}")
    n_items, n_texts = items.shape[0], texts.shape[0]
    if n_items == 0 or n_texts == 0:
        raise ValueError(f"nothing to evaluate: {n_items} items, {n_texts} texts")
    text_to_item, ks_list, counts = _validate_labels(text_to_item, n_items, n_texts, items.device, ks, block,
                                                     f"texts has M_texts={n_texts} rows")
    if isinstance(top_k, bool) or int(top_k) != top_k or int(top_k) < 0:
        raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
    caption_table, table_valid = _caption_table(text_to_item, counts)
    firsts: dict[str, list[torch.Tensor]] = {"i2t": [], "t2i": []}
    aps: dict[str, list[torch.Tensor]] = {"i2t": [], "t2i": []}
    ndcgs: dict[str, list[torch.Tensor]] = {"i2t": [], "t2i": []}
    tops: dict[str, list[torch.Tensor]] = {"i2t": [], "t2i": []}
    top_scores: dict[str, list[torch.Tensor]] = {"i2t": [], "t2i": []}
    margins = []
    for direction, queries, keys in (("i2t", items, texts), ("t2i", texts, items)):
        for a in range(0, queries.shape[0], int(block)):
            scores = queries[a:a + int(block)] @ keys.T  # [q, keys]
            _check_finite(scores)
            rows = torch.arange(a, a + scores.shape[0], device=scores.device)
            if direction == "i2t":
                n_rel = counts[rows]
                rel = torch.gather(scores, 1, caption_table[rows]).masked_fill(~table_valid[rows], float("-inf"))
                own = text_to_item[None, :] == rows[:, None]
                margins.append(rel.amax(dim=1) - scores.masked_fill(own, float("-inf")).amax(dim=1))
            else:
                n_rel = torch.ones_like(rows)
                rel = torch.gather(scores, 1, text_to_item[rows, None])
            first, ap, ndcg = _summarise(_chunk_ranks(scores, rel, n_rel), n_rel)
            firsts[direction].append(first)
            aps[direction].append(ap)
            ndcgs[direction].append(ndcg)
            shortlist = scores.topk(min(int(top_k), scores.shape[1]), dim=1)
            tops[direction].append(shortlist.indices)
            top_scores[direction].append(shortlist.values)
    metrics: dict[str, float] = {}
    for direction in ("i2t", "t2i"):
        metrics.update(_direction_metrics(direction, torch.cat(firsts[direction]), torch.cat(aps[direction]),
                                          torch.cat(ndcgs[direction]), ks_list))
    return BlockwiseRetrieval(metrics=metrics, first_rank={d: torch.cat(v) for d, v in firsts.items()},
                              top={d: torch.cat(v) for d, v in tops.items()},
                              top_scores={d: torch.cat(v) for d, v in top_scores.items()}, margin=torch.cat(margins))


def shortlist_first_rank(score: torch.Tensor, relevant: torch.Tensor, first_rank: torch.Tensor) -> torch.Tensor:
    """First relevant rank once each query's shortlist is re-scored and placed above the rest.

    score, relevant: [queries, k] new scores of the shortlist and which entries are relevant;
    first_rank: [queries] the rank before re-scoring. Pessimistic ties as everywhere here. A
    query with nothing relevant in its shortlist keeps its rank: the shortlist held the k
    best-scored candidates, all non-relevant and all already ranked above its first relevant one.
    """
    best = score.masked_fill(~relevant, float("-inf")).amax(dim=1)
    above = ((score >= best[:, None]) & ~relevant).sum(dim=1)
    return torch.where(relevant.any(dim=1), 1 + above, first_rank)
