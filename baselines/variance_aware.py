"""Variance-aware loss scheduling (Pillai, arXiv 2503.03202) and its two comparison variants.

The two directions of the symmetric loss are weighted in proportion to an EMA-smoothed
statistic of each direction's scores: the mean per-query variance of cosine similarities
(`variance`), the mean softmax entropy (`entropy`) or the mean max-minus-min spread of
cosine similarities (`cosine_spread`). The formula is not public; this is our reading
(docs/paper-gaps.md).
"""
from dataclasses import dataclass

import torch

from bacl.errors import ConfigError, require
from bacl.method import Method, MethodConfig

STATISTICS = ("variance", "entropy", "cosine_spread")


@dataclass
class VarianceAwareConfig(MethodConfig):
    statistic: str = "variance"
    momentum: float = 0.9  # EMA: new = momentum * old + (1 - momentum) * batch value
    min_weight: float = 0.1  # neither direction is ever switched off


def direction_statistic(sims: torch.Tensor, scale: torch.Tensor, statistic: str) -> torch.Tensor:
    """[2] statistic of the image->text rows and the text->image rows of a [B, B] cosine matrix."""
    both = torch.stack([sims, sims.T])
    if statistic == "variance":
        return both.var(dim=2).mean(dim=1)
    if statistic == "entropy":
        logp = torch.log_softmax(scale * both, dim=2)
        return -(logp.exp() * logp).sum(dim=2).mean(dim=1)
    return (both.amax(dim=2) - both.amin(dim=2)).mean(dim=1)


class VarianceAware(Method):
    Config = VarianceAwareConfig

    @classmethod
    def resolve(cls, cfg) -> None:
        super().resolve(cfg)
        if cfg.statistic not in STATISTICS:
            raise ConfigError(f"method.statistic={cfg.statistic!r}: valid choices are {', '.join(STATISTICS)}")
        require(0 <= cfg.momentum < 1, "method.momentum", cfg.momentum, "in [0, 1)")
        require(0 <= cfg.min_weight <= 0.5, "method.min_weight", cfg.min_weight, "in [0, 0.5]")

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.register_buffer("ema", torch.zeros(2))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def direction_weights(self, sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = direction_statistic(sims, self.logit_scale.detach(), self.cfg.statistic)
        if self.training:
            first = self.ema_steps == 0
            self.ema.copy_(torch.where(first, value, self.cfg.momentum * self.ema + (1 - self.cfg.momentum) * value))
            self.ema_steps += 1
        w = (self.ema / self.ema.sum().clamp_min(1e-12)).clamp(self.cfg.min_weight, 1 - self.cfg.min_weight)
        return w[0], w[1]
