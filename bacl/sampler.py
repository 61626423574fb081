"""Boundary scores, straight-through Gumbel top-m and the BNS policy network.

Uniform and hardest picks over the pool are `Method.select_negatives` (bacl/method.py).
"""
from __future__ import annotations

import torch
from torch import nn


def boundary_scores(anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """BS(a, n) = sim(a, n) - sim(a, p) for [B, D] anchors/positives and [B, k, D] candidates.

    Negative for a correctly ranked negative, near 0 at the decision boundary, positive
    when the negative already outranks the positive. Embeddings are L2-normalised.
    """
    return torch.einsum("bd,bkd->bk", anchor, candidates) - (anchor * positive).sum(-1, keepdim=True)


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform noise `u` (clamped away from 0 and 1)."""
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))


def gumbel_topk_st(logits: torch.Tensor, tau: float, m: int, u: torch.Tensor) -> torch.Tensor:
    """Straight-through Gumbel top-m from uniform noise `u`: forward a hard {0,1} mask of m
    picks per row, backward the gradient of softmax((logits + g) / tau). For m = 1 this is
    hard Gumbel-Softmax."""
    y = (logits + gumbel(u)) / tau
    soft = torch.softmax(y, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, y.topk(m, dim=-1).indices, 1.0)
    return hard - soft.detach() + soft


class PolicyNet(nn.Module):
    """The BNS priority network: a 2-layer MLP over (anchor ⊙ candidate, sim, BS)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, anchor: torch.Tensor, candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sim = torch.einsum("bd,bkd->bk", anchor, candidates)
        features = torch.cat([anchor[:, None] * candidates, sim[..., None], scores[..., None]], dim=-1)
        return self.net(features).squeeze(-1)
