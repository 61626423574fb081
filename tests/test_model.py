"""The shared transformer's fast paths against a plain fused forward written out here."""
import math

import pytest
import torch

from bacl.cla import cla_loss
from bacl.model import AlignmentModel

B, LV, LT, W, HEADS = 3, 5, 4, 16, 2


def model(layers: int, cross_layers: int) -> AlignmentModel:
    torch.manual_seed(0)
    return AlignmentModel(vision_dim=6, text_dim=7, vision_tokens=LV, text_tokens=LT, width=W, layers=layers,
                          heads=HEADS, cross_layers=cross_layers).eval()


def reference_map(attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_head)) averaged over heads, from the projection weights."""
    q = x @ attn.q.weight.T + attn.q.bias
    k = context @ attn.kv.weight[:W].T + attn.kv.bias[:W]
    dh = W // HEADS
    maps = [torch.softmax(q[..., h * dh:(h + 1) * dh] @ k[..., h * dh:(h + 1) * dh].transpose(1, 2) / math.sqrt(dh),
                          dim=-1) for h in range(HEADS)]
    return sum(maps) / HEADS


def reference_fused(m: AlignmentModel, text_tokens: torch.Tensor, context: torch.Tensor):
    """Text tokens through every block, cross-attending in the fused ones: (match, last map)."""
    x = m._embed_tokens(text_tokens, "text")
    attn_map = None
    for i, block in enumerate(m.blocks):
        h = block.norm1(x)
        x = x + block.self_attn(h, h)[0]
        if i >= m.first_fused:
            attn_map = reference_map(block.cross_attn, block.norm_x(x), context)
            x = x + block.cross_attn(block.norm_x(x), context)[0]
        x = x + block.mlp(block.norm2(x))
    return m.match_head(m.norm(x)[:, 0]).squeeze(-1), attn_map


@pytest.mark.parametrize("layers,cross_layers", [(2, 1), (3, 2), (2, 2)])
def test_cross_from_the_shared_state_equals_a_full_fused_pass(layers, cross_layers):
    m = model(layers, cross_layers)
    torch.manual_seed(1)
    text, vision = torch.randn(B, LT, 7), torch.randn(B, LV, 6)
    hidden = m.encode(vision, "vision").hidden
    match, attn = m.cross(m.shared(text, "text"), hidden)
    ref_match, ref_attn = reference_fused(m, text, hidden[:, 1:])
    assert torch.allclose(match, ref_match, atol=1e-5)
    assert torch.allclose(attn, ref_attn, atol=1e-6)


@pytest.mark.parametrize("layers,cross_layers", [(2, 1), (3, 2)])
def test_cross_map_equals_the_map_of_the_full_pass_for_stacked_query_sets(layers, cross_layers):
    m = model(layers, cross_layers)
    torch.manual_seed(2)
    pos, neg, vision = torch.randn(B, LT, 7), torch.randn(B, LT, 7), torch.randn(B, LV, 6)
    hidden = m.encode(vision, "vision").hidden
    stacked = torch.cat([m.shared(pos, "text"), m.shared(neg, "text")])
    fast = m.cross_map(stacked, hidden)
    full = m.cross(stacked, torch.cat([hidden, hidden]))[1]
    assert fast.shape == (2 * B, 1 + LT, LV)
    assert torch.allclose(fast, full, atol=1e-6)


def test_cla_gradients_are_those_of_the_full_pass():
    """The map-only path drops work after the softmax, so CLA's gradients must not change."""
    m = model(2, 1)
    torch.manual_seed(3)
    pos, neg, vision = torch.randn(B, LT, 7), torch.randn(B, LT, 7), torch.randn(B, LV, 6)
    params = [p for p in m.parameters()]

    def grads(fast: bool) -> list[torch.Tensor]:
        hidden = m.encode(vision, "vision").hidden
        stacked = torch.cat([m.shared(pos, "text"), m.shared(neg, "text")])
        attn = m.cross_map(stacked, hidden) if fast else m.cross(stacked, torch.cat([hidden, hidden]))[1]
        a_pos, a_neg = attn.chunk(2)
        loss = cla_loss(a_pos[:, 1:], a_neg[:, 1:], beta=1.0, top=2)[0].sum()
        return [g if g is not None else torch.zeros_like(p)
                for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
    for fast, full, (name, _) in zip(grads(True), grads(False), m.named_parameters()):
        assert torch.allclose(fast, full, atol=1e-6), name


@pytest.mark.slow  # compiling takes a minute or more on 2 cores
def test_compiled_training_step_matches_eager(tiny_config):
    """train.compile=true must change speed only: same loss and gradients on the first step."""
    from bacl.trainer import Trainer

    def first_step(flag: str) -> tuple[float, list[torch.Tensor]]:
        trainer = Trainer(tiny_config("method=bacl", f"train.compile={flag}"))
        trainer.build()
        loss, _ = trainer.backward(trainer.method.batch(torch.arange(12)))
        return loss.item(), [p.grad.clone() for p in trainer.params if p.grad is not None]
    eager_loss, eager = first_step("false")
    compiled_loss, compiled = first_step("true")
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
