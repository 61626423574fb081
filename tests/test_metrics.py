"""Tests for bacl.metrics.retrieval_metrics.

The reference below is a deliberately naive, loop-based re-implementation of the
definitions (explicit pessimistic sort per query); it shares no code with the
vectorised module.
"""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from bacl.metrics import retrieval_metrics

TOL = 1e-9


# --------------------------------------------------------------------------- #
# Brute-force reference
# --------------------------------------------------------------------------- #
def _ref_query(cand_scores: list[float], relevant: set[int], ks) -> dict:
    # Sort by score descending; on ties, non-relevant (False) before relevant (True).
    order = sorted(range(len(cand_scores)), key=lambda c: (-cand_scores[c], c in relevant))
    rel_positions = [pos + 1 for pos, c in enumerate(order) if c in relevant]
    first = rel_positions[0]
    ap = sum((j + 1) / r for j, r in enumerate(rel_positions)) / len(rel_positions)
    dcg = sum(1.0 / math.log2(r + 1) for r in rel_positions if r <= 10)
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), 10) + 1))
    return {"first": first, "ap": ap, "ndcg": dcg / idcg}


def _ref_direction(prefix: str, per_query: list[dict], ks) -> dict[str, float]:
    firsts = [q["first"] for q in per_query]
    n = len(per_query)
    out = {}
    for k in ks:
        out[f"{prefix}_R@{k}"] = 100.0 * sum(1 for f in firsts if f <= k) / n
    out[f"{prefix}_MRR"] = sum(1.0 / f for f in firsts) / n
    out[f"{prefix}_nDCG@10"] = sum(q["ndcg"] for q in per_query) / n
    out[f"{prefix}_mAP"] = sum(q["ap"] for q in per_query) / n
    out[f"{prefix}_mean_rank"] = sum(firsts) / n
    out[f"{prefix}_median_rank"] = float(statistics.median(firsts))
    return out


def reference_metrics(scores: list[list[float]], text_to_item: list[int], ks=(1, 5, 10)):
    n_items, n_texts = len(scores), len(text_to_item)
    i2t = []
    for i in range(n_items):
        relevant = {j for j in range(n_texts) if text_to_item[j] == i}
        i2t.append(_ref_query([scores[i][j] for j in range(n_texts)], relevant, ks))
    t2i = []
    for j in range(n_texts):
        t2i.append(_ref_query([scores[i][j] for i in range(n_items)], {text_to_item[j]}, ks))
    out = _ref_direction("i2t", i2t, ks)
    out.update(_ref_direction("t2i", t2i, ks))
    return out


def _assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for key, value in want.items():
        assert isinstance(got[key], float), key
        assert abs(got[key] - value) <= TOL, (key, got[key], value)


def _random_case(seed: int, n_values: int = 3):
    rng = random.Random(seed)
    n_items = rng.randint(1, 7)
    caps = [rng.randint(1, 3) for _ in range(n_items)]
    text_to_item = [i for i, c in enumerate(caps) for _ in range(c)]
    rng.shuffle(text_to_item)
    scores = [
        [float(rng.randint(0, n_values - 1)) for _ in text_to_item] for _ in range(n_items)
    ]
    return scores, text_to_item


# --------------------------------------------------------------------------- #
# Randomised comparison with the reference (many ties)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(40))
def test_matches_bruteforce_with_ties(seed):
    scores, t2i = _random_case(seed, n_values=2 + seed % 3)
    ks = (1, 2, 3, 5, 10)
    want = reference_metrics(scores, t2i, ks)
    got = retrieval_metrics(
        torch.tensor(scores, dtype=torch.float64), torch.tensor(t2i), ks=ks
    )
    _assert_close(got, want)


@pytest.mark.parametrize("seed", range(5))
def test_matches_bruteforce_larger_and_chunking_invariant(seed):
    rng = random.Random(1000 + seed)
    n_items = 23
    caps = [rng.randint(1, 3) for _ in range(n_items)]
    text_to_item = [i for i, c in enumerate(caps) for _ in range(c)]
    rng.shuffle(text_to_item)
    scores = [[float(rng.randint(0, 4)) for _ in text_to_item] for _ in range(n_items)]
    want = reference_metrics(scores, text_to_item)
    s = torch.tensor(scores, dtype=torch.float32)
    t = torch.tensor(text_to_item)
    for chunk in (1, 4, 7, 1024):
        _assert_close(retrieval_metrics(s, t, chunk_size=chunk), want)


@pytest.mark.parametrize("seed", range(5))
def test_matches_bruteforce_continuous_scores(seed):
    gen = torch.Generator().manual_seed(seed)
    n_items = 9
    t = torch.randint(0, n_items, (20,), generator=gen)
    t[:n_items] = torch.arange(n_items)  # every item has >= 1 caption
    s = torch.randn(n_items, 20, generator=gen, dtype=torch.float64)
    want = reference_metrics(s.tolist(), t.tolist())
    _assert_close(retrieval_metrics(s, t), want)


def test_integer_and_low_precision_scores_match():
    scores, t2i = _random_case(7, n_values=3)
    want = reference_metrics(scores, t2i)
    t = torch.tensor(t2i)
    for dtype in (torch.int64, torch.float16, torch.bfloat16, torch.float32):
        _assert_close(retrieval_metrics(torch.tensor(scores).to(dtype), t), want)


# --------------------------------------------------------------------------- #
# Hand-computed cases
# --------------------------------------------------------------------------- #
def test_identity_like_scores_are_perfect():
    caps = [1, 3, 2, 2]
    t2i = torch.tensor([i for i, c in enumerate(caps) for _ in range(c)])
    t2i = t2i[torch.tensor([4, 0, 7, 2, 1, 6, 3, 5])]  # shuffle the caption order
    scores = (torch.arange(len(caps))[:, None] == t2i[None, :]).float()
    got = retrieval_metrics(scores, t2i)
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert got[f"{d}_R@{k}"] == 100.0
        assert got[f"{d}_MRR"] == 1.0
        assert got[f"{d}_mAP"] == pytest.approx(1.0, abs=TOL)
        assert got[f"{d}_nDCG@10"] == pytest.approx(1.0, abs=TOL)
        assert got[f"{d}_mean_rank"] == 1.0
        assert got[f"{d}_median_rank"] == 1.0


def test_all_equal_scores_are_pessimistic():
    # 3 items with 1, 2, 3 captions -> M = 6 texts, every score equal.
    # i2t: all M - c_i non-relevant texts are placed before the item's captions:
    #      first ranks = 6-1+1, 6-2+1, 6-3+1 = 6, 5, 4.
    # t2i: the other N-1 = 2 items tie with the right one -> every rank is 3.
    caps = [1, 2, 3]
    t2i = torch.tensor([i for i, c in enumerate(caps) for _ in range(c)])
    m = t2i.numel()
    got = retrieval_metrics(torch.full((3, m), 0.25), t2i)
    assert got["i2t_R@1"] == 0.0
    assert got["i2t_R@5"] == pytest.approx(200.0 / 3, abs=TOL)  # ranks 5 and 4
    assert got["i2t_R@10"] == 100.0
    assert got["i2t_mean_rank"] == 5.0
    assert got["i2t_median_rank"] == 5.0
    assert got["i2t_MRR"] == pytest.approx((1 / 6 + 1 / 5 + 1 / 4) / 3, abs=TOL)
    # AP of an item with c captions occupying the last c positions of M.
    aps = [sum(j / (m - c + j) for j in range(1, c + 1)) / c for c in caps]
    assert got["i2t_mAP"] == pytest.approx(sum(aps) / 3, abs=TOL)
    assert got["t2i_R@1"] == 0.0
    assert got["t2i_R@5"] == 100.0
    assert got["t2i_mean_rank"] == 3.0
    assert got["t2i_median_rank"] == 3.0
    assert got["t2i_MRR"] == pytest.approx(1 / 3, abs=TOL)

    # The brief's formula: an item with 1 caption among M texts -> rank M - 1 + 1 = M.
    got1 = retrieval_metrics(torch.zeros(2, 5), torch.tensor([0, 1, 1, 1, 1]), ks=(1,))
    # item 0: 1 caption -> rank 5; item 1: 4 captions -> rank 5 - 4 + 1 = 2.
    assert got1["i2t_mean_rank"] == 3.5
    assert got1["i2t_R@1"] == 0.0


def test_tiny_hand_computed_example():
    # text_to_item = [0, 0, 1]; scores (rows = items, columns = texts):
    #   item0: t0=0.9  t1=0.2  t2=0.5
    #   item1: t0=0.3  t1=0.4  t2=0.4
    # i2t
    #   item0: relevant {t0, t1}; order t0(0.9) t2(0.5) t1(0.2) -> relevant ranks 1, 3
    #          first=1, AP=(1/1 + 2/3)/2 = 5/6, DCG=1 + 1/log2(4)=1.5,
    #          IDCG=1 + 1/log2(3), nDCG=1.5/(1 + 1/log2 3)
    #   item1: relevant {t2}; t1 ties with t2 at 0.4 and goes first (pessimistic):
    #          order t1 t2 t0 -> rank 2, AP=1/2, nDCG=1/log2(3)
    #   R@1=50, R@5=R@10=100, MRR=(1+1/2)/2=0.75, mAP=(5/6+1/2)/2=2/3,
    #   mean rank=1.5, median=1.5
    # t2i
    #   t0: items (0.9, 0.3), relevant item0 -> rank 1
    #   t1: items (0.2, 0.4), relevant item0 -> rank 2
    #   t2: items (0.5, 0.4), relevant item1 -> rank 2
    #   R@1=100/3, R@5=100, MRR=mAP=(1+1/2+1/2)/3=2/3,
    #   nDCG=(1 + 2/log2 3)/3, mean rank=5/3, median=2
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.3, 0.4, 0.4]])
    got = retrieval_metrics(scores, torch.tensor([0, 0, 1]))
    inv_l3 = 1.0 / math.log2(3)
    want = {
        "i2t_R@1": 50.0,
        "i2t_R@5": 100.0,
        "i2t_R@10": 100.0,
        "i2t_MRR": 0.75,
        "i2t_mAP": 2.0 / 3.0,
        "i2t_nDCG@10": (1.5 / (1.0 + inv_l3) + inv_l3) / 2.0,
        "i2t_mean_rank": 1.5,
        "i2t_median_rank": 1.5,
        "t2i_R@1": 100.0 / 3.0,
        "t2i_R@5": 100.0,
        "t2i_R@10": 100.0,
        "t2i_MRR": 2.0 / 3.0,
        "t2i_mAP": 2.0 / 3.0,
        "t2i_nDCG@10": (1.0 + 2.0 * inv_l3) / 3.0,
        "t2i_mean_rank": 5.0 / 3.0,
        "t2i_median_rank": 2.0,
    }
    _assert_close(got, want)
    # and the brute-force reference agrees with the hand computation
    _assert_close(reference_metrics(scores.double().tolist(), [0, 0, 1]), want)


def test_ndcg_cutoff_and_many_captions():
    # One item with 12 captions among 15 texts, 3 distractors scored above all captions.
    # Captions sit at ranks 4..15; only ranks 4..10 count for nDCG@10.
    t2i = torch.tensor([1, 2, 3] + [0] * 12)
    scores = torch.zeros(4, 15)
    scores[0, :3] = 1.0
    scores[1, 0] = scores[2, 1] = scores[3, 2] = 1.0
    got = retrieval_metrics(scores, t2i)
    dcg = sum(1 / math.log2(r + 1) for r in range(4, 11))
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 11))
    # items 1..3: their single caption is the only 1.0 in their row -> rank 1, nDCG 1
    assert got["i2t_nDCG@10"] == pytest.approx((dcg / idcg + 3.0) / 4, abs=TOL)
    # t2i: captions t0..t2 tie between their own item and item 0 -> rank 2 (pessimistic);
    # the 12 captions of item 0 score 0 everywhere, all 4 items tie -> rank 4.
    assert got["t2i_R@1"] == 0.0
    assert got["t2i_mean_rank"] == pytest.approx((3 * 2 + 12 * 4) / 15, abs=TOL)
    _assert_close(got, reference_metrics(scores.double().tolist(), t2i.tolist()))


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #
def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="length mismatch"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_item_without_caption_raises():
    with pytest.raises(ValueError, match=r"no caption: \[1\]"):
        retrieval_metrics(torch.zeros(3, 3), torch.tensor([0, 2, 2]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_raises(bad):
    s = torch.zeros(2, 2)
    s[1, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(s, torch.tensor([0, 1]))


def test_other_bad_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(torch.zeros(3), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), ks=(0,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores, t2i = _random_case(3, n_values=3)
    want = reference_metrics(scores, t2i)
    got = retrieval_metrics(torch.tensor(scores).cuda(), torch.tensor(t2i).cuda(), chunk_size=2)
    _assert_close(got, want)


# --------------------------------------------------------------------------- #
# Blockwise: the same numbers from the embeddings, without the score matrix
# --------------------------------------------------------------------------- #
def _embeddings(n_items: int, per_item: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 Gaussian embeddings: ties have probability zero; a varying number of captions per item."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, per_item + 1, (n_items,), generator=gen)
    text_item = torch.repeat_interleave(torch.arange(n_items), counts)
    text_item = text_item[torch.randperm(text_item.numel(), generator=gen)]
    items = torch.randn(n_items, 8, generator=gen, dtype=torch.float64)
    texts = items[text_item] + 1.5 * torch.randn(text_item.numel(), 8, generator=gen, dtype=torch.float64)
    return items, texts, text_item


@pytest.mark.parametrize("block", [1, 7, 32, 50, 1000])
@pytest.mark.parametrize("per_item", [1, 3])
def test_blockwise_equals_dense(block, per_item):
    from bacl.metrics import blockwise_retrieval

    items, texts, text_item = _embeddings(50, per_item, seed=block + per_item)
    got = blockwise_retrieval(items, texts, text_item, ks=(1, 5, 10), block=block, top_k=4)
    dense = items @ texts.T
    assert got.metrics == retrieval_metrics(dense, text_item, ks=(1, 5, 10))
    assert torch.equal(got.top["i2t"], dense.topk(4, dim=1).indices)
    assert torch.equal(got.top["t2i"], dense.T.topk(4, dim=1).indices)
    own = text_item[None, :] == torch.arange(50)[:, None]
    margin = dense.masked_fill(~own, float("-inf")).amax(1) - dense.masked_fill(own, float("-inf")).amax(1)
    assert torch.allclose(got.margin, margin, rtol=0, atol=1e-12)  # a block of one row is a matrix-vector product


def test_shortlist_first_rank_equals_a_rescored_dense_matrix():
    from bacl.metrics import blockwise_retrieval, recall_at, shortlist_first_rank

    items, texts, text_item = _embeddings(40, 3, seed=0)
    ranked = blockwise_retrieval(items, texts, text_item, ks=(1,), block=9, top_k=5)
    dense = items @ texts.T
    new = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    top = ranked.top["i2t"]
    relevant = text_item[top] == torch.arange(40)[:, None]
    first = shortlist_first_rank(new, relevant, ranked.first_rank["i2t"])
    rescored = dense.scatter(1, top, 1e4 + new)
    want = retrieval_metrics(rescored, text_item, ks=(1, 3, 5))
    assert recall_at("i2t", first, (1, 3, 5)) == {k: v for k, v in want.items() if k.startswith("i2t_R@")}


def test_blockwise_never_builds_a_matrix_of_all_pairs():
    """Every tensor any torch op creates stays within block x captions x (captions per item) elements."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bacl.metrics import blockwise_retrieval

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    n, block = 600, 16
    items, texts, text_item = _embeddings(n, 2, seed=3)
    m = text_item.numel()
    with Largest():
        blockwise_retrieval(items, texts, text_item, block=block, top_k=8)
    assert block * m * 2 >= Largest.numel >= block * m  # the [block, R, M] comparison, R = 2 captions per item
    assert Largest.numel < n * m / 10


def test_blockwise_bad_inputs_raise():
    from bacl.metrics import blockwise_retrieval

    with pytest.raises(ValueError, match="length mismatch"):
        blockwise_retrieval(torch.zeros(2, 3), torch.zeros(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        blockwise_retrieval(torch.tensor([[float("nan")], [1.0]]), torch.ones(2, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        blockwise_retrieval(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="top_k"):
        blockwise_retrieval(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), top_k=-1)
