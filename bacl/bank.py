"""The text-embedding bank that scores pool candidates without encoding them every step.

Scoring k pool candidates per anchor needs their current text embeddings; encoding
B·k captions each step would cost more than the step itself. The bank keeps one
embedding per training caption: every step writes back the embeddings it computed
anyway, and rows nobody rewrote for `refresh_every` steps are re-encoded. Like
pytorch-metric-learning's `CrossBatchMemory`, its whole state is module buffers, so it
is checkpointed with the method's `state_dict()` and moves with `.to(device)`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

REFRESH_CHUNK = 1024


class EmbeddingBank(nn.Module):
    def __init__(self, rows: int, dim: int, refresh_every: int):
        super().__init__()
        self.refresh_every = refresh_every
        self.register_buffer("embeddings", torch.zeros(rows, dim))  # [M, D] one row per training caption
        # step at which each row was last written; -refresh_every: never, so the first refresh takes all
        self.register_buffer("written", torch.full((rows,), -refresh_every, dtype=torch.long))
        self.register_buffer("refreshed", torch.tensor(-refresh_every, dtype=torch.long))  # step of the last refresh

    def due(self, step: int) -> bool:
        return step - int(self.refreshed) >= self.refresh_every

    @torch.no_grad()
    def refresh(self, step: int, texts: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Re-encode (`encode`: [n, Lt, dt] tokens -> [n, D] embeddings) the rows not written lately."""
        stale = torch.nonzero(step - self.written >= self.refresh_every).squeeze(1)
        for rows in stale.split(REFRESH_CHUNK):
            self.embeddings[rows] = encode(texts[rows].float()).float()
        self.written[stale] = step
        self.refreshed.fill_(step)

    @torch.no_grad()
    def write(self, captions: torch.Tensor, embeddings: torch.Tensor, step: int) -> None:
        """Keep embeddings training just computed (the caller gathers them over ranks first)."""
        self.embeddings[captions] = embeddings.detach().float()
        self.written[captions] = step

    def lookup(self, captions: torch.Tensor) -> torch.Tensor:
        """[..., D] the banked embeddings of caption indices of any shape."""
        return self.embeddings[captions]
