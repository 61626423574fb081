"""The data a method's forward receives: a batch of (item, caption) pairs and its pool negatives."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """This rank's rows of a global batch (all of it in a single process)."""
    items: torch.Tensor  # [b] item indices of this rank's rows
    rows: slice  # this rank's rows of the global batch
    global_size: int  # B: rows of the global batch over all ranks
    captions: torch.Tensor  # [b] the caption of each local item
    vision: torch.Tensor  # [b, Lv, dv]
    text: torch.Tensor  # [b, Lt, dt]

    def draw(self, shape_tail: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Uniform noise for the global batch, sliced: ranks draw exactly what one process would."""
        noise = torch.rand((self.global_size, *shape_tail), generator=generator)
        return noise[self.rows].to(self.items.device)


@dataclass
class Negatives:
    captions: torch.Tensor  # [b, m] caption indices into the training split
    scores: torch.Tensor | None  # [b, m] boundary scores, when known
    shared: torch.Tensor | None = None  # [b, m, 1+Lt, W] their text state, when they were encoded
    hardest: torch.Tensor | None = None  # [b] the pool candidate with the highest boundary score, when scored

    def first(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([b] caption, [b, 1+Lt, W] state or None) of each anchor's top negative: highest score, else the first."""
        col = self.scores.argmax(dim=1) if self.scores is not None else torch.zeros_like(self.captions[:, 0])
        rows = torch.arange(self.captions.shape[0], device=self.captions.device)
        return self.captions[rows, col], None if self.shared is None else self.shared[rows, col]
