"""HCL (Robinson et al., ICLR 2021): importance-reweighted, debiased in-batch negatives,
applied to each direction of the cross-modal loss with the positive on the diagonal."""
from dataclasses import dataclass

import torch

from bacl.errors import require
from bacl.losses import hcl
from bacl.method import Method, MethodConfig


@dataclass
class HCLConfig(MethodConfig):
    beta: float = 1.0  # concentration on hard negatives (the official default)
    tau_plus: float = 0.1  # class prior of false negatives (the official default)


class HCL(Method):
    Config = HCLConfig

    @classmethod
    def resolve(cls, cfg) -> None:
        super().resolve(cfg)
        require(cfg.beta >= 0, "method.beta", cfg.beta, ">= 0")
        require(0 <= cfg.tau_plus < 1, "method.tau_plus", cfg.tau_plus, "in [0, 1)")

    def direction_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hcl(logits, float(self.logit_scale.detach()), self.cfg.beta, self.cfg.tau_plus, labels)
