"""BACL = BNS (policy + curriculum + Gumbel selection over FAISS candidates) + CLA.

Policy objective (our reading of "optimised through Gumbel-Softmax with the boundary
score as reward", docs/paper-gaps.md): logits = b·tanh(π(a, n)) − α(η)·BS/τ, with τ the
contrastive temperature so BS is in logit units and b bounds the learned part; a straight-through
Gumbel sample picks the negatives, and the policy maximises the curriculum-signed reward
−α(η)·BS of what it picked. Early (α > 0) that favours easy negatives, late (α < 0) hard
ones. The selection enters the contrastive loss only as indices, so the contrastive loss
never teaches the policy to pick easy negatives; the policy learns from its reward alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bacl.batch import Batch, Negatives
from bacl.cla import cla_loss
from bacl.errors import ConfigError, require
from bacl.method import Method, MethodConfig
from bacl.model import Encoded
from bacl.sampler import PolicyNet, gumbel_topk_st
from bacl.schedule import Curriculum, ScheduleConfig, resolve_schedule


@dataclass
class PolicyConfig:
    hidden: int = 128
    gumbel_tau: float = 1.0
    weight: float = 1.0  # weight of the policy's reward objective
    bound: float = 2.0  # |π| <= bound: the learned priority modulates the curriculum, never overrides it


@dataclass
class ClaConfig:
    enabled: bool = True
    beta: float = 1.0  # gain on ΔA
    top: int = 1  # |Ω|: query/key pairs with the largest ΔA per sample
    lambda_local: float = 0.3  # the paper's λ_local
    itm_weight: float = 0.0  # optional match loss on (positive, hardest negative); 0 = the paper's objective


@dataclass
class BACLConfig(MethodConfig):
    negatives: str = "bns"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cla: ClaConfig = field(default_factory=ClaConfig)


class BACL(Method):
    Config = BACLConfig
    NEGATIVES = ("bns", "hardest", "uniform")

    @classmethod
    def resolve(cls, cfg) -> None:
        super().resolve(cfg)
        resolve_schedule(cfg.schedule)
        require(cfg.policy.hidden > 0, "method.policy.hidden", cfg.policy.hidden, "> 0")
        require(cfg.policy.gumbel_tau > 0, "method.policy.gumbel_tau", cfg.policy.gumbel_tau, "> 0")
        require(cfg.policy.weight >= 0, "method.policy.weight", cfg.policy.weight, ">= 0")
        require(cfg.policy.bound > 0, "method.policy.bound", cfg.policy.bound, "> 0")
        require(cfg.cla.beta >= 0, "method.cla.beta", cfg.cla.beta, ">= 0")
        require(cfg.cla.top > 0, "method.cla.top", cfg.cla.top, "> 0")
        require(cfg.cla.lambda_local >= 0, "method.cla.lambda_local", cfg.cla.lambda_local, ">= 0")
        require(cfg.cla.itm_weight >= 0, "method.cla.itm_weight", cfg.cla.itm_weight, ">= 0")
        if not cfg.negatives_in_contrast and not cfg.cla.enabled:
            raise ConfigError("method.negatives_in_contrast=false with method.cla.enabled=false leaves the "
                              "sampled negatives unused: enable one of them")

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.curriculum = Curriculum(**cfg.schedule)
        if cfg.negatives == "bns":
            self.policy = PolicyNet(self.model.head["text"].out_features, cfg.policy.hidden)

    def select_negatives(self, batch: Batch, img: torch.Tensor, txt: torch.Tensor, step: int,
                         progress: float) -> tuple[Negatives | None, dict[str, torch.Tensor]]:
        if self.cfg.negatives != "bns":
            return super().select_negatives(batch, img, txt, step, progress)
        candidates = self.candidates(batch)
        scores = self.candidate_scores(img, txt, candidates, step)  # detached
        alpha = self.curriculum.alpha(progress)
        bank = self.bank.lookup(candidates)
        # BS in logit units (× 1/temperature), the scale at which the contrastive loss sees it
        curriculum = -alpha * self.logit_scale.detach() * scores
        logits = self.cfg.policy.bound * torch.tanh(self.policy(img.detach(), bank, scores)) + curriculum
        noise = batch.draw(candidates.shape[1:], self.rng["sampling"])
        pick = gumbel_topk_st(logits, self.cfg.policy.gumbel_tau, self.cfg.num_negatives, noise)
        reward = -alpha * scores
        m = self.cfg.num_negatives
        chosen = pick.detach().topk(m, dim=1).indices
        terms = {  # a loss term and a statistic (keys ending in _loss are summed into the objective)
            "policy_loss": -self.cfg.policy.weight * (pick * reward).sum(dim=1).mean() / m,
            "alpha": torch.tensor(alpha),
        }
        return Negatives(torch.gather(candidates, 1, chosen), torch.gather(scores, 1, chosen)), terms

    def extra_losses(self, batch: Batch, vision: Encoded, text: Encoded, negatives: Negatives | None
                     ) -> dict[str, torch.Tensor]:
        cla = self.cfg.cla
        if not cla.enabled or negatives is None:
            return {}
        rows = torch.arange(negatives.captions.shape[0], device=negatives.captions.device)
        pick = negatives.scores.argmax(dim=1)
        if negatives.shared is not None:  # encoded for the contrastive loss: reuse
            hardest = negatives.shared[rows, pick]
        else:
            with torch.set_grad_enabled(self.cfg.negative_grad):
                hardest = self.model.shared(self.train_split.text[negatives.captions[rows, pick]].float(), "text")
        # positives and hardest negatives against the same images
        queries = torch.cat([text.shared, hardest])
        if cla.itm_weight > 0:
            match, attn = self.model.cross(queries, torch.cat([vision.hidden, vision.hidden]))
        else:  # the map is all CLA needs
            match, attn = None, self.model.cross_map(queries, vision.hidden)
        attn_pos, attn_neg = attn.chunk(2)
        local, delta = cla_loss(attn_pos[:, 1:], attn_neg[:, 1:], cla.beta, cla.top)  # CLS query excluded
        out = {"local_loss": cla.lambda_local * local.mean(), "delta_a": delta.detach().mean()}
        if match is not None:
            match_pos, match_neg = match.chunk(2)
            target = torch.cat([torch.ones_like(match_pos), torch.zeros_like(match_neg)])
            out["itm_loss"] = cla.itm_weight * F.binary_cross_entropy_with_logits(match, target)
        return out
