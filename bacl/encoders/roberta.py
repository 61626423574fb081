"""RoBERTa (or any Hugging Face encoder-only model) as a frozen text encoder.

A caption is tokenized to exactly `text_tokens` ids (<s> caption </s> <pad>...), cut if
longer; tokens are the last hidden states of those positions. Pooled is the mean of the
hidden states of the non-padding positions, not the <s> state: RoBERTa is pretrained by
masked language modelling only (no next-sentence objective), so nothing trains <s> to
summarise the sentence, and mean pooling is the stronger frozen sentence embedding
(Reimers & Gurevych, 2019). Tokens and pooled share d = hidden_size; pooled is not normalised.

With pretrained=null the weights are random and, since no tokenizer files can be had
offline either, captions go through ByteTokenizer.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bacl.encoders.base import FrozenEncoder, fixed_init, from_hub, require_preset
from bacl.errors import require
from bacl.extras import need

MAX_TOKENS = 512  # RoBERTa's 514 positions less the two its position ids skip


class ByteTokenizer:
    """UTF-8 bytes shifted past RoBERTa's special ids: a tokenizer that needs no files."""

    bos, pad, eos = 0, 1, 2  # RoBERTa's ids for <s>, <pad>, </s>
    offset = 3
    vocab_size = offset + 256

    def encode(self, text: str, length: int) -> list[int]:
        body = [b + self.offset for b in text.encode("utf-8")][: length - 2]
        ids = [self.bos, *body, self.eos]
        return ids + [self.pad] * (length - len(ids))

    def decode(self, ids: list[int]) -> str:
        return bytes(i - self.offset for i in ids if i >= self.offset).decode("utf-8", errors="replace")


# Random-init architectures (RobertaConfig overrides), for pretrained=null.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "vocab_size": ByteTokenizer.vocab_size},
    "roberta-base": {},  # RobertaConfig's defaults are roberta-base's shapes
}


class RoBERTaText(FrozenEncoder):
    modality = "text"

    def __init__(self, model: nn.Module, tokenizer: Any, text_tokens: int):
        super().__init__(model)
        self.tokenizer = tokenizer
        self.tokens = text_tokens
        self.dim = model.config.hidden_size
        self.pad = model.config.pad_token_id

    def preprocess(self, raw: str) -> torch.Tensor:
        if isinstance(self.tokenizer, ByteTokenizer):
            return torch.tensor(self.tokenizer.encode(raw, self.tokens))
        return self.tokenizer(raw, max_length=self.tokens, padding="max_length", truncation=True,
                              return_tensors="pt")["input_ids"][0]

    def _forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != self.pad
        hidden = self.module(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return hidden, (hidden * weights).sum(1) / weights.sum(1)


class RoBERTa:
    MODALITIES = ("text",)

    @staticmethod
    def validate(cfg: Any, key: str) -> None:
        require_preset(cfg, key, PRESETS)
        require(2 <= cfg.text_tokens <= MAX_TOKENS, f"{key}.text_tokens", cfg.text_tokens,
                f"in [2, {MAX_TOKENS}]: room for <s> and </s>, within RoBERTa's positions")

    @staticmethod
    def build(cfg: Any, modality: str, device: str) -> FrozenEncoder:
        need("transformers")  # the [media] extra
        from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaModel  # ~3 s: only when built

        if cfg.pretrained is None:
            with fixed_init():
                model = RobertaModel(RobertaConfig(**PRESETS[cfg.model]), add_pooling_layer=False)
            return RoBERTaText(model.to(device), ByteTokenizer(), cfg.text_tokens)
        tokenizer, model = from_hub("roberta", cfg.pretrained, cfg.cache_dir, AutoTokenizer, AutoModel)
        return RoBERTaText(model.to(device), tokenizer, cfg.text_tokens)
