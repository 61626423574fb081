"""Per-direction contrastive losses on a logits matrix whose positive is column `row index`.

Both return one loss per query so that a method can weight queries or directions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """[B, C] logits (C >= B, positive of row i in column i) -> [B] cross-entropy."""
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device), reduction="none")


def hcl(logits: torch.Tensor, scale: float, beta: float, tau_plus: float) -> torch.Tensor:
    """Robinson et al. (2021) debiased hard-negative loss, in log space to survive large scales.

    Mirrors the official estimator (joshr17/HCL): importance weights neg**beta, the
    tau_plus debiasing term and the clamp at N * exp(-scale), where scale = 1 / temperature.
    """
    b = logits.shape[0]
    diag = torch.arange(b, device=logits.device)
    pos = logits[diag, diag]
    neg_mask = torch.ones_like(logits, dtype=torch.bool)
    neg_mask[diag, diag] = False
    neg = logits[neg_mask].view(b, -1)
    n = neg.shape[1]
    shift = neg.max(dim=1, keepdim=True).values.detach()
    neg = neg - shift
    log_reweight = torch.logsumexp((1 + beta) * neg, 1) - torch.logsumexp(beta * neg, 1) + math.log(n)
    pos_shifted = (pos - shift.squeeze(1)).clamp_max(80.0)
    ng = (log_reweight.exp() - tau_plus * n * pos_shifted.exp()) / (1 - tau_plus)
    log_floor = math.log(n) - scale - shift.squeeze(1)
    log_ng = torch.maximum(ng.clamp_min(torch.finfo(ng.dtype).tiny).log(), log_floor) + shift.squeeze(1)
    return F.softplus(log_ng - pos)
