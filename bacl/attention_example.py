"""One CLA attention example per run, written by training for the report to draw.

The report's heat map shows where a trained model's cross-attention differs between a
positive and its hardest negative, ΔA = |A⁺ − A⁻| (bacl/cla.py). Computing it needs the
model and the test split, which only the training run has at hand, so the run's final
evaluation writes the two maps to `attention_example.json` in the run directory and
`analysis/` only reads that file (it never rebuilds a model from a checkpoint).

The anchor is a test item, the negative the caption of its most similar other item; on
synthetic data we prefer an anchor whose negative differs in one attribute (a sibling) and
record that attribute's tokens. Nothing here draws random numbers, so writing the example
leaves a run's training bitwise unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bacl.results import write_json

if TYPE_CHECKING:  # the reader (analysis/) needs neither
    from bacl.data.split import FeatureSplit
    from bacl.model import AlignmentModel

ATTENTION_EXAMPLE = "attention_example.json"
CHUNK = 1024  # items or captions encoded at once while looking for the hardest negatives


@dataclass
class AttentionPair:
    anchor: int  # test item
    negative: int  # test item whose caption is the hardest negative
    attn_pos: torch.Tensor  # [Lt, Lv] anchor's own caption attending to the anchor
    attn_neg: torch.Tensor  # [Lt, Lv] the negative caption attending to the anchor
    text_labels: list[str]  # per caption token
    vision_labels: list[str]  # per vision token
    differing: list[tuple[int, int]]  # (caption token, vision token) of the attributes that differ

    @property
    def delta(self) -> torch.Tensor:
        return (self.attn_pos - self.attn_neg).abs()


def _labels(split: FeatureSplit, modality: str, n_tokens: int) -> list[str]:
    token_of = getattr(split, f"{modality}_token_of_attribute")
    labels = ["d"] * n_tokens  # a token that carries no attribute: a distractor
    if token_of is None:
        return [str(i) for i in range(n_tokens)]
    for attribute, token in enumerate(token_of.tolist()):
        labels[token] = f"a{attribute}"
    return labels


@torch.no_grad()
def attention_pair(model: AlignmentModel, split: FeatureSplit) -> AttentionPair:
    """A⁺ and A⁻ of one anchor under `model` as it is (the caller sets eval mode); maps on CPU."""
    items = torch.cat([model.encode(split.vision[i:i + CHUNK].float(), "vision").embedding
                       for i in range(0, split.n_items, CHUNK)])
    texts = torch.cat([model.encode(split.text[i:i + CHUNK].float(), "text").embedding
                       for i in range(0, split.n_texts, CHUNK)])
    own_item = split.text_item[None, :] == torch.arange(split.n_items, device=split.text_item.device)[:, None]
    scores = (items @ texts.T).masked_fill(own_item, float("-inf"))
    hardest = scores.argmax(dim=1)  # per item, the best-scoring caption of another item
    negative_item = split.text_item[hardest]
    anchor = 0
    if split.attributes is not None:
        differs = (split.attributes != split.attributes[negative_item]).sum(dim=1)
        siblings = (differs == 1).nonzero().flatten()
        anchor = int(siblings[0]) if siblings.numel() else 0
    own = int(split.captions_padded()[anchor, 0])
    hidden = model.encode(split.vision[[anchor]].float(), "vision").hidden
    maps = [model.cross(model.shared(split.text[[c]].float(), "text"), hidden)[1][0, 1:].float().cpu()
            for c in (own, int(hardest[anchor]))]  # rows: caption tokens without CLS
    negative = int(negative_item[anchor])
    differing = []
    if split.attributes is not None:
        for attribute in (split.attributes[anchor] != split.attributes[negative]).nonzero().flatten().tolist():
            differing.append((int(split.text_token_of_attribute[attribute]),
                              int(split.vision_token_of_attribute[attribute])))
    lt, lv = maps[0].shape
    return AttentionPair(anchor, negative, maps[0], maps[1], _labels(split, "text", lt),
                         _labels(split, "vision", lv), differing)


def write_attention_example(model: AlignmentModel, split: FeatureSplit, path: Path) -> AttentionPair:
    """Compute the example in eval mode (the model's mode is restored) and write it atomically."""
    was_training = model.training
    model.eval()
    try:
        pair = attention_pair(model, split)
    finally:
        model.train(was_training)
    write_json(Path(path), {
        "anchor": pair.anchor, "negative": pair.negative,
        "attn_pos": pair.attn_pos.tolist(), "attn_neg": pair.attn_neg.tolist(),
        "text_labels": pair.text_labels, "vision_labels": pair.vision_labels,
        "differing": [list(cell) for cell in pair.differing],
    })
    return pair


def read_attention_example(path: Path) -> AttentionPair:
    """The example a run wrote; KeyError or ValueError when the file is not one."""
    data = json.loads(Path(path).read_text())
    return AttentionPair(int(data["anchor"]), int(data["negative"]),
                         torch.tensor(data["attn_pos"], dtype=torch.float32),
                         torch.tensor(data["attn_neg"], dtype=torch.float32),
                         list(data["text_labels"]), list(data["vision_labels"]),
                         [(int(t), int(v)) for t, v in data["differing"]])
