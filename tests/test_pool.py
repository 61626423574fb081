"""Candidate pools: exact search against brute force, approximate indexes against exact, config errors."""
import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bacl.data.pool import IndexConfig, build_index, candidate_pool, search_pool, validate_index
from bacl.errors import ConfigError

N = 400


@pytest.fixture(autouse=True)
def one_thread():
    """Several tests compare two HNSW builds, which are deterministic only on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
