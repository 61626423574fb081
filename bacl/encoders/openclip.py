"""open_clip image and text towers as frozen encoders.

Tokens live in the joint embedding space: each transformer output, after the tower's final
LayerNorm, goes through the same projection as the pooled embedding, so tokens and pooled
share d = embed_dim.
- image: [pooled, pooled patches...]. The first token is exactly `encode_image` (for 'tok'
  pooling that is the projected CLS token); the patch grid is average-pooled (adaptively,
  bins may overlap when it does not divide) to patch_grid x patch_grid, row-major, before
  the linear projection, which is the same as pooling projected patches.
- text: the first `text_tokens` positions of the model's context (77 tokens). Pooled is
  `encode_text`, the token at the end-of-text position: tokens[b, eot] == pooled[b] whenever
  the caption fits in `text_tokens`; a longer one still reaches pooled in full (up to 77).
Pooled is not L2-normalised (open_clip's `normalize=False`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bacl.encoders.base import FrozenEncoder, fixed_init, unavailable
from bacl.errors import require
from bacl.extras import optional_import

open_clip = optional_import("open_clip")  # the [media] extra; not lazy: validation needs its model and tag lists

TINY = "bacl-tiny-vit"  # random-init test model: 32 px images, 4x4 patches, width 64, 2 layers
open_clip.add_model_config(Path(__file__).with_name(f"{TINY}.json"))


def _project(x: torch.Tensor, proj: nn.Module | torch.Tensor) -> torch.Tensor:
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _fetch(model: str, tag: str, cache_dir: str | None) -> None:
    """Download (or find cached) the weights of a pretrained tag, failing with how to get them."""
    source = open_clip.get_pretrained_cfg(model, tag)
    try:
        open_clip.download_pretrained(source, cache_dir=cache_dir)
    except (OSError, RuntimeError) as err:
        hub = source.get("hf_hub", "").rstrip("/")
        repo = os.path.split(hub)[0] if hub.count("/") > 1 else hub
        where = [f"the Hugging Face Hub repo {repo} (https://huggingface.co/{repo})"] if repo else []
        where += [f"the URL {source['url']}"] if source.get("url") else []
        cache_arg = f", cache_dir={cache_dir!r}" if cache_dir else ""
        raise unavailable(
            f"open_clip weights {model} / {tag}", " or ".join(where),
            f"import open_clip; open_clip.create_model({model!r}, pretrained={tag!r}{cache_arg})",
            "the path of the downloaded checkpoint file", cache_dir, err) from err


@functools.cache
def _load(model: str, pretrained: str | None, cache_dir: str | None, device: str) -> tuple[nn.Module, Any, Any]:
    """One model per (weights, device), shared by the image and text encoders built from it."""
    if pretrained and open_clip.get_pretrained_cfg(model, pretrained):
        _fetch(model, pretrained, cache_dir)
    with fixed_init():
        clip, _, transform = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, cache_dir=cache_dir, device=device)
    return clip, transform, open_clip.get_tokenizer(model)


class OpenCLIPImage(FrozenEncoder):
    modality = "image"

    def __init__(self, clip: nn.Module, transform: Any, patch_grid: int):
        super().__init__(clip)
        self.transform = transform
        self.patch_grid = patch_grid
        self.dim = clip.visual.output_dim
        gh, gw = clip.visual.grid_size
        self.tokens = 1 + (patch_grid * patch_grid if patch_grid else gh * gw)

    def preprocess(self, raw: Image.Image) -> torch.Tensor:
        return self.transform(raw)

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module.forward_intermediates(
            image=images, image_indices=1, normalize=False, normalize_intermediates=True)
        patches = out["image_intermediates"][-1]  # [B, width, gh, gw], after ln_post like the CLS token
        if self.patch_grid:
            patches = F.adaptive_avg_pool2d(patches, self.patch_grid)
        patches = _project(patches.flatten(2).transpose(1, 2), self.module.visual.proj)
        pooled = out["image_features"]
        return torch.cat([pooled[:, None], patches], dim=1), pooled


class OpenCLIPText(FrozenEncoder):
    modality = "text"

    def __init__(self, clip: nn.Module, tokenizer: Any, text_tokens: int):
        super().__init__(clip)
        self.tokenizer = tokenizer
        self.tokens = text_tokens
        self.dim = clip.visual.output_dim

    def preprocess(self, raw: str) -> torch.Tensor:
        return self.tokenizer([raw])[0]  # the full context: pooled needs the end-of-text token

    def _forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module.forward_intermediates(
            text=ids, text_indices=1, normalize=False, normalize_intermediates=True)
        hidden = out["text_intermediates"][-1][:, : self.tokens]  # after ln_final
        return _project(hidden, self.module.text_projection), out["text_features"]


class OpenCLIP:
    MODALITIES = ("image", "text")

    @staticmethod
    def validate(cfg: Any, key: str) -> None:
        arch = open_clip.get_model_config(cfg.model)
        require(arch is not None, f"{key}.model", cfg.model, f"an open_clip model config, e.g. ViT-B-16 or {TINY}")
        vision, text = arch["vision_cfg"], arch["text_cfg"]
        plain = (isinstance(vision.get("layers"), int) and "timm_model_name" not in vision
                 and "hf_model_name" not in text and not arch.get("custom_text") and "multimodal_cfg" not in arch)
        require(plain, f"{key}.model", cfg.model,
                "a ViT CLIP with open_clip's own towers (no ResNet, timm, Hugging Face text or CoCa tower)")
        grid = vision["image_size"] // vision["patch_size"]
        require(cfg.patch_grid <= grid, f"{key}.patch_grid", cfg.patch_grid,
                f"<= {grid}, the patch grid of {cfg.model} (0 keeps all {grid}x{grid})")
        context = text.get("context_length", 77)
        require(cfg.text_tokens <= context, f"{key}.text_tokens", cfg.text_tokens,
                f"<= {context}, the context length of {cfg.model}")
        if cfg.pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(cfg.model)
            require(cfg.pretrained in tags or os.path.isfile(cfg.pretrained), f"{key}.pretrained", cfg.pretrained,
                    f"a pretrained tag of {cfg.model} ({', '.join(tags) or 'it has none'}), "
                    "a checkpoint file, or null for random weights")

    @staticmethod
    def build(cfg: Any, modality: str, device: str) -> FrozenEncoder:
        clip, transform, tokenizer = _load(cfg.model, cfg.pretrained, cfg.cache_dir, device)
        if modality == "image":
            return OpenCLIPImage(clip, transform, cfg.patch_grid)
        return OpenCLIPText(clip, tokenizer, cfg.text_tokens)
