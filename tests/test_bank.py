"""The text-embedding bank that scores pool candidates, and the negatives' text pass."""
import torch

from bacl.trainer import Trainer


def built(tiny_config, *overrides: str) -> Trainer:
    trainer = Trainer(tiny_config(*overrides))
    trainer.build()
    return trainer


def test_a_step_writes_the_embeddings_it_computed_into_the_bank(tiny_config):
    trainer = built(tiny_config, "method=hardest", "method.num_negatives=2")
    method = trainer.method
    method(trainer._batch(torch.arange(12)), step=0, progress=0.0)  # fills the bank
    for p in method.model.parameters():  # a different model: rows it wrote must differ from the others
        p.data.add_(0.05 * torch.randn_like(p))
    batch = trainer._batch(torch.arange(12, 24))
    with torch.no_grad():
        expected = method.model.encode(batch.text, "text").embedding
    old = method.bank.clone()
    method(batch, step=1, progress=0.1)
    assert torch.allclose(method.bank[batch.captions], expected, atol=1e-6)
    assert (method.bank_written[batch.captions] == 1).all()
    untouched = (method.bank_written == 0)
    assert untouched.sum() > 0 and torch.equal(method.bank[untouched], old[untouched])


def test_refresh_re_encodes_only_rows_training_has_not_rewritten(tiny_config):
    trainer = built(tiny_config, "method=hardest", "method.bank_refresh_steps=3")
    method = trainer.method
    batch = trainer._batch(torch.arange(12))
    method(batch, step=0, progress=0.0)
    for p in method.model.parameters():  # a different model: re-encoded rows must change
        p.data.add_(0.05 * torch.randn_like(p))
    method.bank_written[batch.captions] = 2  # as if training rewrote them at step 2
    old = method.bank.clone()
    method._refresh_bank(step=4)
    fresh = torch.zeros(trainer.train_split.n_texts, dtype=torch.bool)
    fresh[batch.captions] = True
    assert torch.equal(method.bank[fresh], old[fresh])
    with torch.no_grad():
        expected = method.model.encode(trainer.train_split.text[~fresh].float(), "text").embedding
    assert torch.allclose(method.bank[~fresh], expected, atol=1e-6)
    assert (method.bank_written[~fresh] == 4).all()


def test_negative_grad_changes_only_the_text_side_gradients(tiny_config):
    """Same forward either way; without it the negatives' text pass sends no gradient."""
    def step(flag: str) -> tuple[float, dict[str, torch.Tensor]]:
        trainer = built(tiny_config, "method=uniform_hn", "method.num_negatives=3", f"method.negative_grad={flag}")
        out = trainer.method(trainer._batch(torch.arange(12)), step=0, progress=0.0)
        out["contrastive_loss"].backward()
        model = trainer.method.model
        return out["contrastive_loss"].item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                 if p.grad is not None}
    loss_with, with_grad = step("true")
    loss_without, without = step("false")
    assert loss_with == loss_without
    assert torch.equal(with_grad["proj.vision.weight"], without["proj.vision.weight"])
    assert not torch.allclose(with_grad["proj.text.weight"], without["proj.text.weight"])
