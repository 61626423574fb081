"""The CLA attention example a training run leaves for the report's heat map."""
import subprocess
import sys

import torch

from bacl.attention_example import ATTENTION_EXAMPLE, read_attention_example, write_attention_example
from bacl.model import AlignmentModel
from bacl.trainer import Trainer
from helpers import REPO


def _model_from_checkpoint(trainer: Trainer) -> AlignmentModel:
    """A fresh model with the run's final weights from `last.pt` (not the trainer's own module)."""
    cfg, split = trainer.cfg, trainer.test_split
    model = AlignmentModel(
        vision_dim=split.vision.shape[-1], text_dim=split.text.shape[-1],
        vision_tokens=split.vision.shape[1], text_tokens=split.text.shape[1],
        width=cfg.model.width, layers=cfg.model.layers, heads=cfg.model.heads, mlp_ratio=cfg.model.mlp_ratio,
        dropout=cfg.model.dropout, cross_layers=cfg.model.cross_layers,
    )
    method_state = torch.load(trainer.run_dir / "last.pt", weights_only=False)["method"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in method_state.items() if k.startswith("model.")})
    return model.eval()


@torch.no_grad()
def _reference(model: AlignmentModel, split) -> tuple[int, int, torch.Tensor, torch.Tensor, list]:
    """Anchor, negative item and A⁺, A⁻ recomputed item by item from the model's forward paths."""
    items = model.encode(split.vision.float(), "vision").embedding
    texts = model.encode(split.text.float(), "text").embedding
    hardest = []  # per item: the caption of another item it scores highest
    for i in range(split.n_items):
        others = (split.text_item != i).nonzero().flatten()
        hardest.append(int(others[(texts[others] @ items[i]).argmax()]))
    anchor = next(i for i in range(split.n_items)
                  if int((split.attributes[i] != split.attributes[split.text_item[hardest[i]]]).sum()) == 1)
    negative = int(split.text_item[hardest[anchor]])
    own = int((split.text_item == anchor).nonzero()[0])  # the anchor's first caption
    hidden = model.encode(split.vision[[anchor]].float(), "vision").hidden
    attn_pos, attn_neg = (model.cross(model.shared(split.text[[c]].float(), "text"), hidden)[1][0, 1:]
                          for c in (own, hardest[anchor]))
    differing = [(int(split.text_token_of_attribute[a]), int(split.vision_token_of_attribute[a]))
                 for a in range(split.attributes.shape[1])
                 if split.attributes[anchor, a] != split.attributes[negative, a]]
    return anchor, negative, attn_pos, attn_neg, differing


def test_a_trained_run_leaves_its_attention_example(tiny_config, tmp_path):
    trainer = Trainer(tiny_config("method=bacl"))
    assert trainer.run()["status"] == "ok"
    path = trainer.run_dir / ATTENTION_EXAMPLE
    assert path.exists()
    pair = read_attention_example(path)

    split = trainer.test_split
    anchor, negative, attn_pos, attn_neg, differing = _reference(_model_from_checkpoint(trainer), split)
    assert (pair.anchor, pair.negative, pair.differing) == (anchor, negative, differing) and len(differing) == 1
    lt, lv = split.text.shape[1], split.vision.shape[1]
    assert pair.attn_pos.shape == pair.attn_neg.shape == (lt, lv)
    torch.testing.assert_close(pair.attn_pos, attn_pos, rtol=0, atol=1e-6)
    torch.testing.assert_close(pair.attn_neg, attn_neg, rtol=0, atol=1e-6)
    torch.testing.assert_close(pair.delta, (attn_pos - attn_neg).abs(), rtol=0, atol=2e-6)
    torch.testing.assert_close(pair.attn_pos.sum(dim=1), torch.ones(lt))  # rows are softmax distributions
    assert len(pair.text_labels) == lt and len(pair.vision_labels) == lv
    assert pair.text_labels[differing[0][0]].startswith("a") and "d" in pair.text_labels

    # writing it draws no random numbers and leaves the model's mode as it was
    model = trainer.method.model.train()
    rng = torch.get_rng_state()
    again = write_attention_example(model, split, tmp_path / ATTENTION_EXAMPLE)
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert torch.equal(again.attn_pos, pair.attn_pos)
    assert torch.equal(read_attention_example(tmp_path / ATTENTION_EXAMPLE).attn_neg, pair.attn_neg)


def test_analysis_does_not_import_training():
    """The report reads run files only: importing it loads neither the trainer nor the model."""
    code = ("import sys, analysis.report, analysis.figures, analysis.heatmap; "
            "loaded = [m for m in ('bacl.trainer', 'bacl.model', 'bacl.method') if m in sys.modules]; "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
