"""AdamW decays matrices and embeddings only, as open_clip's training code does."""
import torch

from bacl.model import AlignmentModel
from bacl.trainer import decay_groups


def test_a_zero_gradient_step_shrinks_exactly_the_decayed_parameters():
    torch.manual_seed(0)
    model = AlignmentModel(4, 4, 3, 3, width=16, layers=2, heads=2)
    lr, wd = 0.1, 0.5
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(decay_groups(model, wd), lr=lr)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decayed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for n, p in model.named_parameters():  # AdamW with a zero gradient: p <- p (1 - lr wd) or unchanged
        expected = before[n] * (1 - lr * wd) if n in decayed else before[n]
        torch.testing.assert_close(p.detach(), expected)
    # open_clip exempts gains, biases, norms, the temperature and the class embedding; everything else decays
    assert decayed == {n for n, p in model.named_parameters()
                       if p.ndim >= 2 and not n.startswith("cls.") and "norm" not in n}
    assert "logit_scale" not in decayed and "pos.text" in decayed and "match_head.weight" in decayed
