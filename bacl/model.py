"""The trainable part on top of frozen encoders: projections + one shared transformer.

BLIP-style, one set of blocks serves two modes:
- unimodal: self-attention only, CLS-pooled and L2-normalised embeddings, used by the
  contrastive loss and by retrieval over a whole test set;
- cross-modal: text tokens also cross-attend to the vision (or audio) tokens in the last
  `cross_layers` blocks, giving a match score and the last layer's head-averaged
  cross-attention map A(i, j) that CLA needs.
The blocks before the fused ones are identical in both modes, so a cross-modal pass starts
from the text's unimodal hidden state at that depth (`Encoded.shared`) instead of redoing
them: with the default cross_layers = 1 a CLA pair costs one block, not four.
Self-attention uses scaled_dot_product_attention; only the cross-attention whose map is
needed is computed explicitly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, need_map: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = self._split(self.q(x))
        k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))
        drop = self.dropout if self.training else 0.0
        if need_map:
            attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
            y = F.dropout(attn, drop, self.training) @ v
            attn_map = attn.mean(dim=1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            attn_map = None
        return self.out(y.transpose(1, 2).flatten(2)), attn_map


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, cross: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout)
        if cross:
            self.norm_x = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads, dropout)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, need_map: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)[0]
        attn_map = None
        if context is not None:
            y, attn_map = self.cross_attn(self.norm_x(x), context, need_map)
            x = x + y
        return x + self.mlp(self.norm2(x)), attn_map


@dataclass
class Encoded:
    embedding: torch.Tensor  # [B, W] L2-normalised, for the contrastive loss and retrieval
    hidden: torch.Tensor  # [B, 1+L, W] final hidden states (the context a cross-modal pass attends to)
    shared: torch.Tensor  # [B, 1+L, W] state before the first fused block, where a cross-modal pass starts


class AlignmentModel(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, vision_tokens: int, text_tokens: int,
                 width: int = 512, layers: int = 4, heads: int = 8, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, init_temperature: float = 0.07, cross_layers: int = 1):
        super().__init__()
        self.first_fused = layers - cross_layers
        self.proj = nn.ModuleDict({"vision": nn.Linear(vision_dim, width), "text": nn.Linear(text_dim, width)})
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, width) * 0.02) for m in self.proj})
        self.pos = nn.ParameterDict({
            "vision": nn.Parameter(torch.randn(1, vision_tokens + 1, width) * 0.02),
            "text": nn.Parameter(torch.randn(1, text_tokens + 1, width) * 0.02),
        })
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, cross=i >= self.first_fused)
                                    for i in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.ModuleDict({m: nn.Linear(width, width) for m in self.proj})
        self.match_head = nn.Linear(width, 1)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def _embed_tokens(self, tokens: torch.Tensor, modality: str) -> torch.Tensor:
        x = self.proj[modality](tokens)
        x = torch.cat([self.cls[modality].expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos[modality][:, : x.shape[1]]

    def shared(self, tokens: torch.Tensor, modality: str) -> torch.Tensor:
        """Hidden state after the blocks that both modes share (input of the first fused block)."""
        x = self._embed_tokens(tokens, modality)
        for block in self.blocks[: self.first_fused]:
            x = block(x)[0]
        return x

    def encode(self, tokens: torch.Tensor, modality: str) -> Encoded:
        """Unimodal mode."""
        shared = self.shared(tokens, modality)
        x = shared
        for block in self.blocks[self.first_fused:]:
            x = block(x)[0]
        x = self.norm(x)
        return Encoded(F.normalize(self.head[modality](x[:, 0]), dim=-1), x, shared)

    def cross(self, text_shared: torch.Tensor, vision_hidden: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-modal mode from a text `Encoded.shared` state: (match score [B], attention [B, 1+Lt, Lv])."""
        context = vision_hidden[:, 1:]  # content tokens only: the map is over patches, not CLS
        x, attn_map = text_shared, None
        for i, block in enumerate(self.blocks[self.first_fused:], start=self.first_fused):
            x, attn_map = block(x, context, need_map=i == len(self.blocks) - 1)
        return self.match_head(self.norm(x)[:, 0]).squeeze(-1), attn_map
