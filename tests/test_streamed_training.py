"""Training streamed from a feature store: a kill mid-epoch resumes bitwise, and two ranks (gloo, DDP)
train on the same global batches with the same losses as one process."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_resume import Preempted, equal, interrupt_at

from bacl.config import load_config
from bacl.data.synthetic import SyntheticDataset
from bacl.distributed import free_port
from bacl.errors import ConfigError
from bacl.trainer import Trainer
from helpers import TINY

STREAMED = ["train.stream.enabled=true", "dataset.stream_shard_items=12", "train.stream.buffer_size=16"]


@pytest.fixture
def streamed(tmp_path):
    """A tiny streamed run config (6 shards of 12 items, 2 captions each); extra overrides win."""
    def make(*overrides: str):
        return load_config([*TINY, *STREAMED, f"dataset.store={tmp_path / 'store'}", f"output_dir={tmp_path / 'runs'}",
                            *overrides])
    return make


@pytest.mark.parametrize("method,kill_at,prefetch", [("bacl", 5, True), ("clip", 9, False), ("uniform_hn", 3, True),
                                                     ("bacl", 7, True)])  # 7: resumed from step 6, the end of epoch 1
def test_a_streamed_run_killed_mid_epoch_resumes_bitwise(streamed, tmp_path, monkeypatch, method, kill_at, prefetch):
    overrides = [f"method={method}", f"train.stream.prefetch={prefetch}"]
    straight = Trainer(streamed(*overrides, f"output_dir={tmp_path}/a"))
    expected = straight.run()
    cfg = streamed(*overrides, f"output_dir={tmp_path}/b")
    with monkeypatch.context() as m:
        interrupt_at(m, kill_at)
        with pytest.raises(Preempted):
            Trainer(cfg).run()
    resumed = Trainer(cfg).run()
    assert resumed["status"] == "ok" and resumed["resumed_from_step"] == kill_at - kill_at % 2
    assert resumed["metrics"] == expected["metrics"]  # bitwise equal floats
    assert (straight.run_dir / "metrics.jsonl").read_text() == (resumed_dir := Trainer(cfg).run_dir / "metrics.jsonl"
                                                                ).read_text(), resumed_dir
    a, b = (torch.load(t / "last.pt", weights_only=False) for t in (straight.run_dir, Trainer(cfg).run_dir))
    assert a["method"].keys() == b["method"].keys() and all(equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert a["stream"].keys() == {0}  # one reader per rank by default


def test_the_streamed_epoch_sees_every_item_once_with_one_caption_each(streamed):
    trainer = Trainer(streamed("method=clip"))
    trainer.build()
    for epoch in range(2):
        batches = list(trainer.batches(epoch, 0))
        items = torch.cat([b.items for b in batches])
        assert len(batches) == trainer.epoch_steps[epoch] == 6
        assert sorted(items.tolist()) == list(range(72))  # 72 items, batches of 12: nothing dropped
        captions = torch.cat([b.captions for b in batches])
        assert torch.equal(trainer.train_split.item_of(captions), items)
        whole = trainer.dataset.train
        assert torch.equal(torch.cat([b.text for b in batches]), whole.text[captions].half().float())


def run_ranks(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    """Train every step of the run by hand; rank 0 saves (per step: loss, the global batch's items), and the parameters."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(load_config(overrides))
        trainer.build()
        steps = []
        for epoch in range(len(trainer.epoch_steps)):
            for batch in trainer.batches(epoch, 0):
                items = torch.cat(trainer.world.gather_objects(batch.items.cpu())).tolist()
                steps.append((trainer.train_step(batch)["loss"], items))
        if rank == 0:
            torch.save({"steps": steps, "params": {n: p.detach().clone() for n, p in trainer.method.named_parameters()}},
                       out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("method", ["bacl", "clip"])
def test_two_streamed_ranks_train_like_one_process(tmp_path, method):
    overrides = [*TINY, *STREAMED, "train.stream.readers=2", f"method={method}", f"dataset.store={tmp_path / 'store'}",
                 f"output_dir={tmp_path / 'runs'}", "train.epochs=1"]
    cfg = load_config(overrides)
    SyntheticDataset(cfg.dataset).streamed_train(cfg.train.stream)  # write the store before the ranks race to
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    mp.spawn(run_ranks, args=(1, free_port(), overrides, one), nprocs=1, join=True)  # keeps RANK etc. out of pytest
    mp.spawn(run_ranks, args=(2, free_port(), overrides, two), nprocs=2, join=True)
    single, double = torch.load(one), torch.load(two)
    assert [items for _, items in double["steps"]] == [items for _, items in single["steps"]]
    assert len(single["steps"]) == 6
    np.testing.assert_allclose([loss for loss, _ in double["steps"]], [loss for loss, _ in single["steps"]], rtol=1e-5)
    # The key bias adds q·b to every logit of a query, which softmax ignores: its exact gradient is 0, and Adam
    # turns the rounding noise left in its place into ±lr steps that differ with the summation order. Skip it.
    kept = lambda name, p: p[p.shape[0] // 2:] if name.endswith("kv.bias") else p
    far = {name: float((kept(name, double["params"][name]) - kept(name, p)).abs().max())
           for name, p in single["params"].items()
           if not torch.allclose(kept(name, double["params"][name]), kept(name, p), rtol=1e-4, atol=1e-5)}
    assert not far, far


def test_stream_settings_that_cannot_work_are_config_errors(streamed):
    with pytest.raises(ConfigError, match="train.stream.readers"):
        load_config([*TINY, "train.stream.readers=-1"])
    trainer = Trainer(streamed("train.stream.readers=5"))  # 60 / 5 = 12 rows a reader, but 6 shards of 12
    with pytest.raises(ConfigError, match="divisible by train.stream.readers"):
        trainer.build()
    trainer = Trainer(streamed("train.stream.readers=4", "train.batch_size=72"))  # 18 a reader; some hold 1 shard of 12
    with pytest.raises(ConfigError, match="fewer than batch_size / readers"):
        trainer.build()


def test_a_bank_sharded_over_other_ranks_is_not_resumed_with_another_world_size(streamed):
    """last.pt says how many ranks wrote it; a bank shard cannot be resharded, so the error says how to resume."""
    trainer = Trainer(streamed("method=bacl"))
    trainer.build()
    state = trainer.state()
    state["world_size"] = 2
    with pytest.raises(ConfigError, match=r"written by 2 rank\(s\).*this run has 1: resume it with 2"):
        trainer.load(state)
    clip = Trainer(streamed("method=clip"))
    clip.build()
    state = clip.state()
    state["world_size"] = 2  # no bank: the readers' positions are every rank's, so another world size resumes
    clip.load(state)
    assert clip.step == 0
