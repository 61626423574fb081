"""Gradient reach: every trained component must reach a score the method is judged by.

A loss term whose gradient lands only on parameters that no evaluated score uses trains
something no result can show: a claim about it cannot come out false. This check runs one
forward pass, takes the gradient of each `_loss` term and of the evaluated scores (the
dual-encoder similarity, and the match score when the method re-ranks with it), and
compares the parameter sets. A method declares by name the terms and parameters that are
training-only by design (the BNS policy trains the sampler; the temperature scales the
training logits); the report lists those.
"""
from __future__ import annotations

import torch

from bacl.batch import Batch
from bacl.method import Method


def _reached(loss: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> set[str]:
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
    return {name for name, g in zip(params, grads) if g is not None and bool(g.abs().sum() > 0)}


def evaluated_parameters(method: Method, batch: Batch) -> set[str]:
    """Parameters with a non-zero gradient from the scores evaluation ranks by (random weights avoid cancellation)."""
    params = {n: p for n, p in method.named_parameters() if p.requires_grad}
    model = method.model
    vision, text = model.encode(batch.vision, "vision"), model.encode(batch.text, "text")
    g = torch.Generator().manual_seed(0)
    dual = vision.embedding @ text.embedding.T
    score = (dual * torch.randn(dual.shape, generator=g).to(dual.device)).sum()
    if method.reranks:
        match, _ = model.cross(text.shared, vision.hidden)
        score = score + (match * torch.randn(match.shape, generator=g).to(match.device)).sum()
    return _reached(score, params)


def reach_problems(method: Method, batch: Batch, step: int = 0, progress: float = 0.5) -> list[str]:
    """What is wrong, one line per problem; empty when every term and trained parameter is evaluated."""
    params = {n: p for n, p in method.named_parameters() if p.requires_grad}
    evaluated = evaluated_parameters(method, batch)
    training_only = {n for n in params if n.startswith(method.TRAINING_ONLY_PARAMETERS)}
    out = method(batch, step, progress)
    problems = []
    for term in sorted(k for k in out if k.endswith("_loss")):
        if term in method.TRAINING_ONLY_TERMS:
            continue
        reached = _reached(out[term], params)
        if not reached & evaluated:
            problems.append(f"{term} sends no gradient to any parameter an evaluated score uses")
        unevaluated = reached - evaluated - training_only
        if unevaluated:
            problems.append(f"{term} trains {sorted(unevaluated)}, which no evaluated score uses")
    return problems
