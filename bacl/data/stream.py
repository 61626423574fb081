"""A feature-store split read as a stream: this rank's shards, a seeded shuffle buffer, rows read by id.

For splits too large for memory (LAION-400M's store is about 21 TB). The stream's rows are
items, each paired with one of its captions drawn per epoch, as the in-memory trainer does (an
epoch sees every item once, and a batch never holds two captions of one item). Item and caption
ids are the split's order (`FeatureStore.split(...)` rows), so ids agree with the pool and the
bank. `ShardIndex` resolves ids through a few memory-mapped tables written once beside the
store (caption -> its row and item, item -> its captions), so random access by id (pool
negatives) never opens a shard's metadata. A `ShardStream` is one reader: every epoch permutes
the shards (seed, epoch), reader j of S takes shards j, j + S, ... of that order, and its items
pass through a buffer of `buffer_size` ids, each draw replacing a random slot (webdataset's
scheme). Only ids sit in the buffer; features are read from the shards (one `pread` a row)
when a batch is fetched, so memory is the buffer's ids and one batch, whatever the number of
rows. `StreamLoader` runs a rank's share of the S readers (S fixed by the config, not
by the world size, so a run's batches do not depend on how many ranks share them) and reads the
next batch in a thread while the current one trains.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format
from numpy.lib.format import open_memmap

from bacl.data.store import FeatureStore, block_concat
from bacl.distributed import World
from bacl.errors import ConfigError, require
from bacl.results import read_json, write_json
from bacl.rng import stream_seed

INDEX_VERSION = 3
# name -> (length: "captions" | "items", dtype) of the tables ShardIndex memory-maps
TABLES = {"caption_item": ("captions", np.int64),  # item id of each caption id
          "caption_text_row": ("captions", np.int64),  # its row in its shard's text arrays
          "item_row": ("items", np.int64),  # row of each item id in its shard's item arrays
          "item_caption_start": ("items", np.int64),  # an item's captions: caption_by_item[start:start + count]
          "item_caption_count": ("items", np.int64),
          "caption_by_item": ("captions", np.int64)}  # caption ids sorted by item (stable)


@dataclass
class StreamBatch:
    """Features of a list of caption ids, in that order."""

    ids: torch.Tensor  # [b] caption ids in the split
    items: torch.Tensor  # [b] item id of each caption in the split
    vision: torch.Tensor  # [b, Lv, dv] float16 item tokens (streams in disjoint channel blocks, as FeatureStore.split)
    text: torch.Tensor  # [b, Lt, dt] float16 caption tokens


def npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """(offset of the data, shape, dtype) of a C-ordered `.npy` file, from its header."""
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ConfigError(f"{path}: a Fortran-ordered array; the store writes C order")
        return f.tell(), shape, dtype


def read_rows(path: Path, offset: int, row_shape: tuple[int, ...], dtype: np.dtype, rows: np.ndarray) -> np.ndarray:
    """Rows of a `.npy` file whose data starts at `offset`, one `pread` each in file order: no memory map and
    no file kept open.

    Random rows of many shards (pool negatives) would otherwise open and map a shard per row; a
    `pread` also leaves nothing in the process's resident memory (the page cache is the kernel's)."""
    size = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    out = np.empty((rows.size, *row_shape), dtype=dtype)
    flat = out.reshape(rows.size, -1).view(np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in np.argsort(rows, kind="stable"):
            flat[i] = np.frombuffer(os.pread(fd, size, offset + int(rows[i]) * size), dtype=np.uint8)
    finally:
        os.close(fd)
    return out


def _index_dir(store: FeatureStore, split: str, exclude: frozenset[str]) -> Path:
    blob = json.dumps(sorted(exclude)).encode()
    name = f"{split}-{hashlib.sha256(blob).hexdigest()[:10]}"
    home = store.path / "stream-index"
    if os.access(store.path, os.W_OK):
        return home / name
    # a read-only shared store: a per-user cache keyed by the store's path
    where = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bacl" / "stream-index" / where / name


class ShardIndex:
    """Where every caption and item of a split lives, and their features by id.

    Ids are assigned shard by shard, so the shard of an id is one binary search over per-shard
    offsets; rows within a shard come from memory-mapped tables built in one pass over the
    shards' metadata and reused (rebuilt when the store's shard list changes). Features are read
    row by row (`read_rows`), so the loader thread and the training thread can read at once.
    """

    def __init__(self, store: FeatureStore, split: str, exclude: Collection[str] = (), read_threads: int = 16):
        require(read_threads >= 1, "read_threads", read_threads, ">= 1")
        self.store, self.split, self.read_threads = store, split, read_threads
        self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="shard-read")  # threads start when used
        self.exclude = frozenset(exclude)
        self.streams: list[str] = store.manifest["streams"]
        self.path = _index_dir(store, split, self.exclude)
        meta = self._current(self.path)
        if meta is None:
            meta = self._build()
        self.dirs = [store.path / "shards" / name for name in meta["shard_dirs"]]
        self.offsets = np.asarray(meta["caption_offsets"], dtype=np.int64)  # first caption id of each shard
        self.item_offsets = np.asarray(meta["item_offsets"], dtype=np.int64)
        if self.n_rows == 0:
            raise ConfigError(f"{store.path}: the {split} split has no captions to stream")
        self.tables = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in TABLES}
        # where each shard's token arrays start, one column per ["text", *streams]: read once, not per row
        self.data_offsets = np.load(self.path / "data_offsets.npy")
        self.row_shapes = {name: tuple(shape) for name, shape in meta["row_shapes"].items()}
        self.dtypes = {name: np.dtype(d) for name, d in meta["dtypes"].items()}

    # ---- the tables ----------------------------------------------------------------------------
    def _current(self, path: Path) -> dict | None:
        """The index at `path` if it is complete and made from this store's shard list, else None."""
        meta = read_json(path / "index.json")
        ok = meta is not None and meta.get("version") == INDEX_VERSION and meta.get("shards") == self.store.manifest["shards"]
        return meta if ok else None

    def _build(self) -> dict:
        """Write the id tables in two passes over the shards' metadata (counts, then rows, one shard at a time);
        atomic: a complete index another process renamed into place first is kept, not replaced."""
        shards = [(d, keep) for d, _, keep in self.store._rows(self.split, self.exclude)]
        if not shards:
            raise ConfigError(f"{self.store.path}: the {self.split} split has no captions to stream")
        captions = []
        for d, keep in shards:
            text_item = np.load(d / "text_item.npy", mmap_mode="r")
            captions.append(int(keep[text_item].sum()) if text_item.size else 0)
        items = [int(keep.sum()) for _, keep in shards]
        offsets, item_offsets = np.cumsum([0, *captions]), np.cumsum([0, *items])
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        size = {"captions": int(offsets[-1]), "items": int(item_offsets[-1])}
        out = {name: open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(size[length],))
               for name, (length, dtype) in TABLES.items()}
        for s, (d, keep) in enumerate(shards):
            text_item = np.load(d / "text_item.npy")
            c0, c1, i0, i1 = offsets[s], offsets[s + 1], item_offsets[s], item_offsets[s + 1]
            text_rows = np.nonzero(keep[text_item])[0] if text_item.size else np.zeros(0, np.int64)
            item_rows = text_item[text_rows]
            local_item = (np.cumsum(keep) - 1)[item_rows]  # item id within this shard's kept items
            out["caption_text_row"][c0:c1] = text_rows
            out["caption_item"][c0:c1] = local_item + i0
            out["item_row"][i0:i1] = np.nonzero(keep)[0]
            counts = np.bincount(local_item, minlength=i1 - i0)
            out["item_caption_count"][i0:i1] = counts
            out["item_caption_start"][i0:i1] = c0 + np.cumsum(counts) - counts
            out["caption_by_item"][c0:c1] = c0 + np.argsort(local_item, kind="stable")
        for table in out.values():
            table.flush()
        del out
        names = ["text", *self.streams]
        layouts = [[npy_layout(d / f"{name}.tokens.npy") for name in names] for d, _ in shards]
        for (d, _), layout in zip(shards, layouts):
            for name, (_, shape, dtype), (_, first_shape, first_dtype) in zip(names, layout, layouts[0]):
                if shape[1:] != first_shape[1:] or dtype != first_dtype:
                    raise ConfigError(f"{d / name}.tokens.npy: rows of shape {shape[1:]} {dtype}, but the first shard's "
                                      f"are {first_shape[1:]} {first_dtype}; a store holds one shape per stream")
        np.save(tmp / "data_offsets.npy", np.array([[offset for offset, _, _ in layout] for layout in layouts],
                                                   dtype=np.int64).reshape(len(shards), len(names)))
        meta = {"version": INDEX_VERSION, "shards": self.store.manifest["shards"],
                "row_shapes": {name: list(shape[1:]) for name, (_, shape, _) in zip(names, layouts[0])},
                "dtypes": {name: dtype.str for name, (_, _, dtype) in zip(names, layouts[0])},
                "shard_dirs": [d.name for d, _ in shards], "caption_offsets": offsets.tolist(),
                "item_offsets": item_offsets.tolist()}
        write_json(tmp / "index.json", meta)
        if self._current(self.path) is not None:  # another process finished the same index meanwhile: keep it
            shutil.rmtree(tmp, ignore_errors=True)
            return meta
        if self.path.exists():  # stale (the store changed since): replace it
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, self.path)
        except OSError:  # another process renamed its identical tables first
            shutil.rmtree(tmp, ignore_errors=True)
        return meta

    @property
    def n_shards(self) -> int:
        return len(self.dirs)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_items(self) -> int:
        return int(self.item_offsets[-1])

    def items_in(self, shard: int) -> int:
        return int(self.item_offsets[shard + 1] - self.item_offsets[shard])

    def _check(self, ids: np.ndarray, count: int, what: str) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= count):
            raise ConfigError(f"{what} ids must lie in [0, {count}), got {ids.min()}..{ids.max()}")
        return ids

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row in that shard's text arrays) of each caption id."""
        ids = self._check(ids, self.n_rows, "caption")
        return np.searchsorted(self.offsets, ids, side="right") - 1, self.tables["caption_text_row"][ids]

    def item_of(self, ids: np.ndarray) -> np.ndarray:
        return self.tables["caption_item"][self._check(ids, self.n_rows, "caption")]

    def caption_at(self, items: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The caption of each item that uniform noise `u` in [0, 1) picks among its captions (FeatureSplit's rule)."""
        items = self._check(items, self.n_items, "item")
        count = self.tables["item_caption_count"][items]
        offset = np.minimum((u.astype(np.float32) * count.astype(np.float32)).astype(np.int64), count - 1)
        return self.tables["caption_by_item"][self.tables["item_caption_start"][items] + offset]

    # ---- features ------------------------------------------------------------------------------
    def _gather(self, shard_of: np.ndarray, read) -> np.ndarray:
        """Rows of any number of shards into one array, in the order asked; `read(shard, at)` reads a shard's.

        The shards are split into up to `read_threads` groups read at once: a random row is a disk or
        network round trip, and a file system answers many at once (on this VM, 256 random rows of a
        cold 10⁶-row store: 0.9 s one after another, 75 to 140 ms 16 to 32 at a time). One task per
        group, not per shard: with one row a shard the tasks' own cost would otherwise dominate."""
        if shard_of.size == 0:
            raise ConfigError("fetching features needs at least one id")
        order = np.argsort(shard_of, kind="stable")  # one sort, not a scan of every id per shard
        shards, starts = np.unique(shard_of[order], return_index=True)
        parts = list(zip(shards.tolist(), np.split(order, starts[1:])))
        groups = [g for g in np.array_split(np.arange(len(parts)), min(self.read_threads, len(parts))) if g.size]

        def read_group(group: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            return [(parts[i][1], read(*parts[i])) for i in group]
        done = [read_group(groups[0])] if len(groups) == 1 else list(self._readers.map(read_group, groups))
        out: np.ndarray | None = None
        for at, rows in (pair for group in done for pair in group):
            if out is None:
                out = np.empty((shard_of.size, *rows.shape[1:]), dtype=rows.dtype)
            out[at] = rows
        assert out is not None
        return out

    def text(self, ids: np.ndarray) -> np.ndarray:
        """[n, Lt, dt] float16 caption tokens of caption ids (pool negatives)."""
        shard, rows = self.locate(ids)
        return self._gather(shard, lambda s, at: self._read(s, "text", rows[at]))

    def vision(self, items: np.ndarray) -> np.ndarray:
        """[n, Lv, dv] float16 item tokens of item ids."""
        items = self._check(items, self.n_items, "item")
        shard, rows = np.searchsorted(self.item_offsets, items, side="right") - 1, self.tables["item_row"][items]
        return self._gather(shard, lambda s, at: block_concat([self._read(s, n, rows[at]) for n in self.streams]))

    def _read(self, shard: int, stream: str, rows: np.ndarray) -> np.ndarray:
        column = 0 if stream == "text" else 1 + self.streams.index(stream)
        return read_rows(self.dirs[shard] / f"{stream}.tokens.npy", int(self.data_offsets[shard, column]),
                         self.row_shapes[stream], self.dtypes[stream], rows)

    def fetch(self, ids: np.ndarray, items: np.ndarray | None = None) -> StreamBatch:
        """The features of caption ids and their items (or, given, other items), read from the shards."""
        ids = self._check(ids, self.n_rows, "caption")
        items = np.asarray(self.tables["caption_item"][ids] if items is None else items, dtype=np.int64)
        return StreamBatch(ids=torch.from_numpy(ids), items=torch.from_numpy(items),
                           vision=torch.from_numpy(self.vision(items)), text=torch.from_numpy(self.text(ids)))


class StreamedSplit:
    """A training split read through a `ShardIndex`: what a method asks of `FeatureSplit`, without the arrays.

    Anchors come from the stream (`StreamLoader`); this answers the random accesses: the caption
    an item's noise picks, an id's item, and the tokens of pool negatives. The tokens of the last
    read are kept, so a step that reads its negatives again (the match head's pass, CLA's) reads
    no row twice.
    """

    attributes = None  # ground truth only the in-memory synthetic split has

    def __init__(self, index: ShardIndex, device: torch.device | str = "cpu"):
        self.index, self._device = index, torch.device(device)
        # the last read: its sorted ids and their tokens
        self._kept_ids, self._kept = np.zeros(0, np.int64), np.zeros((0, *index.row_shapes["text"]), index.dtypes["text"])

    @property
    def n_items(self) -> int:
        return self.index.n_items

    @property
    def n_texts(self) -> int:
        return self.index.n_rows

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def vision_shape(self) -> tuple[int, int]:
        """(tokens, dims) of an item: its streams side by side, as `FeatureSplit.vision`."""
        shapes = [self.index.row_shapes[n] for n in self.index.streams]
        return sum(t for t, _ in shapes), sum(d for _, d in shapes)

    @property
    def text_shape(self) -> tuple[int, int]:
        return self.index.row_shapes["text"]

    def to(self, device: torch.device | str) -> StreamedSplit:
        return StreamedSplit(self.index, device)

    def caption_at(self, items: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        picked = self.index.caption_at(items.cpu().numpy(), u.cpu().numpy())
        return torch.from_numpy(np.asarray(picked)).to(items.device)

    def item_of(self, captions: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.index.item_of(captions.cpu().numpy().ravel()))
                                ).view(captions.shape).to(captions.device)

    def text_tokens(self, captions: torch.Tensor) -> torch.Tensor:
        ids = captions.cpu().numpy().ravel()
        at = np.searchsorted(self._kept_ids, ids).clip(max=max(len(self._kept_ids) - 1, 0))
        kept = (self._kept_ids[at] == ids) if len(self._kept_ids) else np.zeros(ids.size, bool)
        if kept.all():
            tokens = self._kept[at]
        else:  # read what the last read did not have, and keep this read's rows instead
            tokens = np.empty((ids.size, *self.index.row_shapes["text"]), self._kept.dtype)
            tokens[kept] = self._kept[at[kept]]
            tokens[~kept] = self.index.text(ids[~kept])
            self._kept_ids, first = np.unique(ids, return_index=True)
            self._kept = tokens[first]
        return torch.from_numpy(tokens).view(*captions.shape, *tokens.shape[1:]).to(self._device).float()

    def vision_tokens(self, items: torch.Tensor) -> torch.Tensor:
        tokens = self.index.vision(items.cpu().numpy().ravel())
        return torch.from_numpy(tokens).view(*items.shape, *tokens.shape[1:]).to(self._device).float()


def shard_order(seed: int, n_shards: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of the shards, which the S readers deal out: reader j takes every S-th from j."""
    return np.random.default_rng(stream_seed(seed, "shard_order", epoch)).permutation(n_shards)


class ShardStream:
    """One reader's items of a split, epoch after epoch, as batches of ids or features.

    Draws are made per batch, so a position restored with `load_state_dict` continues bit for bit.
    """

    def __init__(self, index: ShardIndex, batch_size: int, buffer_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        require(batch_size >= 1, "batch_size", batch_size, ">= 1")
        require(buffer_size >= 1, "buffer_size", buffer_size, ">= 1")
        require(world_size >= 1, "world_size", world_size, ">= 1")
        require(0 <= rank < world_size, "rank", rank, f"in [0, {world_size})")
        require(world_size <= index.n_shards, "world_size", world_size, f"<= {index.n_shards}, the split's shards "
                "(a reader without a shard would have nothing to read)")
        self.index, self.batch_size, self.buffer_size = index, batch_size, buffer_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_epoch(0)

    def shards(self, epoch: int) -> np.ndarray:
        """This reader's shards in epoch `epoch`, in reading order: every S-th of the epoch's permutation."""
        return shard_order(self.seed, self.index.n_shards, epoch)[self.rank::self.world_size]

    def start_epoch(self, epoch: int) -> None:
        """Stand at the start of `epoch` (rows of the current epoch not yet read are dropped)."""
        self.epoch, self.shard_pos, self.row_pos = epoch, 0, 0
        self.buffer: list[int] = []
        self.rng = np.random.default_rng(stream_seed(self.seed, "shuffle_buffer", epoch, self.rank))
        self._shards = self.shards(epoch)

    def _read(self, n: int) -> list[int]:
        """Up to n further item ids of this reader's shards, in shard order (no draws)."""
        ids: list[int] = []
        while len(ids) < n and self.shard_pos < len(self._shards):
            s = int(self._shards[self.shard_pos])
            take = min(n - len(ids), self.index.items_in(s) - self.row_pos)
            start = int(self.index.item_offsets[s]) + self.row_pos
            ids.extend(range(start, start + take))
            self.row_pos += take
            if self.row_pos == self.index.items_in(s):
                self.shard_pos, self.row_pos = self.shard_pos + 1, 0
        return ids

    def next_ids(self) -> np.ndarray:
        """The next batch of this epoch (short at its end, empty after it): each incoming id replaces a random slot's."""
        out: list[int] = []
        while len(out) < self.batch_size:
            want = self.batch_size - len(out)
            self.buffer.extend(self._read(self.buffer_size - len(self.buffer)))
            incoming = self._read(want)
            if incoming:  # the buffer is full: the top-up above stops short only when the input has ended
                for j, new in zip(self.rng.integers(0, len(self.buffer), size=len(incoming)).tolist(), incoming):
                    out.append(self.buffer[j])
                    self.buffer[j] = new
            elif self.buffer:  # input exhausted: drain the buffer in random order
                bounds = np.arange(len(self.buffer), len(self.buffer) - min(want, len(self.buffer)), -1)
                for j in self.rng.integers(0, bounds).tolist():
                    out.append(self.buffer[j])
                    self.buffer[j] = self.buffer[-1]
                    self.buffer.pop()
            else:
                break
        return np.asarray(out, dtype=np.int64)

    def next_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, a caption of each) of the next batch; the caption draw comes from this reader's generator."""
        items = self.next_ids()
        return items, self.index.caption_at(items, self.rng.random(items.size, dtype=np.float32))

    def epoch_ids(self) -> Iterator[np.ndarray]:
        """The remaining batches of item ids of the current epoch; then the stream stands at the next epoch."""
        while (ids := self.next_ids()).size:
            yield ids
        self.start_epoch(self.epoch + 1)

    def __iter__(self) -> Iterator[StreamBatch]:
        """The remaining batches of the current epoch with features, each item with a drawn caption."""
        while (pair := self.next_pairs())[0].size:
            yield self.index.fetch(pair[1], pair[0])
        self.start_epoch(self.epoch + 1)

    def position(self) -> tuple:
        """A cheap snapshot of the position (state_dict turns one into the checkpointable form)."""
        return self.epoch, self.shard_pos, self.row_pos, list(self.buffer), self.rng.bit_generator.state

    def state_dict(self, position: tuple | None = None) -> dict:
        """The position after the last batch handed out (or a `position()` snapshot): small, weights_only-safe."""
        epoch, shard_pos, row_pos, buffer, rng = position or self.position()
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "epoch": epoch,
                "shard_pos": shard_pos, "row_pos": row_pos,
                "buffer": torch.tensor(buffer, dtype=torch.int64), "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        mine = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size}
        theirs = {k: state[k] for k in mine}
        if theirs != mine:
            raise ConfigError(f"stream position saved for {theirs}, this stream is {mine}")
        self.start_epoch(int(state["epoch"]))
        self.shard_pos, self.row_pos = int(state["shard_pos"]), int(state["row_pos"])
        self.buffer = state["buffer"].tolist()
        self.rng.bit_generator.state = state["rng"]


class StreamLoader:
    """This rank's share of a streamed global batch, epoch by epoch, with the next batch read ahead.

    The global batch of B rows is S readers' batches of B / S rows, in reader order; rank r of w
    runs readers r·S/w ... (r+1)·S/w - 1, so its rows are exactly its slice of the global batch
    whatever w is (S must be a multiple of w). Every reader gets the same number of steps in an
    epoch: the fewest whole batches any reader's shards hold that epoch (the rest of the others'
    rows are dropped for that epoch, like a sampler's drop_last), known before reading from the
    shard sizes alone, so every rank agrees on it without communicating.
    """

    def __init__(self, index: ShardIndex, global_batch: int, readers: int, buffer_size: int, seed: int,
                 world: World, prefetch: bool = True):
        require(readers >= 1 and readers % world.size == 0, "train.stream.readers", readers,
                f"a positive multiple of the {world.size} ranks")
        require(global_batch % readers == 0, "train.batch_size", global_batch,
                f"divisible by train.stream.readers={readers}")
        require(readers <= index.n_shards, "train.stream.readers", readers,
                f"at most the split's {index.n_shards} shards (a reader without a shard would have nothing to read)")
        per_reader = global_batch // readers
        mine = range(world.rank * readers // world.size, (world.rank + 1) * readers // world.size)
        self.index, self.global_batch, self.readers, self.seed = index, global_batch, readers, seed
        self.streams = {j: ShardStream(index, per_reader, buffer_size, seed, j, readers) for j in mine}
        self._positions: dict[int, tuple] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stream") if prefetch else None

    def steps(self, epoch: int) -> int:
        """Steps of `epoch`: the fewest whole reader batches any of the S readers holds."""
        items = np.diff(self.index.item_offsets)[shard_order(self.seed, self.index.n_shards, epoch)]
        return min(int(items[j::self.readers].sum()) for j in range(self.readers)) // (self.global_batch // self.readers)

    def _draw(self) -> tuple[tuple[np.ndarray, np.ndarray], dict[int, tuple]]:
        items, captions = zip(*(s.next_pairs() for s in self.streams.values()))
        return (np.concatenate(captions), np.concatenate(items)), {j: s.position() for j, s in self.streams.items()}

    def _fetch(self, pairs: tuple[np.ndarray, np.ndarray]) -> Future | StreamBatch:
        return self._pool.submit(self.index.fetch, *pairs) if self._pool else self.index.fetch(*pairs)

    def batches(self, epoch: int, first_step: int) -> Iterator[StreamBatch]:
        """This rank's batches of steps first_step ... of `epoch`; at step 0 the readers start the epoch,
        else they stand where `load_state_dict` put them (a checkpoint after step first_step - 1)."""
        if first_step == 0:
            for s in self.streams.values():
                s.start_epoch(epoch)
        elif any(s.epoch != epoch for s in self.streams.values()):
            raise ConfigError(f"the stream stands in epoch {next(iter(self.streams.values())).epoch}, "
                              f"not at step {first_step} of epoch {epoch}: load the checkpoint's stream position")
        n = self.steps(epoch)
        if first_step >= n:
            return
        ids, position = self._draw()
        pending = self._fetch(ids)
        for i in range(first_step, n):
            batch = pending.result() if isinstance(pending, Future) else pending
            self._positions = position  # the position after the batch about to be handed out
            if i + 1 < n:
                ids, position = self._draw()
                pending = self._fetch(ids)
            if batch.ids.numel() != self.global_batch // self.readers * len(self.streams):
                raise RuntimeError(f"a reader ran dry at step {i} of epoch {epoch}: the shard sizes changed")
            yield batch

    def state_dict(self) -> dict[int, dict]:
        """Reader j -> its position after the last batch handed out (the read-ahead batch is not counted)."""
        return {j: s.state_dict(self._positions.get(j)) for j, s in self.streams.items()}

    def load_state_dict(self, states: dict[int, dict]) -> None:
        """Restore this rank's readers from the positions of all readers (a checkpoint holds every rank's)."""
        missing = [j for j in self.streams if j not in states]
        if missing:
            raise ConfigError(f"the checkpoint's stream positions lack readers {missing}: "
                              f"resume with the same train.stream.readers")
        for j, s in self.streams.items():
            s.load_state_dict(states[j])
        self._positions = {}

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True)
