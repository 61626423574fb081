"""Two CPU processes (gloo) see the same loss and gradients as one process on the global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bacl.config import load_config
from bacl.distributed import free_port
from bacl.trainer import Trainer
from helpers import TINY

METHODS = ["bacl", "hcl", "variance_aware"]


def first_step(overrides: list[str]) -> tuple[float, dict[str, torch.Tensor]]:
    trainer = Trainer(load_config(overrides))
    trainer.build()
    batch = trainer.method.batch(trainer._epoch_order(0)[: trainer.batch_size])
    loss, _ = trainer.backward(batch)
    grads = {n: p.grad.clone() for n, p in trainer.method.named_parameters() if p.grad is not None}
    return float(trainer.world.mean(loss)), grads


def worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    try:
        result = first_step(overrides)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_match_one_process(method, tmp_path):
    overrides = [*TINY, f"method={method}", f"output_dir={tmp_path}", "method.num_negatives=2"
                 if method in ("bacl", "uniform_hn") else "seed=0"]
    single_loss, single_grads = first_step(overrides)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(worker, args=(free_port(), overrides, out), nprocs=2, join=True)
    loss, grads = torch.load(out)
    assert loss == pytest.approx(single_loss, rel=1e-5)
    assert grads.keys() == single_grads.keys()
    for name, g in single_grads.items():
        assert torch.allclose(grads[name], g, rtol=1e-4, atol=1e-6), name
