"""Contrastive Local Attention: sharpen the hardest negative's attention where it differs.

ΔA = |A⁺ - A⁻|, A_b = A⁻ · (1 + β ΔA), L_local = Σ_Ω -log A_b  (the paper's equations).
Ω is our choice: the `top` query/key pairs with the largest ΔA in each sample (chosen
on detached ΔA, so the selection itself is not differentiated).
"""
from __future__ import annotations

import torch


def cla_loss(attn_pos: torch.Tensor, attn_neg: torch.Tensor, beta: float, top: int,
             eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, Lq, Lk] maps of the positive and the hardest negative -> ([B] loss, [B, Lq, Lk] ΔA)."""
    delta = (attn_pos - attn_neg).abs()
    boosted = attn_neg * (1 + beta * delta)
    flat_delta = delta.detach().flatten(1)
    omega = flat_delta.topk(min(top, flat_delta.shape[1]), dim=1).indices
    picked = torch.gather(boosted.flatten(1), 1, omega)
    return -picked.clamp_min(eps).log().sum(dim=1), delta
