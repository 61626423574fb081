"""A feature-store split read as a stream: this rank's shards, a seeded shuffle buffer, memory-mapped rows.

For splits too large for memory (LAION-400M's store is about 21 TB). A row is one caption with
its item; caption ids are the split's caption order (`FeatureStore.split(...).text` rows), so
ids agree with the pool and the bank. Every epoch permutes the shards (seed, epoch), rank r of
w takes shards r, r + w, ... of that order, and its rows pass through a buffer of
`buffer_size` ids, each draw replacing a random slot (webdataset's scheme). Only ids sit in
the buffer; a batch's features are read from the memory-mapped shards when it is emitted, so
memory is the buffer's ids, a few open shards and one batch, whatever the number of rows.
`ShardStream.state_dict()` is the exact position (epoch, shard, row, buffer, generator): a
stream restored from it yields the same remaining rows as one never stopped.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from bacl.data.store import FeatureStore, block_concat, split_keep
from bacl.errors import ConfigError, require
from bacl.results import read_json
from bacl.rng import stream_seed


@dataclass
class StreamBatch:
    """Features of a list of caption ids, in that order."""

    ids: torch.Tensor  # [b] caption ids in the split
    items: torch.Tensor  # [b] item id of each caption in the split
    vision: torch.Tensor  # [b, Lv, dv] float16 item tokens (streams in disjoint channel blocks, as FeatureStore.split)
    text: torch.Tensor  # [b, Lt, dt] float16 caption tokens


@dataclass
class _OpenShard:
    text_rows: np.ndarray  # [captions of the split in this shard] their rows in the shard's text arrays
    item_rows: np.ndarray  # their item's row in the shard's item arrays
    item_ids: np.ndarray  # their item's id in the split
    text: np.ndarray  # memory-mapped [m, Lt, dt]
    streams: list[np.ndarray]  # memory-mapped [n, L, d] per item stream


class ShardIndex:
    """Where every caption of a split lives: caption id -> (shard, row), and its features by id.

    Ids are assigned shard by shard, so the id table is one offset per shard (searchsorted),
    not one entry per row; a shard's row lists are read when it is opened. At most
    `open_shards` shards stay memory-mapped (their touched pages count as resident memory).
    """

    def __init__(self, store: FeatureStore, split: str, exclude: Collection[str] = (), open_shards: int = 8):
        require(open_shards >= 1, "open_shards", open_shards, ">= 1")
        self.split, self.open_shards = split, open_shards
        self.exclude = exclude if isinstance(exclude, (set, frozenset)) else frozenset(exclude)
        self.streams: list[str] = store.manifest["streams"]
        self.dirs: list[Path] = []
        captions, items = [], []
        for d, _, keep in store._rows(split, self.exclude):
            text_item = np.load(d / "text_item.npy", mmap_mode="r")
            self.dirs.append(d)
            captions.append(int(keep[text_item].sum()) if text_item.size else 0)
            items.append(int(keep.sum()))
        if not self.dirs or sum(captions) == 0:
            raise ConfigError(f"{store.path}: the {split} split has no captions to stream")
        self.offsets = np.concatenate([[0], np.cumsum(captions)]).astype(np.int64)  # caption id offset per shard
        self.item_offsets = np.concatenate([[0], np.cumsum(items)]).astype(np.int64)
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()

    @property
    def n_shards(self) -> int:
        return len(self.dirs)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def rows_in(self, shard: int) -> int:
        return int(self.offsets[shard + 1] - self.offsets[shard])

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row in that shard's text arrays) of each caption id."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            raise ConfigError(f"caption ids must lie in [0, {self.n_rows}), got {ids.min()}..{ids.max()}")
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        rows = np.empty_like(ids)
        for s in np.unique(shard):
            at = shard == s
            rows[at] = self._shard(int(s)).text_rows[ids[at] - self.offsets[s]]
        return shard, rows

    def fetch(self, ids: np.ndarray) -> StreamBatch:
        """The features of arbitrary caption ids (a batch, or pool negatives), read from the memory maps."""
        ids = np.asarray(ids, dtype=np.int64)
        shard, _ = self.locate(ids)
        items = np.empty_like(ids)
        vision: np.ndarray | None = None
        text: np.ndarray | None = None
        for s in np.unique(shard):
            at = np.nonzero(shard == s)[0]
            open_shard = self._shard(int(s))
            local = ids[at] - self.offsets[s]
            rows_v = block_concat([t[open_shard.item_rows[local]] for t in open_shard.streams])
            rows_t = open_shard.text[open_shard.text_rows[local]]
            if vision is None or text is None:
                vision = np.empty((ids.size, *rows_v.shape[1:]), dtype=np.float16)
                text = np.empty((ids.size, *rows_t.shape[1:]), dtype=np.float16)
            vision[at], text[at], items[at] = rows_v, rows_t, open_shard.item_ids[local]
        if vision is None or text is None:
            raise ConfigError("fetch needs at least one caption id")
        return StreamBatch(ids=torch.from_numpy(ids), items=torch.from_numpy(items),
                           vision=torch.from_numpy(vision), text=torch.from_numpy(text))

    def _shard(self, s: int) -> _OpenShard:
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        d = self.dirs[s]
        keep = split_keep(read_json(d / "items.json"), self.split, self.exclude)
        text_item = np.load(d / "text_item.npy")
        text_rows = np.nonzero(keep[text_item])[0]
        item_rows = text_item[text_rows]
        opened = _OpenShard(text_rows=text_rows, item_rows=item_rows,
                            item_ids=(np.cumsum(keep) - 1 + self.item_offsets[s])[item_rows],
                            text=open_memmap(d / "text.tokens.npy", mode="r"),
                            streams=[open_memmap(d / f"{n}.tokens.npy", mode="r") for n in self.streams])
        self._open[s] = opened
        if len(self._open) > self.open_shards:
            self._open.popitem(last=False)  # its memory maps close with their last reference
        return opened


class ShardStream:
    """This rank's captions of a split, epoch after epoch, as batches of ids or features.

    Iterating yields the rest of the current epoch (the last batch may be short), then moves
    to the next epoch. Draws are made per batch, so a position restored with
    `load_state_dict` continues bit for bit.
    """

    def __init__(self, index: ShardIndex, batch_size: int, buffer_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        require(batch_size >= 1, "batch_size", batch_size, ">= 1")
        require(buffer_size >= 1, "buffer_size", buffer_size, ">= 1")
        require(world_size >= 1, "world_size", world_size, ">= 1")
        require(0 <= rank < world_size, "rank", rank, f"in [0, {world_size})")
        require(world_size <= index.n_shards, "world_size", world_size, f"<= {index.n_shards}, the split's shards "
                "(a rank without a shard would have nothing to read)")
        self.index, self.batch_size, self.buffer_size = index, batch_size, buffer_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._start_epoch(0)

    def shards(self, epoch: int) -> np.ndarray:
        """This rank's shards in epoch `epoch`, in reading order: every r-th of the epoch's permutation."""
        order = np.random.default_rng(stream_seed(self.seed, "shard_order", epoch)).permutation(self.index.n_shards)
        return order[self.rank::self.world_size]

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.shard_pos, self.row_pos = epoch, 0, 0
        self.buffer: list[int] = []
        self.rng = np.random.default_rng(stream_seed(self.seed, "shuffle_buffer", epoch, self.rank))
        self._shards = self.shards(epoch)

    def _read(self, n: int) -> list[int]:
        """Up to n further caption ids of this rank's shards, in shard order (no draws)."""
        ids: list[int] = []
        while len(ids) < n and self.shard_pos < len(self._shards):
            s = int(self._shards[self.shard_pos])
            take = min(n - len(ids), self.index.rows_in(s) - self.row_pos)
            start = int(self.index.offsets[s]) + self.row_pos
            ids.extend(range(start, start + take))
            self.row_pos += take
            if self.row_pos == self.index.rows_in(s):
                self.shard_pos, self.row_pos = self.shard_pos + 1, 0
        return ids

    def _next_ids(self) -> list[int]:
        """The next batch of this epoch ([] at its end): each incoming id replaces a random buffer slot's."""
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
        return out

    def epoch_ids(self) -> Iterator[np.ndarray]:
        """The remaining batches of caption ids of the current epoch; then the stream stands at the next epoch."""
        while ids := self._next_ids():
            yield np.asarray(ids, dtype=np.int64)
        self._start_epoch(self.epoch + 1)

    def __iter__(self) -> Iterator[StreamBatch]:
        return (self.index.fetch(ids) for ids in self.epoch_ids())

    def state_dict(self) -> dict:
        """The position after the last batch handed out: small (buffer_size ids), torch.load(weights_only)-safe."""
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "epoch": self.epoch,
                "shard_pos": self.shard_pos, "row_pos": self.row_pos,
                "buffer": torch.tensor(self.buffer, dtype=torch.int64), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        mine = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size}
        theirs = {k: state[k] for k in mine}
        if theirs != mine:
            raise ConfigError(f"stream position saved for {theirs}, this stream is {mine}")
        self._start_epoch(int(state["epoch"]))
        self.shard_pos, self.row_pos = int(state["shard_pos"]), int(state["row_pos"])
        self.buffer = state["buffer"].tolist()
        self.rng.bit_generator.state = state["rng"]
