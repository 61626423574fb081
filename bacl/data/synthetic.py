"""The embedded synthetic benchmark: a world of attribute tuples seen through two modalities.

Generative model (docs/synthetic-dataset.md):
- an item is a tuple of A discrete attributes with V values each; the first A - F are
  *coarse* (salience 1) and the last F are *fine* (salience `fine_salience` < 1);
- each modality m has its own random table E_m[a, v] in R^d and its own random order of
  tokens: token pos_m[a] = s_a * E_m[a, value_a] + noise, plus pure-noise distractor tokens;
  a caption is one noise draw of the text tokens, an item has `captions_per_item` of them;
- items come in *sibling groups* that share every attribute but one fine attribute, so
  siblings are ambiguous negatives of each other (they differ in exactly one attribute, and
  so in exactly one token per modality); a group has 1 + round(rho * rho_reference_k)
  items, so rho is the density of ambiguous negatives among an anchor's k = 20 nearest
  candidates. Random in-batch negatives almost never are siblings and can be told apart by
  the loud coarse attributes alone: CLIP-style training has little reason to learn the fine ones.
Everything is drawn from `dataset.seed`, so the world is fixed across training seeds.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from bacl.data.base import FeatureDataset
from bacl.data.split import FeatureSplit
from bacl.data.store import FeatureStore, ShardArrays
from bacl.data.stream import ShardIndex, StreamedSplit
from bacl.errors import require
from bacl.neutral import neutral, without_neutral


@dataclass
class SyntheticConfig:
    name: str = "synthetic"
    seed: int = 0  # the world (tables, items); the run's `seed` only drives training
    n_train: int = 2000  # n: training items
    n_test: int = 1000
    rho: float = 0.25  # density of ambiguous negatives among the reference candidates
    rho_reference_k: int = 20
    n_attributes: int = 6
    n_fine: int = 3
    n_values: int = 12
    fine_salience: float = 1.0
    noise: float = 0.5
    distractor_tokens: int = 2
    captions_per_item: int = 2
    vision_dim: int = 48
    text_dim: int = 32
    stream_shard_items: int = 100  # items per shard of the store that train.stream.enabled reads
    store: Optional[str] = neutral()  # where that store is written; null: a per-user cache keyed by this config


def group_size(cfg: SyntheticConfig) -> int:
    return 1 + round(cfg.rho * cfg.rho_reference_k)


class SyntheticDataset(FeatureDataset):
    Config = SyntheticConfig

    @staticmethod
    def validate(cfg: SyntheticConfig) -> None:
        require(cfg.n_train >= 2, "dataset.n_train", cfg.n_train, ">= 2")
        require(cfg.n_test >= 2, "dataset.n_test", cfg.n_test, ">= 2")
        require(1 <= cfg.n_fine <= cfg.n_attributes, "dataset.n_fine", cfg.n_fine,
                f"in [1, dataset.n_attributes={cfg.n_attributes}]")
        require(cfg.n_values >= 2, "dataset.n_values", cfg.n_values, ">= 2")
        require(cfg.rho_reference_k > 0, "dataset.rho_reference_k", cfg.rho_reference_k, "> 0")
        max_rho = (cfg.n_values - 1) / cfg.rho_reference_k
        require(0 <= cfg.rho <= max_rho, "dataset.rho", cfg.rho,
                f"in [0, {max_rho:.3g}]: a sibling group cannot be larger than dataset.n_values={cfg.n_values}")
        g = group_size(cfg)
        require(cfg.n_train >= 2 * g, "dataset.n_train", cfg.n_train, f">= two sibling groups ({2 * g} items)")
        require(cfg.n_test >= 2 * g, "dataset.n_test", cfg.n_test, f">= two sibling groups ({2 * g} items)")
        require(cfg.fine_salience > 0, "dataset.fine_salience", cfg.fine_salience, "> 0")
        require(cfg.noise >= 0, "dataset.noise", cfg.noise, ">= 0")
        require(cfg.distractor_tokens >= 0, "dataset.distractor_tokens", cfg.distractor_tokens, ">= 0")
        require(cfg.captions_per_item >= 1, "dataset.captions_per_item", cfg.captions_per_item, ">= 1")
        require(cfg.vision_dim > 0 and cfg.text_dim > 0, "dataset.vision_dim", cfg.vision_dim, "> 0")
        require(cfg.stream_shard_items >= 1, "dataset.stream_shard_items", cfg.stream_shard_items, ">= 1")

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        a = cfg.n_attributes
        self.salience = torch.ones(a)
        self.salience[a - cfg.n_fine:] = cfg.fine_salience
        self.tables = {
            "vision": torch.randn(a, cfg.n_values, cfg.vision_dim, generator=gen) / cfg.vision_dim ** 0.5,
            "text": torch.randn(a, cfg.n_values, cfg.text_dim, generator=gen) / cfg.text_dim ** 0.5,
        }
        n_tokens = a + cfg.distractor_tokens
        self.token_of_attribute = {m: torch.randperm(n_tokens, generator=gen)[:a] for m in ("vision", "text")}
        self.train = self._split(self._items(cfg.n_train, gen), gen)
        self.test = self._split(self._items(cfg.n_test, gen), gen)

    def streamed_train(self, stream: Any) -> StreamedSplit:
        """The training split written once as a feature store (float16, `stream_shard_items` items a shard) and
        streamed from it: item and caption ids equal the in-memory split's, so the pool applies unchanged."""
        store = self.write_store(self.store_path())
        return StreamedSplit(ShardIndex(store, "train", read_threads=stream.read_threads))

    def world_config(self) -> dict:
        """The config that determines the data (the store's identity): no result-neutral field."""
        data = OmegaConf.to_container(self.cfg) if OmegaConf.is_config(self.cfg) else asdict(self.cfg)
        return without_neutral(data, SyntheticConfig)

    def store_path(self) -> Path:
        if self.cfg.store:
            return Path(self.cfg.store).expanduser()
        blob = json.dumps(self.world_config(), sort_keys=True)
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "bacl" / "synthetic-store" / hashlib.sha256(blob.encode()).hexdigest()[:12]

    def write_store(self, path: Path) -> FeatureStore:
        """The training split as a feature store at `path` (shards already written are kept)."""
        train, k = self.train, self.cfg.stream_shard_items
        store = FeatureStore(path)
        names = [f"{s:05d}" for s in range(-(-train.n_items // k))]
        store.init({"synthetic": self.world_config()}, ["vision"], names)
        for name in store.missing_shards():
            items = torch.arange(int(name) * k, min((int(name) + 1) * k, train.n_items))
            captions = torch.nonzero((train.text_item >= items[0]) & (train.text_item <= items[-1])).squeeze(1)
            store.write_shard(name, ShardArrays(
                keys=[str(int(i)) for i in items], splits=["train"] * len(items), skipped=[],
                streams={"vision": (train.vision[items].numpy(), train.pooled("vision")[items].numpy())},
                text_tokens=train.text[captions].numpy(), text_pooled=train.text[captions].mean(1).numpy(),
                text_item=(train.text_item[captions] - items[0]).numpy().astype(np.int64)))
        return store

    def _items(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """[n', A] distinct attribute tuples in sibling groups (n' = n rounded to whole groups)."""
        cfg, g = self.cfg, group_size(self.cfg)
        n_groups = n // g
        base = torch.randint(cfg.n_values, (n_groups, cfg.n_attributes), generator=gen)
        varied = cfg.n_attributes - cfg.n_fine + torch.randint(cfg.n_fine, (n_groups,), generator=gen)
        values = torch.argsort(torch.rand(n_groups, cfg.n_values, generator=gen), dim=1)[:, :g]
        items = base[:, None, :].repeat(1, g, 1)
        items[torch.arange(n_groups)[:, None], torch.arange(g)[None, :], varied[:, None]] = values
        items = items.reshape(n_groups * g, cfg.n_attributes)
        # Distinct tuples only: a duplicate would be a false negative. Redraw whole groups.
        _, inverse, counts = torch.unique(items, dim=0, return_inverse=True, return_counts=True)
        clash = (counts[inverse] > 1).view(n_groups, g).any(dim=1)
        if clash.any():
            items = items.view(n_groups, g, -1)
            items[clash] = self._items(int(clash.sum()) * g, gen).view(-1, g, cfg.n_attributes)
            items = items.reshape(n_groups * g, cfg.n_attributes)
            if torch.unique(items, dim=0).shape[0] != items.shape[0]:
                return self._items(n, gen)
        return items

    def _tokens(self, attrs: torch.Tensor, modality: str, gen: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        table = self.tables[modality]
        dim = table.shape[-1]
        signal = table[torch.arange(cfg.n_attributes), attrs] * self.salience[:, None]  # [N, A, d]
        tokens = torch.zeros(attrs.shape[0], cfg.n_attributes + cfg.distractor_tokens, dim)
        tokens[:, self.token_of_attribute[modality]] = signal
        return tokens + cfg.noise * torch.randn(tokens.shape, generator=gen) / dim ** 0.5

    def _split(self, attrs: torch.Tensor, gen: torch.Generator) -> FeatureSplit:
        c = self.cfg.captions_per_item
        text_item = torch.arange(attrs.shape[0]).repeat_interleave(c)
        return FeatureSplit(
            vision=self._tokens(attrs, "vision", gen),
            text=self._tokens(attrs[text_item], "text", gen),
            text_item=text_item,
            attributes=attrs,
            vision_token_of_attribute=self.token_of_attribute["vision"],
            text_token_of_attribute=self.token_of_attribute["text"],
        )


def ambiguous_pairs(split: FeatureSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor items, negative items, differing attribute) for every pair differing in one attribute."""
    if split.attributes is None:
        raise ValueError("this split has no attribute ground truth")
    diff = split.attributes[:, None, :] != split.attributes[None, :, :]
    anchor, negative = torch.nonzero(diff.sum(-1) == 1, as_tuple=True)
    return anchor, negative, diff[anchor, negative].float().argmax(dim=1)
