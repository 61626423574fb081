"""Per-direction contrastive losses: row i of the logits has its positive in column labels[i].

Both return one loss per query so that a method can weight queries or directions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def diagonal(logits: torch.Tensor) -> torch.Tensor:
    return torch.arange(logits.shape[0], device=logits.device)


def info_nce(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """[b, C] logits -> [b] cross-entropy (labels default to the diagonal)."""
    return F.cross_entropy(logits, diagonal(logits) if labels is None else labels, reduction="none")


def hcl(logits: torch.Tensor, scale: float, beta: float, tau_plus: float,
        labels: torch.Tensor | None = None) -> torch.Tensor:
    """Robinson et al. (2021) debiased hard-negative loss, in log space to survive large scales.

    Mirrors the official estimator (joshr17/HCL): importance weights neg**beta, the
    tau_plus debiasing term and the clamp at N * exp(-scale), where scale = 1 / temperature.
    """
    b = logits.shape[0]
    rows, labels = diagonal(logits), diagonal(logits) if labels is None else labels
    pos = logits[rows, labels]
    neg_mask = torch.ones_like(logits, dtype=torch.bool)
    neg_mask[rows, labels] = False
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
