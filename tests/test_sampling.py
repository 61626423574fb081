"""Boundary scores, negative selection, and gradient flow into the BNS policy (pools: test_pool.py)."""
import pytest
import torch

from bacl.data.pool import candidate_pool
from bacl.data.synthetic import SyntheticDataset, group_size
from bacl.sampler import boundary_scores, gumbel_topk_st
from bacl.trainer import Trainer


def test_boundary_score_signs():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.8, 0.6]])  # sim(a, p) = 0.8
    cands = torch.tensor([[[0.0, 1.0], [0.8, -0.6], [1.0, 0.0]]])  # sims 0, 0.8, 1.0
    bs = boundary_scores(a, p, cands)
    assert bs[0].tolist() == pytest.approx([-0.8, 0.0, 0.2])  # easy < boundary (0) < outranks positive


def test_negatives_never_share_the_anchor_item(tiny_config):
    for method in ("uniform_hn", "hardest", "bacl"):
        trainer = Trainer(tiny_config(f"method={method}", "method.num_negatives=3"))
        trainer.build()
        batch = trainer.method.batch(torch.arange(12))
        negatives, _ = trainer.method.select_negatives(batch, *(
            trainer.method.model.encode(t, m).embedding for t, m in ((batch.vision, "vision"), (batch.text, "text"))),
            step=0, progress=0.5)
        neg_items = trainer.train_split.text_item[negatives.captions]
        assert negatives.captions.shape == (12, 3)
        assert not (neg_items == batch.items[:, None]).any()
        for row, item in zip(neg_items, batch.items):
            assert set(row.tolist()) <= set(trainer.method.pool[item].tolist())


def test_gumbel_top_m_is_hard_forward_soft_backward():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, requires_grad=True)
    y = gumbel_topk_st(logits, 0.5, 2, torch.rand(logits.shape, generator=g))
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0} and (y.detach().sum(1) == 2).all()
    (y * torch.arange(7.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_gumbel_sampling_follows_the_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(20000, 1)
    freq = gumbel_topk_st(logits, 1.0, 1, torch.rand(logits.shape, generator=g)).detach().mean(0)
    assert freq.tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.015)


def test_policy_learns_only_from_its_reward(tiny_config):
    trainer = Trainer(tiny_config("method=bacl"))
    trainer.build()
    method = trainer.method
    out = method(trainer.method.batch(torch.arange(12)), step=0, progress=0.9)
    policy = list(method.policy.parameters())
    grads = torch.autograd.grad(out["policy_loss"], policy, allow_unused=True)
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    others = out["contrastive_loss"] + out["local_loss"]
    grads = torch.autograd.grad(others, policy, allow_unused=True)
    assert all(g is None for g in grads)
    assert out["alpha"] < 0  # late in training the curriculum favours hard negatives


def test_synthetic_rho_sets_sibling_density_in_the_pool():
    from omegaconf import OmegaConf
    cfg = OmegaConf.structured(SyntheticDataset.Config(n_train=600, n_test=60, rho=0.25))
    data = SyntheticDataset(cfg)
    pool = candidate_pool(data.train.pooled("vision"), 20)
    attrs = data.train.attributes
    differing = (attrs[:, None, :] != attrs[pool]).sum(-1)
    siblings_in_pool = (differing == 1).sum(1).float()
    assert group_size(cfg) - 1 == 5
    assert siblings_in_pool.mean() == pytest.approx(5.0, abs=0.5)  # rho * k of the 20 candidates
