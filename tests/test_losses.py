"""Every loss against a naive loop or a hand computation on tiny inputs."""
import math

import numpy as np
import pytest
import torch

from bacl.cla import cla_loss
from bacl.losses import hcl, info_nce
from baselines.variance_aware import direction_statistic


def naive_info_nce(logits):
    out = []
    for i, row in enumerate(logits.tolist()):
        denom = sum(math.exp(v) for v in row)
        out.append(-math.log(math.exp(row[i]) / denom))
    return out


def official_hcl(out_1, out_2, temperature, tau_plus, beta):
    """joshr17/HCL image/main.py, transcribed for one direction of a cross-modal batch:
    anchors out_1, positives out_2 on the diagonal, the other rows of out_2 as negatives."""
    b = out_1.shape[0]
    sims = out_1 @ out_2.T
    total = []
    for i in range(b):
        pos = np.exp(sims[i, i] / temperature)
        neg = np.array([np.exp(sims[i, j] / temperature) for j in range(sims.shape[1]) if j != i])
        n = len(neg)
        imp = (beta * np.log(neg)).__array__()
        imp = np.exp(imp)
        reweight_neg = (imp * neg).sum() / imp.mean()
        ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
        ng = max(ng, n * np.e ** (-1 / temperature))
        total.append(-np.log(pos / (pos + ng)))
    return np.array(total)


def test_info_nce_matches_loop():
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    assert info_nce(logits).tolist() == pytest.approx(naive_info_nce(logits))


@pytest.mark.parametrize("beta,tau_plus,temperature", [(1.0, 0.1, 0.5), (0.5, 0.0, 0.2), (2.0, 0.3, 0.1)])
def test_hcl_matches_official_estimator(beta, tau_plus, temperature):
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    ours = hcl((a @ t.T) / temperature, 1 / temperature, beta, tau_plus)
    ref = official_hcl(a.numpy(), t.numpy(), temperature, tau_plus, beta)
    assert ours.numpy() == pytest.approx(ref, rel=1e-9)


def test_hcl_is_finite_at_clip_scale():
    g = torch.Generator().manual_seed(2)
    logits = 100 * torch.nn.functional.normalize(torch.randn(8, 8, generator=g), dim=1)
    logits.requires_grad_(True)
    loss = hcl(logits, 100.0, 1.0, 0.1)
    loss.mean().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()


def test_hcl_with_beta_zero_and_no_debiasing_is_info_nce():
    logits = torch.randn(5, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert hcl(logits, 1.0, 0.0, 0.0).tolist() == pytest.approx(info_nce(logits).tolist(), rel=1e-9)


def test_cla_against_hand_computation():
    # one sample, 2 query tokens x 2 key tokens
    a_pos = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]], dtype=torch.float64)
    a_neg = torch.tensor([[[0.2, 0.8], [0.4, 0.6]]], dtype=torch.float64)
    # ΔA = [[0.7, 0.7], [0.1, 0.1]]; β = 2: A_b = A⁻ (1 + 2ΔA) = [[0.48, 1.92], [0.48, 0.72]]
    # Ω = the two largest ΔA: (0,0) and (0,1) -> L = -log 0.48 - log 1.92
    loss, delta = cla_loss(a_pos, a_neg, beta=2.0, top=2)
    assert delta.flatten().tolist() == pytest.approx([0.7, 0.7, 0.1, 0.1])
    assert loss.item() == pytest.approx(-math.log(0.48) - math.log(1.92))
    # β = 0 reduces to -log A⁻ on Ω; ΔA(0,0) = ΔA(0,1) = 0.8 > ΔA(1,·) = 0.1
    a_neg2 = torch.tensor([[[0.1, 0.9], [0.4, 0.6]]], dtype=torch.float64)
    loss0, _ = cla_loss(a_pos, a_neg2, beta=0.0, top=2)
    assert loss0.item() == pytest.approx(-math.log(0.1) - math.log(0.9))


def test_cla_gradient_raises_negative_attention_on_omega():
    a_pos = torch.tensor([[[0.9, 0.1]]])
    a_neg = torch.tensor([[[0.3, 0.7]]], requires_grad=True)
    loss, _ = cla_loss(a_pos, a_neg, beta=1.0, top=1)
    loss.sum().backward()
    assert a_neg.grad[0, 0, 0] < 0 and a_neg.grad[0, 0, 1] == 0  # descent increases A⁻ at Ω only


def test_direction_statistics_against_loop():
    sims = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.8, 0.0], [0.5, -0.4, 0.7]], dtype=torch.float64)
    rows, cols = sims.tolist(), sims.T.tolist()
    var = lambda v: sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1)
    assert direction_statistic(sims, 1.0, "variance").tolist() == pytest.approx(
        [sum(map(var, rows)) / 3, sum(map(var, cols)) / 3])
    spread = lambda v: max(v) - min(v)
    assert direction_statistic(sims, 1.0, "cosine_spread").tolist() == pytest.approx(
        [sum(map(spread, rows)) / 3, sum(map(spread, cols)) / 3])

    def entropy(v, s=10.0):
        z = sum(math.exp(s * x) for x in v)
        return -sum(math.exp(s * x) / z * math.log(math.exp(s * x) / z) for x in v)
    assert direction_statistic(sims, 10.0, "entropy").tolist() == pytest.approx(
        [sum(map(entropy, rows)) / 3, sum(map(entropy, cols)) / 3])
