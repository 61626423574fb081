"""Random streams, one per purpose, derived from the run's seed; their state travels in a module's state dict.

Two arms compared at the same seed should see the same model init, batch order and caption
draws (common random numbers), so that what differs between their results is the method,
not the luck of the draw. One generator per purpose makes that so: a method that draws
extra negatives or Gumbel noise advances only its own streams, never the caption stream.
Each stream's seed is `numpy.random.SeedSequence(seed).spawn(...)[purpose]` (with a further
key, e.g. the epoch, where needed), so different seeds never share a stream and purposes of
one seed are independent. A method's generators are module state (`get_extra_state`), so its
draws resume bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# Append only: a stream's seed depends on the purpose's position in this tuple.
PURPOSES = ("model_init", "epoch_order", "captions", "negatives", "gumbel", "itm", "shard_order", "shuffle_buffer")


def stream_seed(seed: int, purpose: str, *key: int) -> int:
    """The seed of `purpose`'s stream (and of a sub-stream `key`, e.g. one epoch) for run seed `seed`."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(PURPOSES.index(purpose), *key))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))  # torch takes < 2**63


class Generators(nn.Module):
    def __init__(self, seed: int, purposes: tuple[str, ...]):
        super().__init__()
        self.streams = {name: torch.Generator().manual_seed(stream_seed(seed, name)) for name in purposes}

    def __getitem__(self, name: str) -> torch.Generator:
        return self.streams[name]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {name: g.get_state() for name, g in self.streams.items()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.streams):
            raise KeyError(f"generator streams {sorted(state)} in the checkpoint, expected {sorted(self.streams)}")
        for name, g in self.streams.items():
            g.set_state(state[name])
