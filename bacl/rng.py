"""Named torch generators whose state travels in a module's `state_dict()`.

A method's random draws (captions, pool negatives, Gumbel noise) must resume bit-for-bit,
so the generators are part of the method's state rather than something the trainer
saves by name; `get_extra_state`/`set_extra_state` is torch's hook for such state.
"""
from __future__ import annotations

import torch
from torch import nn


class Generators(nn.Module):
    def __init__(self, seeds: dict[str, int]):
        super().__init__()
        self.streams = {name: torch.Generator().manual_seed(seed) for name, seed in seeds.items()}

    def __getitem__(self, name: str) -> torch.Generator:
        return self.streams[name]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {name: g.get_state() for name, g in self.streams.items()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.streams):
            raise KeyError(f"generator streams {sorted(state)} in the checkpoint, expected {sorted(self.streams)}")
        for name, g in self.streams.items():
            g.set_state(state[name])
