"""Run configuration: dataclass defaults, registry presets, then `key=value` overrides.

Everything is validated before a run starts, so a typo or an out-of-range value
costs seconds, not a cluster allocation. Group choices (`method=`, `dataset=`) pick
a registry entry whose own dataclass defines the keys valid under that group.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from bacl.data.pool import IndexConfig, validate_index
from bacl.errors import ConfigError, require
from bacl.neutral import neutral, without_neutral
from bacl.registry import DATASETS, METHODS

GROUPS = ("method", "dataset")
DEFAULT_METHOD = "bacl"
DEFAULT_DATASET = "synthetic"


@dataclass
class ModelConfig:
    width: int = 512  # the paper's hidden size
    layers: int = 4  # the paper's 4-layer cross-modal transformer
    cross_layers: int = 1  # last blocks with cross-attention in cross-modal mode (4 = fused throughout)
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class PoolConfig:
    k: int = 20  # candidates per anchor
    modality: str = "vision"  # frozen space in which neighbours are searched: vision | text
    index: IndexConfig = field(default_factory=IndexConfig)  # FAISS index: exact by default
    # Real datasets only (docs/datasets.md): candidates above this frozen cosine to the anchor are its
    # near-duplicates (false negatives) and dropped; 1.0 disables. The synthetic dataset ignores both keys.
    duplicate_threshold: float = 0.95
    drop_same_caption: bool = True  # real datasets: drop candidates with a caption identical to the anchor's
    # bacl-extract: 0 builds the pool in memory; P > 0 out of core (bacl/data/pool_out_of_core.py), a prepare job,
    # an array of P search parts and a finish job (in turn with cluster=local); flat, IVF, IVF-PQ: the same table.
    out_of_core_parts: int = neutral(0)
    out_of_core_chunk: int = neutral(100_000)  # rows read and searched at a time out of core and by the test dedup


@dataclass
class StreamConfig:
    """Training read shard by shard from the feature store (bacl/data/stream.py), for splits beyond memory."""
    enabled: bool = False  # false: the whole training split is loaded (fine up to a few million pairs)
    buffer_size: int = 8192  # shuffle buffer per reader (item ids)
    # S: the global batch is S readers' batches of batch_size / S rows; rank r of w runs S / w of them.
    # 0: one per rank (then batches depend on the world size); fix it to compare runs across world sizes.
    readers: int = 0
    prefetch: bool = neutral(True)  # read the next batch in a thread while this one trains
    read_threads: int = neutral(16)  # rows read at once (random rows are I/O round trips: pool negatives)


@dataclass
class TrainConfig:
    epochs: int = 10  # the paper trains 10 epochs
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    checkpoint_every: int = 50  # steps between atomic last.pt writes
    threads: int = neutral(0)  # torch intra-op threads; 0 keeps torch's default
    device: str = "cpu"  # cpu, cuda or cuda:N; a CUDA device must be visible where the run runs (Trainer.build)
    amp: bool = True  # bf16 autocast of the training step on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model's encode / cross-map paths (dynamic shapes)
    stream: StreamConfig = field(default_factory=StreamConfig)


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    every_epochs: int = 1
    rerank_k: int = 8  # dual-encoder shortlist per query re-scored with the match head (ALBEF's k_test); 0: off
    max_items: int = 0  # evaluate on the first max_items test items (a paper-scale test split); 0: all


@dataclass
class LogConfig:
    tensorboard: bool = neutral(True)  # per-step scalars as TensorBoard event files in the run directory
    wandb: bool = neutral(False)  # also to Weights & Biases (offline mode when there is no network)
    every_steps: int = neutral(10)  # steps between per-step scalar writes


@dataclass
class RunConfig:
    seed: int = 0
    output_dir: str = neutral("results")
    data_root: str = neutral("data")  # a dataset whose dataset.root is null is read from <data_root>/<dataset name>
    method: Any = None
    dataset: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _parse_value(raw: str) -> Any:
    """A YAML scalar or list; text YAML cannot parse (a brace pattern like {000..009}.tar) stays text."""
    if raw == "":
        return raw
    try:
        return OmegaConf.create(f"v: {raw}").v
    except yaml.YAMLError:
        return raw


def parse_overrides(args: Iterable[str]) -> list[tuple[str, Any]]:
    """`key=value` strings -> (key, YAML-parsed value), in order."""
    parsed = []
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {arg!r}")
        parsed.append((key.strip(), _parse_value(raw)))
    return parsed


def _valid_keys(cfg: DictConfig, key: str) -> str:
    """What `key` lacks: its deepest existing section, the missing part, and that section's keys."""
    parts, node, depth = key.split("."), cfg, 0
    while depth < len(parts) - 1 and parts[depth] in node and isinstance(node[parts[depth]], DictConfig):
        node, depth = node[parts[depth]], depth + 1
    where = ".".join(parts[:depth])
    owner = f"{where} {node.name!r}" if where in GROUPS else repr(where) if where else "the config"
    within = f"under {where!r}" if where else "at the top level"
    return f"{owner} has no key {parts[depth]!r}; valid keys {within}: {', '.join(sorted(node.keys()))}"


def _set(cfg: DictConfig, key: str, value: Any, origin: str) -> None:
    try:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigKeyError(key)
        OmegaConf.update(cfg, key, value, merge=True)
    except (ConfigAttributeError, ConfigKeyError):
        raise ConfigError(f"unknown config key {key!r} ({origin}, value {value!r}); {_valid_keys(cfg, key)}") from None
    except ValidationError as err:
        raise ConfigError(f"bad value {value!r} for {key!r} ({origin}): {err.msg}") from None


def _check_finite(node: Any, path: str = "") -> None:
    if isinstance(node, DictConfig):
        for k in node.keys():
            _check_finite(node[k], f"{path}.{k}" if path else str(k))
    elif isinstance(node, (list, tuple)) or OmegaConf.is_list(node):
        for i, v in enumerate(node):
            _check_finite(v, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path}={node} is not a finite number")


def _validate_common(cfg: DictConfig) -> None:
    require(cfg.pool.k > 0, "pool.k", cfg.pool.k, "a positive integer")
    require(cfg.pool.modality in ("vision", "text"), "pool.modality", cfg.pool.modality, "vision or text")
    validate_index(cfg.pool.index)
    require(0 < cfg.pool.duplicate_threshold <= 1, "pool.duplicate_threshold", cfg.pool.duplicate_threshold,
            "a cosine in (0, 1]: candidates above it are dropped as near-duplicates of the anchor; 1.0 disables")
    t = cfg.train
    require(t.epochs > 0, "train.epochs", t.epochs, "> 0")
    require(t.batch_size > 1, "train.batch_size", t.batch_size, "> 1 (in-batch negatives need two items)")
    require(t.lr > 0, "train.lr", t.lr, "> 0")
    require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    require(0 <= t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "in [0, 1)")
    require(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 disables clipping)")
    require(t.checkpoint_every > 0, "train.checkpoint_every", t.checkpoint_every, "> 0")
    require(t.threads >= 0, "train.threads", t.threads, ">= 0")
    require(t.stream.buffer_size >= 1, "train.stream.buffer_size", t.stream.buffer_size, ">= 1")
    require(t.stream.readers >= 0, "train.stream.readers", t.stream.readers, ">= 0 (0: one reader per rank)")
    require(t.stream.read_threads >= 1, "train.stream.read_threads", t.stream.read_threads, ">= 1")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", t.device):
        raise ConfigError(f"train.device={t.device!r} is not a device: expected cpu, cuda or cuda:N (N a GPU index)")
    m = cfg.model
    require(m.width > 0 and m.heads > 0 and m.width % m.heads == 0, "model.heads", m.heads,
            f"a positive divisor of model.width={m.width}")
    require(m.layers > 0, "model.layers", m.layers, "> 0")
    require(1 <= m.cross_layers <= m.layers, "model.cross_layers", m.cross_layers, f"in [1, model.layers={m.layers}]")
    require(0 <= m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)")
    require(all(k > 0 for k in cfg.eval.ks), "eval.ks", list(cfg.eval.ks), "positive integers")
    require(cfg.eval.max_items >= 0, "eval.max_items", cfg.eval.max_items, ">= 0 (0 evaluates every test item)")
    require(cfg.log.every_steps > 0, "log.every_steps", cfg.log.every_steps, "> 0")
    require(cfg.eval.rerank_k >= 0, "eval.rerank_k", cfg.eval.rerank_k, ">= 0 (0 disables re-ranking)")


def _check_output_dir(output_dir: str) -> None:
    """output_dir is a directory, or one can be made there: no file on its path."""
    path = Path(output_dir)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"output_dir={output_dir!r}: {p} is a file; expected a directory "
                                  f"(an existing one, or a path where one can be created)")
            return


def load_config(args: Iterable[str] = ()) -> DictConfig:
    """Compose and validate a run config from `key=value` overrides."""
    overrides = parse_overrides(args)
    groups = {g: v for g, v in overrides if g in GROUPS}
    for group, value in groups.items():
        if not isinstance(value, str):
            registry = METHODS if group == "method" else DATASETS
            raise ConfigError(f"{group}={value!r}: expected a name, one of {', '.join(registry.names())}")
    cfg = OmegaConf.structured(RunConfig)

    dataset_entry = DATASETS.entry(groups.get("dataset", DEFAULT_DATASET))
    dataset_cls = dataset_entry.load()
    cfg.dataset = OmegaConf.merge(OmegaConf.structured(dataset_cls.Config),
                                  {"name": groups.get("dataset", DEFAULT_DATASET)})
    for key, value in dataset_entry.preset.items():
        _set(cfg, key, value, "dataset preset")

    method_name = groups.get("method", DEFAULT_METHOD)
    method_entry = METHODS.entry(method_name)
    method_cls = method_entry.load()
    cfg.method = OmegaConf.merge(OmegaConf.structured(method_cls.Config), {"name": method_name})
    for key, value in method_entry.preset.items():
        _set(cfg, f"method.{key}", value, f"preset of method {method_name!r}")

    for key, value in overrides:
        if key not in GROUPS:
            _set(cfg, key, value, "command line")

    if "root" in cfg.dataset and cfg.dataset.root is None:
        cfg.dataset.root = f"{cfg.data_root}/{cfg.dataset.name}"
    _check_finite(cfg)
    _validate_common(cfg)
    _check_output_dir(cfg.output_dir)
    method_cls.resolve(cfg.method)
    dataset_cls.validate(cfg.dataset)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def run_id(cfg: DictConfig | dict) -> str:
    """Stable hash of everything that changes the result (fields marked `neutral` do not, bacl/neutral.py).

    Takes a live config or one read back from a run's `config.yaml`; raises ConfigError for a
    method or dataset that is not registered.
    """
    data = cfg if isinstance(cfg, dict) else to_container(cfg)
    sections = {"method": METHODS.entry(data["method"]["name"]).load().Config,
                "dataset": DATASETS.entry(data["dataset"]["name"]).load().Config}
    blob = json.dumps(without_neutral(data, RunConfig, sections), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
