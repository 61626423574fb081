"""The text-embedding bank that scores pool candidates, and the negatives' text pass."""
import torch

from bacl.bank import EmbeddingBank


def test_bank_refreshes_stale_rows_only_and_keeps_written_ones():
    """Against a hand-run schedule: rows written by training are re-encoded only once stale."""
    texts = torch.arange(10.0)[:, None, None].expand(10, 2, 3)
    calls: list[int] = []

    def encode(t: torch.Tensor) -> torch.Tensor:  # embedding = 10 * token value + call count
        calls.append(len(t))
        return t[:, 0, :2] * 10 + len(calls)

    bank = EmbeddingBank(rows=10, dim=2, refresh_every=3)
    assert bank.due(0) and not bank.due(-1)
    bank.refresh(0, texts, encode)
    assert calls == [10] and torch.equal(bank.lookup(torch.tensor([4])), torch.tensor([[41.0, 41.0]]))
    assert not bank.due(2) and bank.due(3)
    bank.write(torch.tensor([1, 2]), torch.full((2, 2), -1.0), step=2)
    bank.refresh(3, texts, encode)  # rows 1 and 2 were written at step 2: fresh
    assert calls == [10, 8]
    assert torch.equal(bank.embeddings[1], torch.tensor([-1.0, -1.0]))
    assert torch.equal(bank.embeddings[3], torch.tensor([32.0, 32.0]))
    assert bank.written.tolist() == [3, 2, 2, 3, 3, 3, 3, 3, 3, 3] and int(bank.refreshed) == 3


def test_bank_state_round_trips_through_state_dict():
    bank = EmbeddingBank(rows=4, dim=3, refresh_every=2)
    bank.write(torch.tensor([0, 3]), torch.ones(2, 3), step=5)
    bank.refreshed.fill_(4)
    other = EmbeddingBank(rows=4, dim=3, refresh_every=2)
    other.load_state_dict(bank.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(bank.state_dict().values(), other.state_dict().values()))
    assert not other.due(5) and other.due(6)


def test_a_step_writes_the_embeddings_it_computed_into_the_bank(tiny_method):
    method = tiny_method("method=hardest", "method.num_negatives=2")
    method(method.batch(torch.arange(12)), step=0, progress=0.0)  # fills the bank
    for p in method.model.parameters():  # a different model: rows it wrote must differ from the others
        p.data.add_(0.05 * torch.randn_like(p))
    batch = method.batch(torch.arange(12, 24))
    with torch.no_grad():
        expected = method.model.encode(batch.text, "text").embedding
    old = method.bank.embeddings.clone()
    method(batch, step=1, progress=0.1)
    assert torch.allclose(method.bank.embeddings[batch.captions], expected, atol=1e-6)
    assert (method.bank.written[batch.captions] == 1).all()
    untouched = method.bank.written == 0
    assert untouched.sum() > 0 and torch.equal(method.bank.embeddings[untouched], old[untouched])


def test_only_methods_that_score_candidates_keep_a_bank(tiny_method):
    assert tiny_method("method=clip").bank is None and tiny_method("method=uniform_hn").bank is None
    assert tiny_method("method=hardest").bank is not None and tiny_method("method=bacl").bank is not None
    assert "bank.embeddings" in tiny_method("method=bacl").state_dict()


def test_negative_grad_changes_only_the_text_side_gradients(tiny_method):
    """Same forward either way; without it the negatives' text pass sends no gradient."""
    def step(flag: str) -> tuple[float, dict[str, torch.Tensor]]:
        method = tiny_method("method=uniform_hn", "method.num_negatives=3", f"method.negative_grad={flag}")
        out = method(method.batch(torch.arange(12)), step=0, progress=0.0)
        out["contrastive_loss"].backward()
        return out["contrastive_loss"].item(), {n: p.grad.clone() for n, p in method.model.named_parameters()
                                                 if p.grad is not None}
    loss_with, with_grad = step("true")
    loss_without, without = step("false")
    assert loss_with == loss_without
    assert torch.equal(with_grad["proj.vision.weight"], without["proj.vision.weight"])
    assert not torch.allclose(with_grad["proj.text.weight"], without["proj.text.weight"])
