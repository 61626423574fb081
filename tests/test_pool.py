"""Candidate pools: exact search against brute force, approximate indexes against exact, config errors."""
import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bacl.data import pool as pool_module
from bacl.data.pool import (
    CaptionSets,
    IndexConfig,
    build_index,
    candidate_pool,
    filtered_candidate_pool,
    pool_counts,
    search_pool,
    validate_index,
)
from bacl.errors import ConfigError

N = 400


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _random(n: int = N, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _clustered(n: int = 3000, d: int = 32, clusters: int = 30, seed: int = 0) -> torch.Tensor:
    """Overlapping Gaussian clusters: structure for approximate indexes to exploit, not so much that they are exact."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, d, generator=g)


def _reference(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force cosine top-k without the anchor, in float64: (similarities, indices)."""
    xn = F.normalize(x.double(), dim=1)
    sims = xn @ xn.T
    sims.fill_diagonal_(-float("inf"))
    return sims.topk(k, dim=1)


def _assert_valid(pool: torch.Tensor, k: int) -> None:
    n = pool.shape[0]
    assert pool.shape == (n, k) and pool.dtype == torch.int64
    assert ((pool >= 0) & (pool < n)).all()
    assert not (pool == torch.arange(n)[:, None]).any()
    assert all(len(set(row.tolist())) == k for row in pool)


def _recall(pool: torch.Tensor, exact: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(a) for a, b in zip(pool, exact)]))


@pytest.mark.parametrize("k", [1, 5, 20])
def test_exact_pool_equals_brute_force(k):
    x = _random()
    sims, ref = _reference(x, k + 1)
    assert (sims[:, :-1] - sims[:, 1:]).min() > 1e-6  # no near-ties (float32 rounding is ~1e-7): one right order
    assert torch.equal(candidate_pool(x, k), ref[:, :k])


def test_ivf_probing_every_list_is_exact():
    x = _random()
    assert torch.equal(candidate_pool(x, 10, IndexConfig(kind="ivf", nlist=8, nprobe=8)), candidate_pool(x, 10))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_ties_exclude_the_anchor_and_return_k_distinct_items(kind):
    x = _random(30, 8).repeat(8, 1)  # eight exact copies of each item: more ties than k+1 places
    cfg = IndexConfig(kind=kind, nlist=4)
    xn = F.normalize(x, dim=1).numpy()
    _, raw = build_index(xn, cfg).search(xn, 6)
    assert (raw != np.arange(240)[:, None]).all(1).any()  # some anchors are tied out of the top k+1
    pool = candidate_pool(x, 5, cfg)
    _assert_valid(pool, 5)
    xn = F.normalize(x.double(), dim=1)
    assert torch.allclose(torch.gather(xn @ xn.T, 1, pool), torch.ones(240, 5, dtype=torch.float64))


@pytest.mark.parametrize("cfg, floor", [
    (IndexConfig(kind="ivf", nlist=50, nprobe=2), 0.9),  # 0.948 with these seeds
    (IndexConfig(kind="hnsw", hnsw_m=8, ef_search=16, ef_construction=40), 0.95),  # 0.981
])
def test_approximate_recall_against_exact(cfg, floor):
    x = _clustered()
    exact = candidate_pool(x, 10)
    pool = candidate_pool(x, 10, cfg)
    _assert_valid(pool, 10)
    assert _recall(pool, exact) >= floor


def test_underfilled_ivf_lists_still_give_k_items():
    x = _random(200, 8)  # 50 lists of about 4 items, one probed: fewer than k+1 found, the rest searched exactly
    pool = candidate_pool(x, 10, IndexConfig(kind="ivf", nlist=50, nprobe=1))
    _assert_valid(pool, 10)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_query_batches_do_not_change_the_pool(kind):
    x = _clustered(800)
    whole = candidate_pool(x, 7, IndexConfig(kind=kind, nlist=20, nprobe=2))
    batched = candidate_pool(x, 7, IndexConfig(kind=kind, nlist=20, nprobe=2, query_batch=97))
    assert torch.equal(whole, batched)


def test_a_subset_of_queries_gets_the_rows_of_the_full_pool():
    x = _clustered(600)
    cfg = IndexConfig(kind="hnsw", hnsw_m=8, ef_search=16, ef_construction=40)
    rows = np.random.default_rng(0).choice(600, 50, replace=False)
    xn = F.normalize(x, dim=1).numpy()
    got = search_pool(build_index(xn, cfg), xn, rows, 7, query_batch=16)
    assert torch.equal(torch.from_numpy(got), candidate_pool(x, 7, cfg)[rows])


def test_numpy_torch_and_dictconfig_agree():
    x = _clustered(500)
    cfg = IndexConfig(kind="ivf", nlist=20, nprobe=3)
    ref = candidate_pool(x, 8, cfg)
    assert torch.equal(candidate_pool(x.numpy(), 8, cfg), ref)
    assert torch.equal(candidate_pool(x.numpy().astype(np.float64), 8, cfg), ref)
    assert torch.equal(candidate_pool(x, 8, OmegaConf.structured(cfg)), ref)


def test_ivf_training_is_reproducible():
    x = _clustered(2000)
    cfg = IndexConfig(kind="ivf", nlist=40, nprobe=2, train_size=500)  # a subsample: the seed matters
    assert torch.equal(candidate_pool(x, 5, cfg), candidate_pool(x, 5, cfg))


@pytest.mark.parametrize("k", [0, 72])
def test_pool_size_out_of_range(k):
    with pytest.raises(ConfigError, match="pool.k"):
        candidate_pool(torch.randn(72, 4), k)


@pytest.mark.parametrize("override, match", [
    ({"kind": "annoy"}, r"pool\.index\.kind='annoy' .*flat \| ivf \| ivfpq \| hnsw"),
    ({"nprobe": 0}, r"pool\.index\.nprobe=0 .*> 0"),
    ({"nprobe": -2}, r"pool\.index\.nprobe=-2"),
    ({"gpu": "yes"}, r"pool\.index\.gpu='yes' .*auto \| never \| always"),
    ({"kind": "hnsw", "gpu": "always"}, r"pool\.index\.gpu='always' .*no GPU implementation of HNSW"),
    ({"query_batch": 0}, r"pool\.index\.query_batch=0"),
    ({"hnsw_m": 1}, r"pool\.index\.hnsw_m=1"),
])
def test_bad_index_config_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        validate_index(OmegaConf.structured(IndexConfig(**override)))
    with pytest.raises(ConfigError, match=match):
        candidate_pool(_random(50), 5, IndexConfig(**override))


def test_data_dependent_index_errors():
    with pytest.raises(ConfigError, match=r"pool\.index\.nlist=80 .*at most the number of items, 50"):
        candidate_pool(_random(50), 5, IndexConfig(kind="ivf", nlist=80))
    with pytest.raises(ConfigError, match=r"pool\.index\.train_size=10 .*at least pool\.index\.nlist=20"):
        candidate_pool(_random(100), 5, IndexConfig(kind="ivf", nlist=20, train_size=10))


def test_validate_index_uses_the_given_key():
    with pytest.raises(ConfigError, match=r"^eval\.index\.kind="):
        validate_index(IndexConfig(kind="lsh"), key="eval.index")


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0,
                    reason="faiss-gpu and a GPU are present: gpu=always is honoured")
def test_gpu_always_without_a_gpu_says_why():
    with pytest.raises(ConfigError, match=r"pool\.index\.gpu='always' .*(faiss-gpu is not installed|sees no GPU)"):
        candidate_pool(_random(50), 5, IndexConfig(gpu="always"))
    candidate_pool(_random(50), 5, IndexConfig(gpu="auto"))  # auto falls back to the CPU


def test_ivfpq_recall_grows_with_its_code_size():
    """Product quantisation trades recall for memory: 4, 8, 16 bytes per vector on 32-d data."""
    x = _clustered()
    exact = candidate_pool(x, 10)
    recalls = [_recall(candidate_pool(x, 10, IndexConfig(kind="ivfpq", nlist=50, nprobe=2, pq_m=m)), exact)
               for m in (4, 8, 16)]
    assert recalls[0] < recalls[1] < recalls[2]  # 0.50, 0.70, 0.87 with these seeds
    assert recalls[2] >= 0.8


def test_ivfpq_code_size_must_divide_the_width():
    with pytest.raises(ConfigError, match=r"pool.index.pq_m=5 .*divisor of the embedding width 32"):
        candidate_pool(_clustered(300), 5, IndexConfig(kind="ivfpq", nlist=4, pq_m=5))


# ---- duplicate filtering ---------------------------------------------------------------------------
def _with_duplicates(n: int = 300, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Random items, some exact copies and some near copies of others, and one caption per item of
    which some are shared: (embeddings, caption hashes [N], item of each caption [N])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[10:20] = x[0:10]  # exact copies
    x[20:30] = x[0:10] + 0.05 * torch.randn(10, d, generator=g)  # near copies, cosine about 0.999
    x[40:100] = x[30]  # one item copied 60 times: more duplicates than the first search depth (2k + 1)
    hashes = np.arange(n, dtype=np.int64) * 7919
    x[200:210] = x[100:110] + 0.6 * torch.randn(10, d, generator=g)  # close (cosine about 0.85), not duplicates...
    hashes[200:210] = hashes[100:110]  # ...but with the same caption
    return x, hashes, np.arange(n)


def _brute_force_filtered(x: torch.Tensor, duplicate: torch.Tensor, k: int) -> tuple[torch.Tensor, dict]:
    """The first k non-duplicates of each anchor by float64 cosine, and the duplicates of the unfiltered top k."""
    xn = F.normalize(x.double(), dim=1)
    sims = (xn @ xn.T).fill_diagonal_(-float("inf"))
    order = sims.argsort(dim=1, descending=True, stable=True)[:, :-1]  # the anchor (at -inf) last, dropped
    pool = torch.stack([row[~duplicate[i, row]][:k] for i, row in enumerate(order)])
    raw_dup = torch.gather(duplicate, 1, order[:, :k])
    return pool, {"dropped": int(raw_dup.sum()), "anchors_with_duplicates": int(raw_dup.any(1).sum())}


@pytest.mark.parametrize("k, max_depth", [(3, 1024), (10, 1024), (10, 30)])
def test_filtered_pool_equals_brute_force(k, max_depth, monkeypatch):
    """max_depth=30: the anchors with 60 copies are searched past it, exactly (as GPU indexes need past 2048)."""
    monkeypatch.setattr(pool_module, "MAX_INDEX_DEPTH", max_depth)
    x, hashes, item = _with_duplicates()
    threshold = 0.95
    xn = F.normalize(x.double(), dim=1)
    sims = xn @ xn.T
    near = sims > threshold
    assert ((sims - threshold).abs() > 1e-4).all()  # nothing so close to the threshold that float32 could flip it
    same = torch.from_numpy(hashes[:, None] == hashes[None, :])
    duplicate = (near | same).fill_diagonal_(False)
    expected, counts = _brute_force_filtered(x, duplicate, k)

    captions = CaptionSets.from_captions(hashes, item, len(x))
    pool, meta = filtered_candidate_pool(x, k, threshold=threshold, captions=captions)
    _assert_valid(pool, k)
    # exact copies tie with each other as candidates of a third item: equal up to the order of ties
    assert torch.allclose(torch.gather(sims, 1, pool), torch.gather(sims, 1, expected), atol=1e-6)
    assert (pool == expected).float().mean() > 0.9
    assert not torch.gather(duplicate, 1, pool).any()
    totals = pool_counts(meta, k, len(x))
    assert totals["pool_dropped"] == counts["dropped"] and totals["pool_filled"] == 0
    assert totals["pool_anchors_with_duplicates"] == counts["anchors_with_duplicates"]
    # the unfiltered pool has them: the failure the filter fixes
    raw = candidate_pool(x, k)
    assert torch.gather(duplicate, 1, raw).sum() == counts["dropped"] > 0
    assert totals["pool_near_duplicate"] == int(torch.gather(near.fill_diagonal_(False), 1, raw).sum())
    assert totals["pool_same_caption"] == int(torch.gather(same.fill_diagonal_(False), 1, raw).sum()) > 0


def test_a_filtered_pool_cut_to_fewer_candidates_counts_like_one_built_for_them():
    x, hashes, item = _with_duplicates()
    captions = CaptionSets.from_captions(hashes, item, len(x))
    big, meta = filtered_candidate_pool(x, 12, threshold=0.95, captions=captions)
    small, small_meta = filtered_candidate_pool(x, 5, threshold=0.95, captions=captions)
    xn = F.normalize(x.double(), dim=1)
    sims = xn @ xn.T  # equal up to the order of tied exact copies, which depends on the search depth
    assert torch.allclose(torch.gather(sims, 1, big[:, :5]), torch.gather(sims, 1, small), atol=1e-6)
    assert pool_counts(meta, 5, len(x)) == pool_counts(small_meta, 5, len(x))


def test_the_filter_off_is_the_unfiltered_pool_bit_for_bit():
    x, hashes, item = _with_duplicates()
    for k in (1, 5, 20):
        pool, meta = filtered_candidate_pool(x, k, threshold=1.0, captions=None)
        assert torch.equal(pool, candidate_pool(x, k)) and pool_counts(meta, k, len(x))["pool_dropped"] == 0
    y = _random()  # the filter on, nothing to drop: the same pool
    distinct = CaptionSets.from_captions(np.arange(N), np.arange(N), N)
    pool, meta = filtered_candidate_pool(y, 7, threshold=0.99, captions=distinct)
    assert torch.equal(pool, candidate_pool(y, 7)) and pool_counts(meta, 7, N)["pool_dropped"] == 0


def test_too_few_non_duplicates_fill_with_the_nearest_duplicates_and_count_them():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 8, generator=g)
    x[1:8] = x[0] + 0.05 * torch.randn(7, 8, generator=g)  # items 0-7 are one near-duplicate cluster
    pool, meta = filtered_candidate_pool(x, 6, threshold=0.95)
    _assert_valid(pool, 6)
    cluster = torch.arange(8)
    for anchor in range(8):  # four non-duplicates exist (items 8-11): they come first, then the two nearest copies
        row = pool[anchor]
        assert set(row[:4].tolist()) == {8, 9, 10, 11} and set(row[4:].tolist()) <= set(cluster.tolist())
        xn = F.normalize(x.double(), dim=1)
        copies = [c for c in (xn[anchor] @ xn.T).argsort(descending=True).tolist() if c < 8 and c != anchor]
        assert row[4:].tolist() == copies[:2]
    assert pool_counts(meta, 6, 12)["pool_filled"] == 8 * 2


@pytest.mark.parametrize("cfg", [IndexConfig(kind="ivf", nlist=8, nprobe=2), IndexConfig(kind="hnsw", hnsw_m=8)])
def test_approximate_filtered_pools_hold_no_duplicates(cfg):
    x, hashes, item = _with_duplicates()
    captions = CaptionSets.from_captions(hashes, item, len(x))
    pool, meta = filtered_candidate_pool(x, 5, cfg, threshold=0.95, captions=captions)
    _assert_valid(pool, 5)
    xn = F.normalize(x.double(), dim=1)
    duplicate = ((xn @ xn.T) > 0.95) | torch.from_numpy(hashes[:, None] == hashes[None, :])
    assert not torch.gather(duplicate, 1, pool).any()
    assert pool_counts(meta, 5, len(x))["pool_dropped"] > 0


def test_caption_sets_of_items_with_several_captions():
    # items 0, 1, 2; captions: item 0 {a, b}, item 1 {c, b}, item 2 {d}
    sets = CaptionSets.from_captions(np.array([11, 22, 33, 22, 44]), np.array([0, 0, 1, 1, 2]), 3)
    shared = sets.shared(np.array([0, 1, 2]), np.array([[1, 2], [0, 2], [0, 1]]))
    assert shared.tolist() == [[True, False], [True, False], [False, False]]


@pytest.mark.parametrize("override, match", [
    ("pool.duplicate_threshold=0", r"pool\.duplicate_threshold=0\.0 .*\(0, 1\]"),
    ("pool.duplicate_threshold=1.5", r"pool\.duplicate_threshold=1\.5 .*1\.0 disables"),
    ("dataset.dedup_threshold=-0.2", r"dataset\.dedup_threshold=-0\.2 .*\(0, 1\]"),
])
def test_bad_duplicate_thresholds_name_the_key(override, match):
    from bacl.config import load_config
    with pytest.raises(ConfigError, match=match):
        load_config(["dataset=laion400m", override])
