"""The trainable part on top of frozen encoders: projections + one shared transformer.

BLIP-style, one set of blocks serves two modes:
- unimodal: self-attention only, CLS-pooled and L2-normalised embeddings, used by the
  contrastive loss and by retrieval over a whole test set;
- cross-modal: text tokens also cross-attend to the vision (or audio) tokens in the last
  `cross_layers` blocks, giving a match score and the last layer's head-averaged
  cross-attention map A(i, j) that CLA needs.
Everything up to the first fused block's cross-attention is identical in both modes (the
blocks before it and its self-attention), so a cross-modal pass starts from the text's
unimodal state at that point (`Encoded.shared`) instead of redoing it. CLA needs only the
last layer's attention map, and the map depends on nothing after the softmax, so
`cross_map` stops there: with the default cross_layers = 1 a CLA pair costs a query
projection and a softmax, and the images' key projection is shared by the positive and the
hardest negative. Self-attention uses scaled_dot_product_attention; only the attention whose
map is needed is computed explicitly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bacl.data.split import FeatureSplit

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on 1 / temperature


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

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, need_map: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = self._split(self.q(x))
        k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))
        drop = self.dropout if self.training else 0.0
        if need_map:
            attn = self._weights(q, k)
            y = F.dropout(attn, drop, self.training) @ v
            attn_map = attn.mean(dim=1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            attn_map = None
        return self.out(y.transpose(1, 2).flatten(2)), attn_map

    def attention_map(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Head-averaged map of [n·b, Lq, W] queries over [b, Lk, W] keys: the keys are projected
        once for all n query sets (the values are never needed)."""
        b = context.shape[0]
        width = self.kv.out_features // 2  # kv stacks the key and value projections: keys only
        k = self._split(F.linear(context, self.kv.weight[:width], self.kv.bias[:width]))
        q = self._split(self.q(x)).unflatten(0, (-1, b))  # [n, b, heads, Lq, dh]
        return self._weights(q, k).mean(dim=2).flatten(0, 1)


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

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The self-attention sublayer (the part both modes share)."""
        h = self.norm1(x)
        return x + self.self_attn(h, h)[0]

    def finish(self, x: torch.Tensor, context: torch.Tensor | None = None, need_map: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention (cross-modal mode) and the MLP, after `attend`."""
        attn_map = None
        if context is not None:
            y, attn_map = self.cross_attn(self.norm_x(x), context, need_map)
            x = x + y
        return x + self.mlp(self.norm2(x)), attn_map

    def cross_map(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.cross_attn.attention_map(self.norm_x(x), context)


@dataclass
class Encoded:
    embedding: torch.Tensor  # [B, W] L2-normalised, for the contrastive loss and retrieval
    hidden: torch.Tensor  # [B, 1+L, W] final hidden states (the context a cross-modal pass attends to)
    shared: torch.Tensor  # [B, 1+L, W] state where the modes part (before the first cross-attention)


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
        """State where the two modes part: the shared blocks, then the first fused block's self-attention."""
        x = self._embed_tokens(tokens, modality)
        for block in self.blocks[: self.first_fused]:
            x = block.finish(block.attend(x))[0]
        return self.blocks[self.first_fused].attend(x)

    def encode(self, tokens: torch.Tensor, modality: str) -> Encoded:
        """Unimodal mode."""
        shared = self.shared(tokens, modality)
        x = self.blocks[self.first_fused].finish(shared)[0]
        for block in self.blocks[self.first_fused + 1:]:
            x = block.finish(block.attend(x))[0]
        x = self.norm(x)
        return Encoded(F.normalize(self.head[modality](x[:, 0]), dim=-1), x, shared)

    def _fused_until_last(self, text_shared: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Cross-modal mode up to the last block's cross-attention (its input)."""
        fused = list(self.blocks)[self.first_fused:]
        x = text_shared
        for block, following in zip(fused[:-1], fused[1:]):
            x = following.attend(block.finish(x, context)[0])
        return x

    def cross(self, text_shared: torch.Tensor, vision_hidden: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-modal mode from a text `Encoded.shared` state: (match score [B], attention [B, 1+Lt, Lv])."""
        context = vision_hidden[:, 1:]  # content tokens only: the map is over patches, not CLS
        x, attn_map = self.blocks[-1].finish(self._fused_until_last(text_shared, context), context, need_map=True)
        return self.match_head(self.norm(x)[:, 0]).squeeze(-1), attn_map

    def cross_map(self, text_shared: torch.Tensor, vision_hidden: torch.Tensor) -> torch.Tensor:
        """Only the last layer's attention map of `cross`, for [n·B] text states over the same [B] items."""
        context = vision_hidden[:, 1:]
        if self.first_fused < len(self.blocks) - 1:  # deeper fusion: each query set runs the blocks before
            context_n = context.repeat(text_shared.shape[0] // context.shape[0], 1, 1)
            return self.blocks[-1].cross_map(self._fused_until_last(text_shared, context_n), context)
        return self.blocks[-1].cross_map(text_shared, context)


def build_model(cfg, split: FeatureSplit, init_temperature: float) -> AlignmentModel:
    """The model of `cfg` (the run's `model` section) for a split's token shapes; consumes torch's global RNG."""
    return AlignmentModel(
        vision_dim=split.vision_shape[1], text_dim=split.text_shape[1],
        vision_tokens=split.vision_shape[0], text_tokens=split.text_shape[0],
        width=cfg.width, layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout, cross_layers=cfg.cross_layers, init_temperature=init_temperature,
    )
