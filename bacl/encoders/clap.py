"""CLAP's HTSAT audio tower as a frozen audio encoder.

Every clip is cut or padded to the feature extractor's `max_length_s` (10 s for the LAION
checkpoints) so that L is fixed: a longer waveform keeps its first max_length_s seconds
(CLAP's own `rand_trunc` crop is random, which would make the store depend on the RNG); a
shorter one is padded by the extractor's `padding` mode (`repeatpad`: tiled whole, then
zero-padded). Fusion is never used. Tokens are the last hidden state of HTSAT, its final
(frequency group x time) map flattened to L = (spec_size / patch_stride / 2^(stages-1))^2
positions (64 for the LAION checkpoints), each passed through the audio projection so
tokens share d = projection_dim with pooled. Pooled is that projection of the mean hidden
token, i.e. ClapModel's audio embedding before its L2 normalisation; since the projection
is an MLP, it is not the mean of the projected tokens.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bacl.encoders.base import FrozenEncoder, fixed_init, from_hub, require_preset
from bacl.extras import need

# Random-init architectures for pretrained=null: ClapAudioConfig and ClapFeatureExtractor overrides.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {  # 1 s clips, 8 mel bins, 2 stages of width 16 and 32: 16 tokens of d=32
        "audio": {"spec_size": 32, "num_mel_bins": 8, "patch_embeds_hidden_size": 16, "hidden_size": 32,
                  "depths": [1, 1], "num_attention_heads": [2, 2], "window_size": 4, "projection_dim": 32},
        "features": {"feature_size": 8, "max_length_s": 1},
    },
    "laion/clap-htsat-unfused": {"audio": {}, "features": {}},  # the library defaults are its shapes
}


class CLAPAudio(FrozenEncoder):
    modality = "audio"

    def __init__(self, model: nn.Module, extractor: Any):
        super().__init__(model)
        self.extractor = extractor
        self.sample_rate = extractor.sampling_rate
        self.samples = extractor.nb_max_samples
        self.dim = model.config.projection_dim
        fh, fw = model.audio_model.audio_encoder.input_resolutions[-1]
        self.tokens = fh * fw

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        wave = np.asarray(raw, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"expected a non-empty mono waveform at {self.sample_rate} Hz, got shape {wave.shape}")
        features = self.extractor(wave[: self.samples], sampling_rate=self.sample_rate, return_tensors="pt")
        return features["input_features"][0].float()  # [channels, frames, mel bins]

    def _forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        no_fusion = torch.zeros(len(features), 1, dtype=torch.bool, device=features.device)
        out = self.module.audio_model(input_features=features, is_longer=no_fusion)
        hidden = out.last_hidden_state.flatten(2).transpose(1, 2)  # [B, L, hidden]
        project = self.module.audio_projection
        return project(hidden), project(out.pooler_output)


class CLAP:
    MODALITIES = ("audio",)

    @staticmethod
    def validate(cfg: Any, key: str) -> None:
        require_preset(cfg, key, PRESETS)

    @staticmethod
    def build(cfg: Any, modality: str, device: str) -> FrozenEncoder:
        need("transformers")  # the [media] extra
        from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor  # ~3 s

        if cfg.pretrained is None:
            preset = PRESETS[cfg.model]
            with fixed_init():
                model = ClapAudioModelWithProjection(ClapAudioConfig(**preset["audio"]))
            extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad", **preset["features"])
            return CLAPAudio(model.to(device), extractor)
        extractor, model = from_hub("clap", cfg.pretrained, cfg.cache_dir,
                                    ClapFeatureExtractor, ClapAudioModelWithProjection)
        return CLAPAudio(model.to(device), extractor)
