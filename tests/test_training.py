"""Full tiny runs of every registered method, and what a run leaves on disk."""
import importlib.metadata
import json
import math

import pytest
import torch
import yaml

from bacl.registry import METHODS
from bacl.trainer import Trainer

RETRIEVAL_KEYS = [f"{d}_{m}" for d in ("i2t", "t2i") for m in
                  ("R@1", "R@5", "R@10", "MRR", "nDCG@10", "mean_rank", "median_rank")]


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_and_writes_its_run(method, tiny_config):
    cfg = tiny_config(f"method={method}")
    result = Trainer(cfg).run()
    run_dir = Trainer(cfg).run_dir
    assert result["status"] == "ok", result.get("error")
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["run_id"] == run_dir.name
    trainer = Trainer(cfg)
    trainer.build()
    maps = ["ael", "delta_a"] if trainer.method.trains_cross_attention else []  # AEL only where something trains them
    for key in RETRIEVAL_KEYS + ["margin", *maps]:
        assert math.isfinite(on_disk["metrics"][key]), key
    assert {"git_commit", "packages", "wall_time_s", "config"} <= on_disk.keys()
    assert on_disk["packages"]["torch"] == importlib.metadata.version("torch")
    assert on_disk["packages"].get("torch_cuda") == torch.version.cuda  # the CUDA torch was built for (None: CPU build)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["name"] == method
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    train = epochs[-1]["train"]
    assert math.isfinite(train["contrastive_loss"]) and "margin" in epochs[-1]["eval"]
    if method in ("bacl", "bns_only", "bns_no_curriculum"):
        assert {"alpha", "policy_loss", "boundary_score"} <= train.keys()
    if method in ("bacl", "cla_only", "bns_no_curriculum"):
        assert train["delta_a"] > 0 and train["local_loss"] > 0
    if method == "bns_no_curriculum":
        assert train["alpha"] == -0.5


def test_training_reduces_the_loss(tiny_config):
    cfg = tiny_config("method=clip", "train.epochs=8", "train.lr=3e-3")
    Trainer(cfg).run()
    lines = (Trainer(cfg).run_dir / "metrics.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0])["train"]["loss"], json.loads(lines[-1])["train"]["loss"]
    assert last < 0.7 * first


def test_finished_run_is_not_redone(tiny_config):
    cfg = tiny_config("method=clip")
    first = Trainer(cfg).run()
    again = Trainer(cfg).run()
    assert again == first  # read back, not retrained (timestamps would differ)


def test_non_finite_loss_fails_the_run_and_keeps_the_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config("method=bacl", "train.epochs=3")
    trainer = Trainer(cfg)
    real_forward = type(trainer).train_step

    def poisoned(self, batch):
        if self.step == 7:
            self.method.model.logit_scale.data.fill_(float("nan"))
        return real_forward(self, batch)
    monkeypatch.setattr(Trainer, "train_step", poisoned)
    result = trainer.run()
    assert result["status"] == "failed" and result["step"] == 7
    assert "non-finite loss at step 7" in result["error"]
    assert result["checkpoint_step"] == 6 and result["checkpoint"] == str(trainer.run_dir / "last.pt")
    ckpt = torch.load(trainer.run_dir / "last.pt", weights_only=False)
    assert ckpt["step"] == 6  # checkpoint_every=2: the last good one, not overwritten
    assert torch.isfinite(ckpt["method"]["model.logit_scale"])
    assert json.loads((trainer.run_dir / "result.json").read_text())["status"] == "failed"


def test_attention_localisation_against_hand_built_maps(monkeypatch):
    """A model whose ΔA peaks exactly at the differing attribute's tokens scores AEL = 1."""
    from omegaconf import OmegaConf

    from bacl.data.synthetic import SyntheticDataset, ambiguous_pairs
    from bacl.evaluate import attention_localisation

    data = SyntheticDataset(OmegaConf.structured(SyntheticDataset.Config(n_train=12, n_test=24, rho=0.1)))
    split = data.test
    lt, lv = split.text.shape[1], split.vision.shape[1]

    class Oracle:
        """Caption c attends with weight 1 to the vision token of its own item's fine value."""
        def encode(self, vision, modality):
            return type("E", (), {"hidden": vision})

        def shared(self, text, modality):
            return text

        def cross(self, text, hidden):
            b = text.shape[0]
            attn = torch.full((b, lt + 1, lv), 1.0 / lv)
            rows = torch.cdist(text.flatten(1), split.text.flatten(1)).argmin(1)
            items = split.text_item[rows]
            varied = (split.attributes[items][:, None] != split.attributes).sum(-1)
            for k, item in enumerate(items):
                a = torch.nonzero(split.attributes[item] != split.attributes[(varied[k] == 1).nonzero()[0, 0]])[0, 0]
                t, v = split.text_token_of_attribute[a], split.vision_token_of_attribute[a]
                attn[k, 1 + t] = 0
                attn[k, 1 + t, v] = float(split.attributes[item, a] + 1)
            return None, attn
    out = attention_localisation(Oracle(), split, max_pairs=64)
    assert out["ael"] == out["ael_text"] == out["ael_vision"] == 1.0
    assert out["ael_pairs"] == min(64, ambiguous_pairs(split)[0].numel())
    assert out["ael_chance"] == pytest.approx(1 / (lt * lv))


def test_ambiguous_accuracy_against_a_loop():
    from bacl.data.split import FeatureSplit
    from bacl.evaluate import ambiguous_accuracy

    # items 0,1 are siblings (differ in attribute 1), item 2 differs from both in two attributes
    split = FeatureSplit(vision=torch.zeros(3, 2, 1), text=torch.zeros(5, 2, 1),
                         text_item=torch.tensor([0, 1, 1, 0, 2]),
                         attributes=torch.tensor([[0, 0], [0, 1], [1, 2]]))
    scores = torch.tensor([[0.9, 0.5, 0.9, 0.2, 0.0],
                           [0.1, 0.3, 0.8, 0.7, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 1.0]])
    wins = []
    for a, n in ((0, 1), (1, 0)):
        for c in (i for i in range(5) if split.text_item[i] == a):
            for d in (i for i in range(5) if split.text_item[i] == n):
                diff = scores[a, c] - scores[a, d]
                wins.append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
    assert ambiguous_accuracy(lambda i, c: scores[i, c], split)["ambiguous_acc"] == pytest.approx(sum(wins) / len(wins))
    assert sorted(split.captions_padded().tolist()) == [[0, 3], [1, 2], [4, -1]]
