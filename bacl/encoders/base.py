"""What every frozen encoder shares: its config, its frozen wrapper and its offline error."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from bacl.errors import require
from bacl.neutral import neutral


@dataclass
class EncoderConfig:
    name: str = "open_clip"  # registry key: open_clip | roberta | clap
    # open_clip: a model config name. roberta/clap: the architecture to random-init when pretrained
    # is null (a preset of that backend); with pretrained set the checkpoint decides and this is a label.
    model: str = "ViT-B-16"
    # open_clip: a pretrained tag or a checkpoint file; roberta/clap: a Hugging Face id or a local
    # directory; null: random weights (drawn from a fixed seed, so every process gets the same ones)
    pretrained: Optional[str] = "laion400m_e32"
    cache_dir: Optional[str] = None  # download cache; null: the library's default (HF_HUB_CACHE / HF_HOME)
    text_tokens: int = 32  # text: positions kept, past the caption end too (they attend to the real tokens)
    patch_grid: int = 4  # image: patch tokens average-pooled to patch_grid x patch_grid; 0 keeps every patch
    batch_size: int = neutral(64)  # inference batch: changes speed, not the features


class EncoderUnavailable(RuntimeError):
    """Pretrained weights cannot be loaded here; the message says which, from where and how to fetch them."""


def unavailable(weights: str, source: str, fetch: str, local: str, cache_dir: str | None,
                err: BaseException) -> EncoderUnavailable:
    """One wording for every backend: which weights, where they live, the command that fetches them."""
    cache = cache_dir or "the default Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub)"
    cause = (str(err).strip().splitlines() or [""])[0]
    return EncoderUnavailable(
        f"{weights} could not be loaded: they are not in {cache} and downloading them failed "
        f"(no network here, HF_HUB_OFFLINE=1, or a wrong name: see the cause below).\n"
        f"They come from {source}.\n"
        f"Pre-download them on a node with network access:\n"
        f"    python -c \"{fetch}\"\n"
        f"then point HF_HUB_CACHE (or this encoder's cache_dir) at that cache on a shared filesystem, "
        f"or set pretrained to {local}.\n"
        f"Cause: {type(err).__name__}: {cause}"
    )


def require_preset(cfg: Any, key: str, presets: dict[str, Any]) -> None:
    """Random weights (pretrained null) need an architecture this backend knows by name."""
    if cfg.pretrained is None:
        require(cfg.model in presets, f"{key}.model", cfg.model,
                f"a random-init preset ({', '.join(presets)}) since {key}.pretrained is null")


def from_hub(kind: str, name: str, cache: Optional[str], *loaders: Any) -> list[Any]:
    """`loader.from_pretrained(name)` for each transformers class, or EncoderUnavailable saying how to fetch them."""
    try:
        return [loader.from_pretrained(name, cache_dir=cache) for loader in loaders]
    except OSError as err:
        cache_arg = f", cache_dir={cache!r}" if cache else ""
        names = [loader.__name__ for loader in loaders]
        fetch = f"from transformers import {', '.join(names)}; " + "; ".join(
            f"{n}.from_pretrained({name!r}{cache_arg})" for n in names)
        raise unavailable(f"{kind} weights {name}", f"the Hugging Face Hub repo {name} (https://huggingface.co/{name})",
                          fetch, "a local directory written by save_pretrained", cache, err) from err


@contextmanager
def fixed_init(seed: int = 0) -> Iterator[None]:
    """Random-init weights must match across processes, or two stores built from one config disagree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class FrozenEncoder(ABC):
    """A pretrained network never trained here: eval mode, no gradients, a fixed [L, d] output per sample.

    Outputs stay on the encoder's device so a GPU extraction copies them back in one go.
    """

    modality: str  # image | text | audio
    dim: int  # d: width of the tokens and of the pooled embedding
    tokens: int  # L
    sample_rate: int | None = None  # audio: the rate preprocess expects

    def __init__(self, module: nn.Module):
        self.module = module.eval().requires_grad_(False)
        self.device = next(module.parameters()).device

    @abstractmethod
    def preprocess(self, raw: Any) -> torch.Tensor:
        """One raw sample -> one model input, cheap enough for a loader worker."""

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    def encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked preprocess outputs -> (tokens [B, L, d], pooled [B, d]), float32."""
        with torch.no_grad():
            tokens, pooled = self._forward(batch.to(self.device))
        return tokens.float(), pooled.float()
