"""An interrupted run, resumed from its checkpoint, ends exactly where an uninterrupted one does."""
import json

import pytest
import torch

from bacl.registry import METHODS
from bacl.trainer import Trainer


class Preempted(Exception):
    pass


def equal(a, b) -> bool:
    """Bitwise equality of tensors, or of (nested) dicts of them and plain values (a module's extra state)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    return a == b


def interrupt_at(monkeypatch, step: int) -> None:
    real = Trainer.train_step

    def flaky(self, batch):
        if self.step == step:
            raise Preempted(f"killed at step {step}")
        return real(self, batch)
    monkeypatch.setattr(Trainer, "train_step", flaky)


@pytest.mark.parametrize("method,kill_at", [(name, (5, 6, 9)[i % 3]) for i, name in enumerate(METHODS.names())])
def test_resume_is_bitwise_on_cpu(tiny_config, tmp_path, monkeypatch, method, kill_at):
    # checkpoint_every=2, 6 steps per epoch, 2 epochs: killed mid-epoch, resumed from step kill_at - kill_at % 2
    straight = Trainer(tiny_config(f"method={method}", f"output_dir={tmp_path}/a"))
    expected = straight.run()

    cfg = tiny_config(f"method={method}", f"output_dir={tmp_path}/b")
    with monkeypatch.context() as m:
        interrupt_at(m, kill_at)
        with pytest.raises(Preempted):
            Trainer(cfg).run()
    first = Trainer(cfg)
    assert json.loads((first.run_dir / "result.json").read_text())["status"] == "failed"
    resumed = Trainer(cfg).run()

    assert resumed["status"] == "ok"
    assert resumed["metrics"] == expected["metrics"]  # bitwise equal floats
    log = lambda t: (t.run_dir / "metrics.jsonl").read_text()
    assert log(first) == log(straight)  # no duplicated or partial epochs
    a = torch.load(straight.run_dir / "last.pt", weights_only=False)["method"]
    b = torch.load(first.run_dir / "last.pt", weights_only=False)["method"]
    assert a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


def test_the_checkpoint_holds_the_method_state_and_nothing_method_specific(tiny_config):
    """The method owns its state (bank, generators, EMA buffers): the trainer saves one state dict of it."""
    trainer = Trainer(tiny_config("method=bacl"))
    trainer.build()
    state = trainer.state()
    # records: the epoch records committed with the checkpoint (bacl/trainer.py's docstring), method-neutral
    assert set(state) == {"step", "method", "optimizer", "scheduler", "torch_rng", "epoch_sums", "records", "world_size"}
    assert {"bank._extra_state", "rng._extra_state"} <= set(state["method"])
