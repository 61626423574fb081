"""The out-of-core pool: the in-memory builder's table and counts through chunks and parts, IVF recall
against exact, the table split over parts, and no read (hence no array) of more than a chunk of rows."""
import tracemalloc

import numpy as np
import pytest

from bacl.config import PoolConfig
from bacl.data import pool_out_of_core as ooc
from bacl.data.pool import IndexConfig
from bacl.data.store import FeatureStore, ShardArrays
from bacl.data.store_dataset import StoreDataset
from bacl.errors import ConfigError

SHARDS, ROWS, D = 5, 150, 16  # 5 x 150 items, every 7th a test item: 640 train items


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_store(path, shards: int = SHARDS, rows: int = ROWS, d: int = D, captions: int = 2) -> FeatureStore:
    """Clustered pooled embeddings (structure for IVF) in which every 10th item nearly copies the one before
    and every 12th repeats the caption of the one before: both duplicate filters have work."""
    store = FeatureStore(path)
    names = [f"{s:03d}" for s in range(shards)]
    store.init({"test": "pool_out_of_core"}, ["frames"], names)
    gen = np.random.default_rng(0)
    centres = gen.standard_normal((12, d))
    for name in names:
        pooled = centres[gen.integers(0, len(centres), rows)] + 0.7 * gen.standard_normal((rows, d))
        pooled[1::10] = pooled[0::10][: len(pooled[1::10])] + 0.01 * gen.standard_normal((len(pooled[1::10]), d))
        text_item = np.repeat(np.arange(rows), captions)
        hashes = gen.integers(-2**62, 2**62, text_item.size)
        hashes[captions * np.arange(1, rows, 12)] = hashes[captions * np.arange(0, rows - 1, 12)]
        store.write_shard(name, ShardArrays(
            keys=[f"{name}-{i}" for i in range(rows)], splits=["test" if i % 7 == 3 else "train" for i in range(rows)],
            skipped=[], streams={"frames": (np.zeros((rows, 1, 2)), pooled)}, text_item=text_item,
            text_tokens=np.zeros((text_item.size, 1, 2)), text_pooled=gen.standard_normal((text_item.size, d)),
            text_hash=hashes))
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"))


def in_memory(store: FeatureStore, pool: PoolConfig) -> tuple[np.ndarray, dict]:
    """What extract.py builds and stores today (StoreDataset.build_pool over the whole split in memory)."""
    table, meta = StoreDataset.build_pool(store, store.split("train"), pool)
    return table.numpy(), meta


def out_of_core(store: FeatureStore, pool: PoolConfig, chunk: int, parts: int = 1) -> tuple[np.ndarray, dict]:
    path = ooc.build(store, pool, chunk, parts)
    loaded = store.load_pool("train", pool.modality, pool.k, pool.index,
                             {"duplicate_threshold": min(pool.duplicate_threshold, 1.0),
                              "drop_same_caption": pool.drop_same_caption})
    assert loaded is not None, "load_pool must accept the table and its metadata"
    return np.load(path), loaded[1]


def pool_cfg(kind: str = "flat", threshold: float = 1.0, captions: bool = False, modality: str = "vision",
             k: int = 10) -> PoolConfig:
    index = IndexConfig(kind=kind, nlist=16, nprobe=4, train_size=400, query_batch=64)
    return PoolConfig(k=k, modality=modality, index=index, duplicate_threshold=threshold, drop_same_caption=captions)


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_exact_search_equals_the_in_memory_pool(store, modality):
    cfg = pool_cfg(modality=modality)
    expected, meta = in_memory(store, cfg)
    got, got_meta = out_of_core(store, cfg, chunk=97)  # 97 divides neither the shards nor N
    assert np.array_equal(got, expected)
    assert got_meta == meta


def test_duplicate_filters_and_their_counts_equal_the_in_memory_pool(store):
    cfg = pool_cfg(threshold=0.95, captions=True)
    expected, meta = in_memory(store, cfg)
    assert sum(meta["near_duplicate"]) > 0 and sum(meta["same_caption"]) > 0  # both filters dropped something
    got, got_meta = out_of_core(store, cfg, chunk=50, parts=3)
    assert np.array_equal(got, expected)
    assert got_meta == meta


def test_ivf_recall_against_exact_and_the_same_index_as_in_memory(store):
    exact, _ = in_memory(store, pool_cfg())
    cfg = pool_cfg(kind="ivf")
    got, _ = out_of_core(store, cfg, chunk=97)
    recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(got.tolist(), exact.tolist())])
    assert recall > 0.9, recall  # nprobe 4 of 16 lists on 12 overlapping clusters
    assert np.array_equal(got, in_memory(store, cfg)[0])  # same training rows, same lists, same probes


def test_three_parts_give_the_one_part_table_in_any_order(store):
    cfg = pool_cfg(kind="ivfpq")
    cfg.index.pq_m = 4
    one, _ = out_of_core(store, cfg, chunk=64)
    ooc.prepare(store, cfg, 64)
    for part in (2, 0, 1):
        ooc.search_part(part, 3, store, cfg, 64)
    assert np.array_equal(np.load(ooc.finish(store, cfg, 3)), one)


def test_finish_refuses_missing_parts_and_a_part_refuses_other_settings(store):
    cfg = pool_cfg()
    ooc.prepare(store, cfg, 64)
    ooc.search_part(0, 2, store, cfg, 64)
    with pytest.raises(ConfigError, match=r"part\(s\) \[1\] of 2"):
        ooc.finish(store, cfg, 2)
    with pytest.raises(ConfigError, match="prepared for"):
        ooc.search_part(1, 2, store, pool_cfg(k=5), 64)
    with pytest.raises(ConfigError, match="part"):
        ooc.search_part(2, 2, store, cfg, 64)


def test_parts_tile_the_rows():
    for n, parts in ((10, 3), (640, 7), (5, 5)):
        spans = [ooc.part_rows(p, parts, n) for p in range(parts)]
        assert [i for s in spans for i in s] == list(range(n))


def test_no_read_holds_more_than_a_chunk_and_no_n_by_d_array_is_allocated(tmp_path, monkeypatch):
    n, d, chunk = 12_000, 64, 400
    store = write_store(tmp_path / "big", shards=8, rows=1_500, d=d, captions=1)
    reads: list[int] = []
    read = ooc.PooledRows.__getitem__
    monkeypatch.setattr(ooc.PooledRows, "__getitem__", lambda self, rows: reads.append(len(rows)) or read(self, rows))
    cfg = pool_cfg(kind="ivf", k=20)
    cfg.index.train_size = chunk
    tracemalloc.start()
    try:
        path = ooc.build(store, cfg, chunk, parts=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    train_items = np.load(path, mmap_mode="r").shape[0]
    assert train_items > 0.8 * n
    assert max(reads) <= chunk and sum(reads) >= 2 * train_items  # every row added once and searched once
    # numpy registers its buffers with tracemalloc (faiss's, the index, are not): one N x d float32 array is twice this
    assert peak < train_items * d * 4 / 2, peak


def test_the_cli_steps_build_the_same_table_as_one_process(store, monkeypatch, capsys):
    from bacl.cli import pool as cli

    overrides = ["pool.k=10", "pool.index.kind=flat", "pool.duplicate_threshold=0.95", "pool.drop_same_caption=true"]
    monkeypatch.setattr(cli, "open_store", lambda cfg: (StoreDataset, store, []))
    expected, meta = in_memory(store, pool_cfg(threshold=0.95, captions=True))
    assert cli.main(["prepare", "--chunk", "100", *overrides]) == 0
    for part in (1, 0):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(part))
        assert cli.main(["part", "--parts", "2", "--chunk", "100", *overrides]) == 0
    assert cli.main(["finish", "--parts", "2", *overrides]) == 0
    assert np.array_equal(np.load(store.pool_path("train", "vision")), expected)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert cli.main(["part", "--parts", "2", *overrides]) == 2
    assert "SLURM_ARRAY_TASK_ID" in capsys.readouterr().err


def test_a_memory_mapped_pool_reads_only_the_rows_asked_for(tmp_path):
    import pickle

    import torch

    from bacl.data.store import PoolTable

    n, stored_k, k = 200_000, 20, 12  # 32 MB as stored (int64)
    store = FeatureStore(tmp_path / "store")
    table = np.random.default_rng(0).integers(0, n, (n, stored_k))
    sig = {"duplicate_threshold": 1.0, "drop_same_caption": False}
    store.save_pool("train", "vision", table, IndexConfig(), sig)
    items = torch.tensor([5, n - 1, 0, 5, 123_456])  # unsorted, repeated
    tracemalloc.start()
    try:
        mapped, meta = store.load_pool("train", "vision", k, IndexConfig(), sig, mmap=True)
        got = mapped[items]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # the rows asked for, not the 32 MB table (numpy's buffers are traced)
    in_memory, meta_in_memory = store.load_pool("train", "vision", k, IndexConfig(), sig)
    assert isinstance(mapped, PoolTable) and isinstance(in_memory, torch.Tensor) and meta == meta_in_memory
    assert got.dtype == torch.int64 and torch.equal(got, in_memory[items])
    assert torch.equal(got, torch.from_numpy(table[items.numpy(), :k]))
    assert mapped.shape == in_memory.shape == (n, k) and len(mapped) == n
    assert torch.equal(mapped[items.view(1, -1)], in_memory[items.view(1, -1)])  # any batch shape, as a tensor
    assert mapped.to(torch.device("cpu")) is mapped  # what the trainer's pool.to(device) does on a CPU run
    again = pickle.loads(pickle.dumps(mapped))
    assert len(pickle.dumps(mapped)) < 1024 and torch.equal(again[items], got)  # its path, not its rows
    assert store.load_pool("train", "vision", stored_k + 1, IndexConfig(), sig, mmap=True) is None


def reference_dedup(store: FeatureStore, threshold: float, same_caption: bool, index: IndexConfig) -> dict:
    """The in-memory implementation the chunked one replaced: both splits whole, a dict of caption hashes."""
    from bacl.data.dedup import dedup_signature
    from bacl.data.pool import build_index, neighbours, normalised

    train_keys, test_keys = store.keys("train"), store.keys("test")
    caption_partner = np.full(len(test_keys), -1, dtype=np.int64)
    if same_caption:
        first_item: dict[int, int] = {}
        for h, i in zip(*(a.tolist() for a in store.caption_hashes("train"))):
            first_item.setdefault(h, i)
        for h, i in zip(*(a.tolist() for a in store.caption_hashes("test"))):
            if caption_partner[i] < 0 and h in first_item:
                caption_partner[i] = first_item[h]
    cosine = np.full(len(test_keys), np.nan, dtype=np.float32)
    embed_partner = np.full(len(test_keys), -1, dtype=np.int64)
    if threshold < 1.0:
        x, q = normalised(store.item_pooled("train")), normalised(store.item_pooled("test"))
        scores, found = neighbours(build_index(x, index), x, q, 1)
        cosine, embed_partner = scores[:, 0], found[:, 0]
    near, same = cosine > threshold, caption_partner >= 0
    excluded = [{"key": test_keys[i], "train_key": train_keys[caption_partner[i] if same[i] else embed_partner[i]],
                 "same_caption": bool(same[i]), "near_duplicate": bool(near[i]),
                 "cosine": None if np.isnan(cosine[i]) else round(float(cosine[i]), 6)}
                for i in np.flatnonzero(near | same)]
    return {"signature": dedup_signature(threshold, same_caption), "excluded": excluded,
            "counts": {"test_items_extracted": len(test_keys), "test_removed": len(excluded),
                       "test_removed_same_caption": int(same.sum()), "test_removed_near_duplicate": int(near.sum())}}


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_chunked_test_dedup_equals_the_in_memory_one(store, kind):
    from bacl.data.dedup import find_test_duplicates

    index = pool_cfg(kind=kind).index
    index.pq_m = 4
    for threshold, captions in ((0.9, True), (0.9, False), (1.0, True)):
        expected = reference_dedup(store, threshold, captions, index)
        got = find_test_duplicates(store, threshold, captions, index, chunk=97)
        assert got.pop("index") == {k: v for k, v in vars(index).items() if k not in ("query_batch", "gpu")}
        assert got == expected, (kind, threshold, captions)
        c = expected["counts"]
        if threshold < 1.0 and captions:  # both tests found some, and not everything
            assert 0 < c["test_removed_same_caption"] < c["test_removed"] < c["test_items_extracted"]


def test_dedup_reuses_the_prepared_pool_index(store):
    from bacl.data.dedup import find_test_duplicates

    cfg = pool_cfg(kind="ivf")
    files = ooc.prepare(store, cfg, 64)
    got = find_test_duplicates(store, 0.9, False, cfg.index, chunk=64, searcher=ooc.read_index(files, cfg.index))
    assert got == find_test_duplicates(store, 0.9, False, cfg.index, chunk=64)
    assert got["counts"]["test_removed_near_duplicate"] > 0


def test_dedup_reads_a_chunk_of_training_rows_at_a_time(tmp_path, monkeypatch):
    from bacl.data.dedup import find_test_duplicates

    d, chunk = 64, 400
    store = write_store(tmp_path / "big", shards=8, rows=1_500, d=d, captions=1)
    reads: list[int] = []
    read = ooc.PooledRows.__getitem__
    monkeypatch.setattr(ooc.PooledRows, "__getitem__", lambda self, rows: reads.append(len(rows)) or read(self, rows))
    tracemalloc.start()
    try:
        got = find_test_duplicates(store, 0.9, True, IndexConfig(), chunk=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    train_items = sum(reads)
    assert max(reads) <= chunk and train_items > 0.8 * 12_000  # every training row read once, a chunk at a time
    assert got["counts"]["test_removed"] > 0
    # the in-memory version held the training split twice (float32, then normalised): one copy is this
    assert peak < train_items * d * 4, peak


# ---- bacl-extract's stages: in memory, or prepare -> parts -> dedup -> finish ---------------------------------
IVF = ["pool.k=10", "pool.index.kind=ivf", "pool.index.nlist=16", "pool.index.nprobe=4", "pool.index.train_size=400",
       "pool.duplicate_threshold=0.95", "pool.drop_same_caption=true", "dataset.dedup_threshold=0.9"]


@pytest.fixture
def extraction(tmp_path, monkeypatch):
    """(overrides, store): bacl-extract's stages pointed at a written store whose shards are all extracted."""
    from bacl import extract
    from bacl.cli import extract as cli

    store = write_store(tmp_path / "store")
    names = store.manifest["shards"]
    monkeypatch.setattr(extract, "open_store", lambda cfg: (StoreDataset, store, names))
    monkeypatch.setattr(cli, "open_store", lambda cfg: (StoreDataset, store, names))
    monkeypatch.setattr(cli, "dataset_shards", lambda cfg: (StoreDataset, names))
    return ["dataset=laion400m", f"dataset.root={tmp_path}", *IVF], store


def stored_outputs(store: FeatureStore, overrides: list[str]) -> tuple[np.ndarray, dict, dict]:
    from bacl.config import load_config

    cfg = load_config(overrides)
    record = store.load_dedup(StoreDataset.dedup_signature(cfg.dataset))
    return np.load(store.pool_path("train", "vision")), read_pool_meta(store), record


def read_pool_meta(store: FeatureStore) -> dict:
    from bacl.results import read_json

    return read_json(store.pool_path("train", "vision").with_suffix(".json"))


def clear_outputs(store: FeatureStore) -> None:
    """The pool and dedup files gone, so a check of them sees only what ran afterwards."""
    store.pool_path("train", "vision").unlink()
    store.pool_path("train", "vision").with_suffix(".json").unlink()
    for path in (store.path / "dedup").iterdir():
        path.unlink()


def test_out_of_core_stages_here_store_the_in_memory_pool_and_dedup(extraction):
    from bacl.config import load_config
    from bacl.extract import build_pool, run_stages_here

    overrides, store = extraction
    build_pool(load_config(overrides))  # the in-memory reference
    expected = stored_outputs(store, overrides)
    clear_outputs(store)
    run_stages_here(load_config([*overrides, "pool.out_of_core_parts=3", "pool.out_of_core_chunk=70"]))
    table, meta, record = stored_outputs(store, overrides)
    assert np.array_equal(table, expected[0]) and meta == expected[1] and record == expected[2]
    assert record["counts"]["test_removed_near_duplicate"] > 0  # the prepared IVF index found them
    assert not ooc.PoolFiles(store, "train", "vision").dir.exists()  # finish cleaned up


def test_extraction_stages_chain_with_afterok_on_slurm(extraction, monkeypatch, capsys):
    """What bacl-extract cluster=slurm would submit: each stage an array held by afterok on those it needs."""
    from bacl.cli import extract as cli

    overrides, store = extraction
    submitted: list[dict] = []

    class Recorder:
        params: dict = {}

        def update_parameters(self, **params):
            self.params = {**self.params, **params}

        def map_array(self, fn, *args):
            job_id = str(100 + len(submitted))
            submitted.append({"job": type(fn).__name__, "args": [list(a) for a in args], "id": job_id,
                              "name": self.params["name"],
                              "dependency": self.params["slurm_additional_parameters"].get("dependency")})
            return [type("Job", (), {"job_id": f"{job_id}_{i}"})() for i in range(len(args[0]))]

    monkeypatch.setattr(cli, "make_executor", lambda profile, folder, name: Recorder())
    ids = cli.submit([*overrides, "pool.out_of_core_parts=4"], {**cli.EXTRACT_KEYS, "extract.tasks": 3}, "slurm")
    assert [s["name"] for s in submitted] == [f"{n}-laion400m" for n in
                                              ("extract", "pool-prepare", "pool-part", "dedup", "pool-finish")]
    assert [len(s["args"][0]) for s in submitted] == [3, 1, 4, 1, 1]
    assert [s["dependency"] for s in submitted] == [None, "afterok:100", "afterok:101", "afterok:101", "afterok:102:103"]
    assert submitted[2]["args"][1:] == [["pool-part"] * 4, [0, 1, 2, 3]]  # stage and part of each array task
    assert ids == {"extract": "100", "pool-prepare": "101", "pool-part": "102", "dedup": "103", "pool-finish": "104"}
    assert "squeue -j 100,101,102,103,104" in capsys.readouterr().out
    submitted.clear()
    cli.submit(overrides, dict(cli.EXTRACT_KEYS), "slurm")  # in memory: today's two jobs
    assert [(s["name"], s["dependency"]) for s in submitted] == [("extract-laion400m", None), ("pool-laion400m", "afterok:100")]


def test_the_debug_executor_runs_the_submitted_stages_in_order(extraction):
    from bacl.cli import extract as cli
    from bacl.config import load_config
    from bacl.extract import build_pool

    overrides, store = extraction
    build_pool(load_config(overrides))
    expected = stored_outputs(store, overrides)
    clear_outputs(store)
    cli.submit([*overrides, "pool.out_of_core_parts=2"], dict(cli.EXTRACT_KEYS), "debug")
    table, meta, record = stored_outputs(store, overrides)
    assert np.array_equal(table, expected[0]) and meta == expected[1] and record == expected[2]


def test_dry_run_lists_the_stages_and_bad_keys_exit_2(extraction, capsys):
    from bacl.cli import extract as cli

    overrides, _ = extraction
    assert cli.main(["--dry-run", *overrides, "pool.out_of_core_parts=4", "cluster=slurm"]) == 0
    out = capsys.readouterr().out
    assert "5 stage(s)" in out and "pool-part    array of 4" in out and "after pool-part and dedup (afterok)" in out
    assert "extract      array of 5" in out  # min(extract.tasks=8, 5 shards)
    for bad, expected in (("pool.out_of_core_parts=-1", "pool.out_of_core_parts=-1 is out of range"),
                          ("pool.out_of_core_parts=1001", "max_array_size=1000"),
                          ("pool.out_of_core_chunk=0", "pool.out_of_core_chunk=0 is out of range")):
        assert cli.main(["--dry-run", *overrides, bad, "cluster=slurm"]) == 2
        assert expected in capsys.readouterr().err
    assert cli.main([*overrides, "pool.out_of_core_parts=-2"]) == 2  # locally: before any extraction
    assert "pool.out_of_core_parts=-2" in capsys.readouterr().err
