"""CLA heat map: where a trained model's cross-attention differs between a positive and its
hardest negative, ΔA = |A⁺ − A⁻| (bacl/cla.py), drawn from a run's `last.pt`.

The model is rebuilt through the harness (the run's `config.yaml` over today's defaults,
then `Trainer.build`), so the map is exactly what CLA saw. The anchor is a test item, the
negative the caption of its most similar other item; on synthetic data we prefer an anchor
whose negative differs in one attribute (a sibling) and mark that attribute's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from bacl.config import load_config
from bacl.data.split import FeatureSplit
from bacl.model import AlignmentModel
from bacl.trainer import Trainer

CHUNK = 1024


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


def first_cla_run(runs: pd.DataFrame) -> Path | None:
    """Directory of the first finished run whose method uses CLA and that left a checkpoint."""
    if "cfg.method.cla.enabled" not in runs:
        return None
    for row in runs[(runs["status"] == "ok") & runs["cfg.method.cla.enabled"].eq(True)].itertuples():
        run_dir = Path(row.path)
        if (run_dir / "last.pt").exists() and (run_dir / "config.yaml").exists():
            return run_dir
    return None


def load_trained(run_dir: Path) -> tuple[AlignmentModel, FeatureSplit]:
    """The run's model with its last weights, and its test split, on CPU."""
    stored = OmegaConf.load(run_dir / "config.yaml")
    cfg = load_config([f"method={stored.method.name}", f"dataset={stored.dataset.name}"])
    # keys added to the harness since the run keep their defaults; the report runs on CPU
    trainer = Trainer(OmegaConf.merge(cfg, stored, {"train": {"device": "cpu", "threads": 0}}))
    trainer.build()
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    trainer.method.load_state_dict(state["method"])
    return trainer.method.model.eval(), trainer.test_split


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
    items = torch.cat([model.encode(split.vision[i:i + CHUNK].float(), "vision").embedding
                       for i in range(0, split.n_items, CHUNK)])
    texts = torch.cat([model.encode(split.text[i:i + CHUNK].float(), "text").embedding
                       for i in range(0, split.n_texts, CHUNK)])
    scores = (items @ texts.T).masked_fill(split.text_item[None, :] == torch.arange(split.n_items)[:, None],
                                           float("-inf"))
    hardest = scores.argmax(dim=1)  # per item, the best-scoring caption of another item
    negative_item = split.text_item[hardest]
    anchor = 0
    if split.attributes is not None:
        differs = (split.attributes != split.attributes[negative_item]).sum(dim=1)
        siblings = (differs == 1).nonzero().flatten()
        anchor = int(siblings[0]) if siblings.numel() else 0
    own = int(split.captions_padded()[anchor, 0])
    hidden = model.encode(split.vision[[anchor]].float(), "vision").hidden
    maps = [model.cross(model.shared(split.text[[c]].float(), "text"), hidden)[1][0, 1:]
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
