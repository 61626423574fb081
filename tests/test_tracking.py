"""Per-step scalars (TensorBoard, W&B) and the git provenance of result.json."""
import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bacl.errors import ConfigError
from bacl.results import git_state
from bacl.tracking import TB_DIR
from bacl.trainer import Trainer

STEPS = [2, 4, 6, 8, 10, 12]  # TINY: 6 steps per epoch, 2 epochs; log.every_steps=2


class Preempted(Exception):
    pass


def scalars(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"scalars": 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


def test_a_run_writes_per_step_scalars_every_log_every_steps(tiny_config):
    trainer = Trainer(tiny_config("method=bacl", "log.every_steps=2"))
    assert trainer.run()["status"] == "ok"
    events = scalars(trainer.run_dir)
    tags = set(events.Tags()["scalars"])
    per_step = {"train/loss", "train/contrastive_loss", "train/policy_loss", "train/local_loss", "train/alpha",
                "train/temperature", "train/lr", "train/samples_per_s"}
    assert per_step <= tags, per_step - tags
    for tag in per_step:
        assert steps(events, tag) == STEPS, tag
    assert steps(events, "eval/i2t_R@1") == [6, 12]  # one point per evaluated epoch
    assert all(e.value > 0 for e in events.Scalars("train/samples_per_s"))
    lr = [e.value for e in events.Scalars("train/lr")]
    assert lr[-1] < max(lr)  # the cosine decay, at the steps it was written


def test_log_tensorboard_false_writes_no_event_file(tiny_config):
    trainer = Trainer(tiny_config("method=clip", "log.tensorboard=false"))
    assert trainer.run()["status"] == "ok"
    assert not (trainer.run_dir / TB_DIR).exists()


def test_a_resumed_run_continues_the_series_without_duplicates(tiny_config, monkeypatch):
    cfg = tiny_config("method=clip", "log.every_steps=2")
    real = Trainer.train_step

    def killed_at_7(self, batch):  # the last checkpoint is step 6; steps 7.. are trained again
        if self.step == 7:
            raise Preempted
        return real(self, batch)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", killed_at_7)
        with pytest.raises(Preempted):
            Trainer(cfg).run()
    trainer = Trainer(cfg)
    assert trainer.run()["status"] == "ok"
    assert len(list((trainer.run_dir / TB_DIR).glob("events.out.tfevents.*"))) == 2
    events = scalars(trainer.run_dir)
    assert steps(events, "train/loss") == STEPS and steps(events, "train/lr") == STEPS


def test_a_missing_tracker_package_stops_the_run_before_training_naming_the_install(tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    trainer = Trainer(tiny_config("method=clip"))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        trainer.run()
    assert not trainer.run_dir.exists()
    with pytest.raises(ConfigError, match="pip install wandb"):
        Trainer(tiny_config("method=clip", "log.tensorboard=false", "log.wandb=true")).run()
    assert Trainer(tiny_config("method=clip", "log.tensorboard=false")).run()["status"] == "ok"


def test_result_json_records_the_commit_and_whether_the_tree_was_dirty(tiny_config):
    trainer = Trainer(tiny_config("method=clip", "log.tensorboard=false"))
    trainer.run()
    result = json.loads((trainer.run_dir / "result.json").read_text())
    assert result["git"] == git_state()  # this checkout: a dict, or None where the tests run outside git
    if result["git"] is not None:
        assert isinstance(result["git"]["dirty"], bool) and result["git_commit"] == result["git"]["commit"]


def test_git_state_of_a_clean_a_dirty_and_no_checkout(tmp_path):
    repo, source = tmp_path / "repo", tmp_path / "repo" / "code.py"
    repo.mkdir()
    source.write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo, check=True,
                                    capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    assert git_state(source) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    source.write_text("x = 2\n")
    assert git_state(source)["dirty"] is True
    outside = tmp_path / "elsewhere" / "code.py"
    outside.parent.mkdir()
    outside.write_text("")
    assert git_state(outside) is None
    untracked = repo / "copy.py"  # an installed copy inside some other checkout is not that checkout's code
    untracked.write_text("")
    assert git_state(untracked) is None
