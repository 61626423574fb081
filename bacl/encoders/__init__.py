"""Frozen pretrained encoders, registered by name: raw sample -> (tokens [L, d], pooled [d]).

The alignment model only ever sees these features, so every encoder gives a fixed L per
sample (text padded or cut to `text_tokens`, image patches pooled to a `patch_grid` grid,
audio padded or cut to a fixed clip length) and tokens in the same d-wide space as its
pooled embedding. Validation loads no weights: roberta and clap import transformers only
when built; open_clip is imported to check model names and tags (about 3 s, once per process).
"""
from __future__ import annotations

from bacl.encoders.base import EncoderConfig, EncoderUnavailable, FrozenEncoder
from bacl.errors import ConfigError, require
from bacl.registry import Entry, Registry

__all__ = ["ENCODERS", "EncoderConfig", "EncoderUnavailable", "FrozenEncoder", "load_encoder", "validate_encoder"]

# Each target is a backend class with MODALITIES, validate(cfg, key) and build(cfg, modality, device).
ENCODERS = Registry("encoder", {
    "open_clip": Entry("bacl.encoders.openclip:OpenCLIP"),
    "roberta": Entry("bacl.encoders.roberta:RoBERTa"),
    "clap": Entry("bacl.encoders.clap:CLAP"),
})


def validate_encoder(cfg: EncoderConfig, key: str) -> None:
    """Check an EncoderConfig (or its OmegaConf node) without loading weights; errors name `key`.<field>."""
    if cfg.name not in ENCODERS.names():
        raise ConfigError(f"{key}.name={cfg.name!r} is not a registered encoder: expected one of {', '.join(ENCODERS.names())}")
    require(cfg.text_tokens > 0, f"{key}.text_tokens", cfg.text_tokens, "a positive integer")
    require(cfg.patch_grid >= 0, f"{key}.patch_grid", cfg.patch_grid, ">= 0 (0 keeps every patch)")
    require(cfg.batch_size > 0, f"{key}.batch_size", cfg.batch_size, "a positive integer")
    ENCODERS.entry(cfg.name).load().validate(cfg, key)


def load_encoder(cfg: EncoderConfig, modality: str, device: str = "cpu") -> FrozenEncoder:
    """The frozen `modality` tower of encoder `cfg`; EncoderUnavailable if its weights cannot be had here."""
    validate_encoder(cfg, "encoder")  # callers that skipped validation still get a named error, not a bad shape
    backend = ENCODERS.entry(cfg.name).load()
    if modality not in backend.MODALITIES:
        raise ConfigError(f"encoder {cfg.name!r} has no {modality} tower: it encodes {' and '.join(backend.MODALITIES)}")
    return backend.build(cfg, modality, device)
