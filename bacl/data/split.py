"""One split of a feature store: frozen token features of items and their captions."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeatureSplit:
    """Items (image, video or audio) and captions; several captions may share one item.

    `attributes` and the token-of-attribute maps are ground truth that only synthetic
    data has: which tokens carry which attribute, so a mismatch can be localised.
    """

    vision: torch.Tensor  # [N, Lv, dv] frozen token features of each item
    text: torch.Tensor  # [M, Lt, dt] frozen token features of each caption
    text_item: torch.Tensor  # [M] item index of each caption
    attributes: torch.Tensor | None = None  # [N, A]
    vision_token_of_attribute: torch.Tensor | None = None  # [A] content-token index
    text_token_of_attribute: torch.Tensor | None = None  # [A]
    vision_pooled: torch.Tensor | None = None  # [N, d] the frozen encoder's own item embedding, if known
    text_pooled: torch.Tensor | None = None  # [M, d] the frozen encoder's own caption embedding, if known

    def __post_init__(self) -> None:
        n, m = self.vision.shape[0], self.text.shape[0]
        if self.text_item.shape != (m,):
            raise ValueError(f"text_item has shape {tuple(self.text_item.shape)}, expected ({m},)")
        counts = torch.bincount(self.text_item, minlength=n)
        if counts.numel() != n or (counts == 0).any():
            raise ValueError("every item needs at least one caption and text_item must index items")
        self._order = torch.argsort(self.text_item, stable=True)
        self._count = counts
        self._start = torch.cumsum(counts, 0) - counts

    @property
    def n_items(self) -> int:
        return self.vision.shape[0]

    @property
    def n_texts(self) -> int:
        return self.text.shape[0]

    @property
    def device(self) -> torch.device:
        return self.vision.device

    @property
    def vision_shape(self) -> tuple[int, int]:
        """(tokens, dims) of an item."""
        return self.vision.shape[1], self.vision.shape[2]

    @property
    def text_shape(self) -> tuple[int, int]:
        return self.text.shape[1], self.text.shape[2]

    def caption_at(self, items: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The caption of each item that uniform noise `u` in [0, 1) (same shape) picks among its captions."""
        u = u.to(items.device)
        offset = (u * self._count[items]).long().clamp_max(self._count[items] - 1)
        return self._order[self._start[items] + offset]

    # What a method reads (`StreamedSplit` answers the same from the store's shards).
    def vision_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """[..., Lv, dv] float32 item tokens of item indices."""
        return self.vision[items].float()

    def text_tokens(self, captions: torch.Tensor) -> torch.Tensor:
        """[..., Lt, dt] float32 caption tokens of caption indices."""
        return self.text[captions].float()

    def item_of(self, captions: torch.Tensor) -> torch.Tensor:
        return self.text_item[captions]

    def captions_padded(self) -> torch.Tensor:
        """[N, C] caption indices of each item (C = most captions of any item), -1 padded."""
        c = int(self._count.max())
        slots = self._start[:, None] + torch.arange(c, device=self._count.device)[None, :]
        present = torch.arange(c, device=self._count.device)[None, :] < self._count[:, None]
        return torch.where(present, self._order[slots.clamp_max(self.n_texts - 1)], -1)

    def to(self, device: torch.device | str) -> FeatureSplit:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        split = object.__new__(FeatureSplit)
        split.__dict__.update(moved)
        return split

    def pooled(self, modality: str) -> torch.Tensor:
        """Frozen item-level embedding used to build the candidate pool (the encoder's own if stored)."""
        if modality == "vision":
            return self.vision_pooled if self.vision_pooled is not None else self.vision.float().mean(dim=1)
        text = self.text_pooled if self.text_pooled is not None else self.text.float().mean(dim=1)
        per_item = torch.zeros(self.n_items, text.shape[1]).index_add_(0, self.text_item, text)
        return per_item / self._count[:, None]
