"""The text-embedding bank that scores pool candidates, sharded over ranks, and the negatives' text pass."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bacl.bank import EmbeddingBank
from bacl.distributed import World, free_port
from bacl.errors import ConfigError

ROWS, DIM, EVERY = 37, 6, 3  # odd rows: rank 0 of 2 owns one row more than rank 1
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class DenseBank:
    """The reference: every caption's row in one float32 tensor, written in order (a later duplicate wins)."""

    def __init__(self, rows: int, dim: int, refresh_every: int):
        self.table = torch.zeros(rows, dim)
        self.written = torch.full((rows,), -refresh_every)
        self.refresh_every, self.refreshed = refresh_every, -refresh_every

    def due(self, step: int) -> bool:
        return step - self.refreshed >= self.refresh_every

    def refresh(self, step: int, text_tokens, encode) -> None:
        stale = torch.nonzero(step - self.written >= self.refresh_every).squeeze(1)
        self.table[stale] = encode(text_tokens(stale))
        self.written[stale], self.refreshed = step, step

    def write(self, captions: torch.Tensor, embeddings: torch.Tensor, step: int) -> None:
        for caption, row in zip(captions.tolist(), embeddings):
            self.table[caption], self.written[caption] = row, step


def text_tokens(ids: torch.Tensor) -> torch.Tensor:
    """[n, 2, DIM] tokens that differ per caption: what a refresh encodes."""
    return (ids[:, None, None] * 0.37 + torch.arange(2 * DIM).view(1, 2, DIM)).sin()


def encode(tokens: torch.Tensor) -> torch.Tensor:
    """Row-wise and elementwise, so a row's embedding is bit-equal whichever chunk encodes it."""
    return tokens[:, 0] * 3.0 - tokens[:, 1]


def schedule(seed: int, world_size: int) -> list[dict]:
    """Steps of writes (duplicates included; ranks split them) and each rank's lookup request, the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 5), (9,), (0,), (2, 3, 2), (), (11,)]
    steps = []
    for step, shape in enumerate(shapes):
        n = int(torch.randint(0, 12, (), generator=gen))
        captions = torch.randint(0, ROWS, (n,), generator=gen)
        if n > 1:
            captions[-1] = captions[0]  # a caption written twice in one step
        requests = []
        for rank in range(world_size):  # ranks ask for different ids, shapes and amounts; ids repeat
            rank_shape = shape if rank == 0 else shape[::-1] + (2,)
            requests.append(torch.randint(0, ROWS, rank_shape, generator=gen))
        steps.append({"step": 2 * step, "captions": captions, "embeddings": torch.randn(n, DIM, generator=gen),
                      "requests": requests})
    return steps


def replay(bank, steps: list[dict], rank: int, world_size: int = 1) -> list[torch.Tensor]:
    """The caller's order each step: refresh when due, look the candidates up, write the step's rows
    (a sharded bank: this rank's contiguous part of them; the dense reference: all of them, in order)."""
    looked = []
    for s in steps:
        if bank.due(s["step"]):
            bank.refresh(s["step"], text_tokens, encode)
        looked.append(bank.table[s["requests"][rank]] if isinstance(bank, DenseBank)
                      else bank.lookup(s["requests"][rank]))
        part = (slice(None) if isinstance(bank, DenseBank)
                else torch.tensor_split(torch.arange(len(s["captions"])), world_size)[rank])
        bank.write(s["captions"][part], s["embeddings"][part], s["step"])
    return looked


# ---- one process --------------------------------------------------------------------------------

def test_bank_refreshes_stale_rows_only_and_keeps_written_ones():
    """Against a hand-run schedule: rows written by training are re-encoded only once stale."""
    asked: list[list[int]] = []

    def tokens(ids: torch.Tensor) -> torch.Tensor:  # token value = caption id
        asked.append(ids.tolist())
        return ids.float()[:, None, None].expand(len(ids), 2, 3)

    def embed(t: torch.Tensor) -> torch.Tensor:  # embedding = 10 * caption id + call count
        return t[:, 0, :2] * 10 + len(asked)

    bank = EmbeddingBank(rows=10, dim=2, refresh_every=3)
    assert bank.due(0) and not bank.due(-1)
    bank.refresh(0, tokens, embed)
    assert asked == [list(range(10))] and torch.equal(bank.lookup(torch.tensor([4])), torch.tensor([[41.0, 41.0]]))
    assert not bank.due(2) and bank.due(3)
    bank.write(torch.tensor([1, 2]), torch.full((2, 2), -1.0), step=2)
    bank.refresh(3, tokens, embed)  # rows 1 and 2 were written at step 2: fresh
    assert asked[1] == [0, 3, 4, 5, 6, 7, 8, 9]
    assert torch.equal(bank.lookup(torch.tensor([[1], [3]])), torch.tensor([[[-1.0, -1.0]], [[32.0, 32.0]]]))
    assert bank.written.tolist() == [3, 2, 2, 3, 3, 3, 3, 3, 3, 3] and bank.refreshed == 3


def test_refresh_encodes_in_chunks(monkeypatch):
    monkeypatch.setattr("bacl.bank.REFRESH_CHUNK", 4)
    sizes: list[int] = []
    bank = EmbeddingBank(rows=10, dim=DIM, refresh_every=EVERY)
    bank.refresh(0, lambda ids: sizes.append(len(ids)) or text_tokens(ids), encode)
    assert sizes == [4, 4, 2]
    assert torch.equal(bank.lookup(torch.arange(10)), encode(text_tokens(torch.arange(10))))


def test_one_process_equals_the_dense_reference():
    steps = schedule(seed=0, world_size=1)
    looked = replay(EmbeddingBank(ROWS, DIM, EVERY), steps, rank=0)
    expected = replay(DenseBank(ROWS, DIM, EVERY), steps, rank=0)
    assert [t.shape for t in looked] == [t.shape for t in expected]
    assert all(torch.equal(a, b) for a, b in zip(looked, expected))
    assert any(t.abs().sum() > 0 for t in looked)  # not vacuously zeros


def test_a_caption_written_twice_in_a_step_keeps_the_last_row():
    bank = EmbeddingBank(rows=4, dim=2, refresh_every=EVERY)
    bank.write(torch.tensor([3, 1, 3, 3]), torch.tensor([[1.0, 1], [2, 2], [3, 3], [4, 4]]), step=0)
    assert torch.equal(bank.lookup(torch.tensor([3, 1])), torch.tensor([[4.0, 4], [2, 2]]))


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_each_rank_stores_its_share_of_the_rows_and_only_those(size):
    """Memory per rank is ceil(rows / size) rows at most, and the shards cover every caption once."""
    banks = [EmbeddingBank(ROWS, DIM, EVERY, World(rank, size), torch.float16) for rank in range(size)]
    assert max(b.shard.numel() for b in banks) == math.ceil(ROWS / size) * DIM
    assert sum(b.shard.numel() for b in banks) == ROWS * DIM
    for b in banks:  # a rank encodes only the captions it owns: embedding = caption id
        b.refresh(5, lambda ids: ids.float()[:, None, None].expand(len(ids), 1, DIM), lambda t: t[:, 0])
    for rank, b in enumerate(banks):
        owned = torch.arange(rank, ROWS, size)
        assert torch.equal(b.shard[:, 0], owned.half()) and (b.written == 5).all()


def test_float16_storage_is_within_its_rounding_of_float32():
    ref = torch.randn(ROWS, DIM) * 10
    for dtype, eps in [(torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)]:
        bank = EmbeddingBank(ROWS, DIM, EVERY, dtype=dtype)
        bank.write(torch.arange(ROWS), ref, step=0)
        assert bank.shard.dtype == dtype and bank.shard.element_size() == 2
        out = bank.lookup(torch.arange(ROWS).view(ROWS, 1))[:, 0]
        assert out.dtype == torch.float32
        assert torch.allclose(out, ref, rtol=eps, atol=0) and not torch.equal(out, ref)
        assert torch.equal(out, ref.to(dtype).float())  # exactly the storage dtype's rounding


def test_moving_the_module_leaves_the_bank_on_the_host_in_its_dtype():
    module = nn.Module()
    module.head = nn.Linear(2, DIM)
    module.bank = EmbeddingBank(ROWS, DIM, EVERY, dtype=torch.float16)
    module.bank.write(torch.tensor([5]), torch.ones(1, DIM), step=0)
    module.to(torch.float64)
    assert module.head.weight.dtype == torch.float64
    assert module.bank.shard.dtype == torch.float16 and module.bank.shard.device.type == "cpu"
    module.to("meta")
    assert module.head.weight.is_meta and module.bank.shard.device.type == "cpu"
    assert torch.equal(module.bank.lookup(torch.tensor([5])), torch.ones(1, DIM))
    assert module.bank.lookup(torch.tensor([5])).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_storage_stays_on_the_host_and_lookups_come_to_the_device():
    module = nn.Module()
    module.head = nn.Linear(2, DIM)
    module.bank = EmbeddingBank(ROWS, DIM, EVERY, dtype=torch.float16)
    module.to("cuda")
    module.bank.write(torch.tensor([5], device="cuda"), torch.ones(1, DIM, device="cuda"), step=0)
    module.bank.refresh(EVERY, lambda ids: text_tokens(ids).cuda(), encode)
    out = module.bank.lookup(torch.tensor([[5, 6]], device="cuda"))
    assert module.bank.shard.device.type == "cpu" and out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.equal(out.cpu(), encode(text_tokens(torch.tensor([[5, 6]]).flatten())).half().float().view(1, 2, DIM))


def test_each_rank_state_round_trips_and_another_layout_is_refused():
    module = nn.Module()
    module.bank = EmbeddingBank(ROWS, DIM, EVERY, World(1, 2), torch.float16)
    module.bank.refresh(0, text_tokens, encode)
    module.bank.shard[::2], module.bank.written[::2] = -1.0, 2  # some rows written later, by hand: no collective
    state = module.state_dict()
    assert set(state) == {"bank._extra_state"}
    other = nn.Module()
    other.bank = EmbeddingBank(ROWS, DIM, EVERY, World(1, 2), torch.float16)
    other.load_state_dict(state)
    assert torch.equal(other.bank.shard, module.bank.shard) and torch.equal(other.bank.written, module.bank.written)
    assert not other.bank.due(2) and other.bank.due(3)
    for world, rows in [(World(0, 1), ROWS), (World(1, 3), ROWS), (World(0, 2), ROWS), (World(1, 2), ROWS + 2)]:
        wrong = nn.Module()
        wrong.bank = EmbeddingBank(rows, DIM, EVERY, world)
        with pytest.raises(ConfigError, match=r"shard of 37 captions over 2 ranks.*resume with 2 ranks"):
            wrong.load_state_dict(state)


# ---- two processes ----------------------------------------------------------------------------

def worker(rank: int, port: int, out: str) -> None:
    """Replay the schedule with a 2-rank bank of each dtype, counting the rows each all_to_all sends."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    sent: list[tuple[torch.dtype, int]] = []
    all_to_all = dist.all_to_all_single

    def counting(output, input, *args, **kwargs):
        sent.append((input.dtype, len(input)))
        return all_to_all(output, input, *args, **kwargs)

    dist.all_to_all_single = counting
    try:
        result = {}
        for dtype in DTYPES:
            bank = EmbeddingBank(ROWS, DIM, EVERY, World(rank, 2), dtype)
            sent.clear()
            result[dtype] = {"looked": replay(bank, schedule(seed=1, world_size=2), rank, world_size=2),
                             "numel": bank.shard.numel(), "sent": list(sent)}
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.all_to_all_single = all_to_all
        dist.destroy_process_group()


def test_two_ranks_equal_one_dense_bank_and_send_only_the_requested_rows(tmp_path):
    out = str(tmp_path / "bank")
    mp.spawn(worker, args=(free_port(), out), nprocs=2, join=True)
    steps = schedule(seed=1, world_size=2)
    results = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for rank, result in enumerate(results):
        expected = replay(DenseBank(ROWS, DIM, EVERY), steps, rank)
        for dtype in DTYPES:
            looked = result[dtype]["looked"]
            assert [t.shape for t in looked] == [t.shape for t in expected]
            assert all(torch.equal(a, b.to(dtype).float()) for a, b in zip(looked, expected)), (rank, dtype)
            assert result[dtype]["numel"] == len(range(rank, ROWS, 2)) * DIM
    assert results[0][torch.float32]["numel"] == math.ceil(ROWS / 2) * DIM
    # rows a rank sends as bytes: each distinct id any rank asked it for, once, and each row it wrote, to its owner
    requested = {rank: [s["requests"][rank].flatten() for s in steps] for rank in range(2)}
    for owner in range(2):
        distinct = sum(len(r[r % 2 == owner].unique()) for rank in range(2) for r in requested[rank])
        asked = sum(int((r % 2 == owner).sum()) for rank in range(2) for r in requested[rank])
        written = sum(len(torch.tensor_split(torch.arange(len(s["captions"])), 2)[owner]) for s in steps)
        for dtype in DTYPES:
            sent_rows = sum(n for t, n in results[owner][dtype]["sent"] if t == torch.uint8)
            assert sent_rows == distinct + written and distinct < asked, (owner, dtype, sent_rows, distinct, asked)


# ---- the method's use of the bank ---------------------------------------------------------------

def test_a_step_writes_the_embeddings_it_computed_into_the_bank(tiny_method):
    method = tiny_method("method=hardest", "method.num_negatives=2")
    method(method.batch(torch.arange(12)), step=0, progress=0.0)  # fills the bank
    for p in method.model.parameters():  # a different model: rows it wrote must differ from the others
        p.data.add_(0.05 * torch.randn_like(p))
    batch = method.batch(torch.arange(12, 24))
    with torch.no_grad():
        expected = method.model.encode(batch.text, "text").embedding
    everything = torch.arange(method.bank.rows)
    old = method.bank.lookup(everything)
    method(batch, step=1, progress=0.1)
    assert torch.allclose(method.bank.lookup(batch.captions), expected, atol=1e-6)
    assert (method.bank.written[batch.captions] == 1).all()  # one rank: shard row = caption id
    untouched = method.bank.written == 0
    assert untouched.sum() > 0 and torch.equal(method.bank.lookup(everything)[untouched], old[untouched])


def test_only_methods_that_score_candidates_keep_a_bank(tiny_method):
    assert tiny_method("method=clip").bank is None and tiny_method("method=uniform_hn").bank is None
    assert tiny_method("method=hardest").bank is not None and tiny_method("method=bacl").bank is not None
    assert "bank._extra_state" in tiny_method("method=bacl").state_dict()


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
