"""The streamed split: disjoint rank shares covering every item once an epoch, seeded orders, an exact
resume mid-epoch, features equal to the in-memory split's, memory independent of the row count."""
import gc
import io
import json
import tracemalloc

import numpy as np
import pytest
import torch

from bacl.data.store import FeatureStore, ShardArrays
from bacl.data.stream import ShardIndex, ShardStream, StreamedSplit, StreamLoader
from bacl.distributed import World
from bacl.errors import ConfigError


def write_store(path, shards: int, rows: int, captions: int = 1, test_every: int = 0) -> FeatureStore:
    """`shards` shards of `rows` items with `captions` captions each; every `test_every`-th item is a test item."""
    store = FeatureStore(path)
    names = [f"{s:04d}" for s in range(shards)]
    store.init({"synthetic": True}, ["frames", "audio"], names)
    gen = np.random.default_rng(0)
    for name in names:
        keys = [f"{name}-{i}" for i in range(rows)]
        splits = ["test" if test_every and i % test_every == 0 else "train" for i in range(rows)]
        text_item = np.repeat(np.arange(rows), captions)
        store.write_shard(name, ShardArrays(
            keys=keys, splits=splits, skipped=[], text_item=text_item,
            streams={"frames": (gen.standard_normal((rows, 2, 3)), gen.standard_normal((rows, 3))),
                     "audio": (gen.standard_normal((rows, 1, 2)), gen.standard_normal((rows, 2)))},
            text_tokens=gen.standard_normal((text_item.size, 2, 4)), text_pooled=gen.standard_normal((text_item.size, 4))))
    return store


def epoch(stream: ShardStream) -> list[int]:
    return [i for ids in stream.epoch_ids() for i in ids.tolist()]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), shards=7, rows=13, captions=2, test_every=5)


def test_rank_shares_are_disjoint_and_cover_every_row_once_per_epoch(store):
    index = ShardIndex(store, "train")
    assert index.n_rows == 7 * (13 - 3) * 2 and index.n_items == 7 * (13 - 3)
    for world in (1, 2, 3):
        streams = [ShardStream(index, batch_size=4, buffer_size=6, seed=1, rank=r, world_size=world) for r in range(world)]
        for _ in range(2):  # two epochs
            shares = [epoch(s) for s in streams]
            assert sorted(i for share in shares for i in share) == list(range(index.n_items))
            assert {tuple(sorted(set(s.shards(s.epoch - 1)))) for s in streams}.__len__() == world


def test_the_order_follows_seed_and_epoch(store):
    index = ShardIndex(store, "train")
    first, again = ShardStream(index, 5, 8, seed=3), ShardStream(index, 5, 8, seed=3)
    a0, a1 = epoch(first), epoch(first)
    assert a0 == epoch(again) and a1 == epoch(again)
    assert a0 != a1 and sorted(a0) == sorted(a1)
    assert epoch(ShardStream(index, 5, 8, seed=4)) != a0
    assert a0 != sorted(a0)  # shuffled within the buffer, not just by shard


@pytest.mark.parametrize("stop_after", [0, 1, 6, 12, 20])
def test_a_stream_restored_mid_epoch_continues_bitwise(store, stop_after):
    index = ShardIndex(store, "train")
    whole = ShardStream(index, batch_size=3, buffer_size=10, seed=7, rank=1, world_size=2)
    want = [ids.tolist() for _ in range(2) for ids in whole.epoch_ids()]
    stopped = ShardStream(index, batch_size=3, buffer_size=10, seed=7, rank=1, world_size=2)
    got = []
    while len(got) < stop_after:
        batches = stopped.epoch_ids()
        for ids in batches:
            got.append(ids.tolist())
            if len(got) == stop_after:
                break
        else:
            continue
        break
    blob = io.BytesIO()
    torch.save(stopped.state_dict(), blob)
    restored = ShardStream(index, batch_size=3, buffer_size=10, seed=7, rank=1, world_size=2)
    restored.load_state_dict(torch.load(io.BytesIO(blob.getvalue()), weights_only=True))
    while restored.epoch < 2:
        got.extend(ids.tolist() for ids in restored.epoch_ids())
    assert got == want


def test_a_position_from_another_rank_is_refused(store):
    index = ShardIndex(store, "train")
    state = ShardStream(index, 3, 4, seed=0, rank=0, world_size=2).state_dict()
    with pytest.raises(ConfigError, match="rank"):
        ShardStream(index, 3, 4, seed=0, rank=1, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("split", ["train", "test"])
def test_features_by_id_equal_the_in_memory_split(store, split):
    whole = store.split(split, exclude={"0003-5"})
    index = ShardIndex(store, split, exclude={"0003-5"})
    ids = np.random.default_rng(0).permutation(index.n_rows)
    batch = index.fetch(ids)
    assert index.n_rows == whole.n_texts
    assert torch.equal(batch.text, whole.text[ids]) and torch.equal(batch.items, whole.text_item[ids])
    assert torch.equal(batch.vision, whole.vision[batch.items])
    shard, row = index.locate(ids[:5])
    assert all(0 <= s < index.n_shards for s in shard) and row.dtype == np.int64
    with pytest.raises(ConfigError, match="caption ids"):
        index.fetch(np.array([index.n_rows]))


def test_memory_does_not_grow_with_the_number_of_rows(tmp_path):
    """Peak bytes allocated while streaming an epoch, at a fixed buffer: 10x the rows, about the same peak.

    Rows are read with pread, nothing stays mapped. Garbage is collected after every batch (np.load
    leaves reference cycles that Python's collector frees late); a first epoch takes the lazy imports."""
    stores = [write_store(tmp_path / str(shards), shards=shards, rows=100) for shards in (30, 300)]
    peaks = []
    for store in [stores[0], *stores]:
        stream = ShardStream(ShardIndex(store, "train"), batch_size=512, buffer_size=512, seed=0)
        gc.collect()
        gc.freeze()  # what exists now is never garbage: per-batch collections stay cheap
        tracemalloc.start()
        rows = 0
        for batch in stream:
            rows += batch.ids.numel()
            gc.collect()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        gc.unfreeze()
        assert rows == ShardIndex(store, "train").n_rows
    assert peaks[2] < 1.2 * peaks[1], peaks


def test_bad_settings_are_config_errors(store):
    index = ShardIndex(store, "train")
    with pytest.raises(ConfigError, match="rank"):
        ShardStream(index, 4, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="the split's shards"):
        ShardStream(index, 4, 4, seed=0, rank=0, world_size=8)
    with pytest.raises(ConfigError, match="buffer_size"):
        ShardStream(index, 4, 0, seed=0)


def test_streamed_split_tokens_equal_the_index_whatever_was_read_before(store):
    """The last read is kept so a step's second read of its negatives reads nothing: it must change no value."""
    index = ShardIndex(store, "train")
    split = StreamedSplit(index)
    gen = np.random.default_rng(0)
    calls = [gen.integers(0, index.n_rows, 12), None, gen.integers(0, index.n_rows, (3, 2)), np.array([5, 5, 7]),
             np.array([7]), gen.integers(0, index.n_rows, 40)]
    for ids in calls:
        ids = calls[0][:5] if ids is None else ids  # a subset of the first read: all kept
        got = split.text_tokens(torch.from_numpy(ids))
        assert got.shape == (*ids.shape, 2, 4) and got.dtype == torch.float32
        assert torch.equal(got, torch.from_numpy(index.text(ids.ravel())).view(got.shape).float())


def test_an_index_another_process_finished_first_is_kept_and_a_stale_one_replaced(tmp_path):
    store = write_store(tmp_path / "s", shards=3, rows=5)
    index = ShardIndex(store, "train")
    marker = index.path / "marker"
    marker.write_text("theirs")
    index._build()  # a second builder finishing after the first: the complete index stays as it is
    assert marker.exists() and ShardIndex(store, "train").n_rows == 15
    meta = json.loads((index.path / "index.json").read_text())
    (index.path / "index.json").write_text(json.dumps({**meta, "shards": meta["shards"][:2]}))  # made from another list
    assert ShardIndex(store, "train").n_rows == 15 and not marker.exists()  # rebuilt


def test_more_readers_than_shards_names_the_key(store):
    with pytest.raises(ConfigError, match="train.stream.readers"):
        StreamLoader(ShardIndex(store, "train"), global_batch=16, readers=8, buffer_size=4, seed=0, world=World())
