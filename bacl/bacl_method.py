"""BACL = BNS (policy + curriculum + Gumbel selection over FAISS candidates) + CLA.

The paper: the policy "is optimised through Gumbel-Softmax with the boundary score as reward",
and α(η) turns BNS from suppressing hard negatives (α > 0) to seeking them (α < 0). Two
readings of how the learned priority π(a, n) and the curriculum combine
(`method.policy.reading`, docs/paper-gaps.md), with BS in logit units (÷ τ, the contrastive
temperature) and b = `policy.bound`:
- `scaled` (default): logits = −α(η)·(BS/τ + b·tanh π). The policy learns a correction to
  the boundary score, a learned difficulty, and the curriculum decides whether difficulty is
  sought or avoided. Its reward is the curriculum-signed −α(η)·BS of what it picked; the
  gradient through −α flips with the reward, so the policy keeps learning one consistent
  notion of difficulty in both phases while its effect on the selection changes sign with α.
- `literal`: logits = b·tanh π − α(η)·BS/τ with reward BS itself ("harder is better"): the
  policy's preference has one sign throughout and the curriculum acts only through its term.
`policy.weight = 0` drops the policy network: selection is curriculum + Gumbel noise only
(`bns_curriculum_only`), so the policy's own contribution gets a verdict. The selection
enters the contrastive loss only as indices, so the policy learns from its reward alone.
CLA compares the positive with the hardest pool candidate by boundary score
(`cla.negative=hardest`, the same negative in `cla_only` and `bacl`), or with BNS's pick.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    reading: str = "scaled"  # scaled: −α·(BS/τ + learned), reward −α·BS | literal: learned − α·BS/τ, reward BS


@dataclass
class ClaConfig:
    enabled: bool = True
    beta: float = 1.0  # gain on ΔA
    top: int = 1  # |Ω|: query/key pairs with the largest ΔA per sample
    lambda_local: float = 0.3  # the paper's λ_local
    negative: str = "hardest"  # hardest: the top pool candidate by boundary score | selected: BNS's pick


@dataclass
class BACLConfig(MethodConfig):
    negatives: str = "bns"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cla: ClaConfig = field(default_factory=ClaConfig)


POLICY_READINGS = ("scaled", "literal")
CLA_NEGATIVES = ("hardest", "selected")


class BACL(Method):
    Config = BACLConfig
    NEGATIVES = ("bns", "hardest", "uniform")
    SCORED = ("bns", "hardest")
    TRAINING_ONLY_TERMS = ("policy_loss",)  # it trains the sampler, which no evaluated score uses
    TRAINING_ONLY_PARAMETERS = (*Method.TRAINING_ONLY_PARAMETERS, "policy.")

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
        for key, value, choices in (("policy.reading", cfg.policy.reading, POLICY_READINGS),
                                    ("cla.negative", cfg.cla.negative, CLA_NEGATIVES)):
            if value not in choices:
                raise ConfigError(f"method.{key}={value!r}: valid choices are {', '.join(choices)}")
        if cfg.cla.enabled and cfg.cla.negative == "hardest" and cfg.negatives not in cls.SCORED:
            raise ConfigError(f"method.cla.negative=hardest needs scored candidates: method.negatives="
                              f"{cfg.negatives!r} must be one of {', '.join(cls.SCORED)}")
        if not cfg.negatives_in_contrast and not cfg.cla.enabled and cfg.itm_weight == 0:
            raise ConfigError("method.negatives_in_contrast=false with method.cla.enabled=false and "
                              "method.itm_weight=0 leaves the sampled negatives unused: enable one of them")

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.curriculum = Curriculum(**cfg.schedule)
        self.policy = None
        if cfg.negatives == "bns" and cfg.policy.weight > 0:
            self.policy = PolicyNet(self.model.head["text"].out_features, cfg.policy.hidden)

    @property
    def trains_cross_attention(self) -> bool:
        return self.reranks or self.cfg.cla.enabled

    def select_negatives(self, batch: Batch, img: torch.Tensor, txt: torch.Tensor, step: int,
                         progress: float) -> tuple[Negatives | None, dict[str, torch.Tensor]]:
        if self.cfg.negatives != "bns":
            return super().select_negatives(batch, img, txt, step, progress)
        candidates = self.candidates(batch)
        scores, banked = self.candidate_scores(img, txt, candidates, step)  # detached
        alpha = self.curriculum.alpha(progress)
        # BS in logit units (× 1/temperature), the scale at which the contrastive loss sees it
        difficulty = self.logit_scale.detach() * scores
        scaled = self.cfg.policy.reading == "scaled"
        terms: dict[str, torch.Tensor] = {"alpha": torch.tensor(alpha)}
        learned = torch.zeros_like(scores)
        if self.policy is not None:
            learned = self.cfg.policy.bound * torch.tanh(self.policy(img.detach(), banked, scores))
        logits = -alpha * (difficulty + learned) if scaled else learned - alpha * difficulty
        if self.policy is not None:  # the policy's effect on the selection logits, against BS
            terms["policy_bs_corr"] = row_correlation((-alpha * learned if scaled else learned).detach(), scores)
        noise = batch.draw(candidates.shape[1:], self.rng["gumbel"])
        m = self.cfg.num_negatives
        pick = gumbel_topk_st(logits, self.cfg.policy.gumbel_tau, m, noise)
        if self.policy is not None:  # a loss term and statistics (keys ending in _loss are summed)
            reward = -alpha * scores if scaled else scores
            terms["policy_loss"] = -self.cfg.policy.weight * (pick * reward).sum(dim=1).mean() / m
        chosen = pick.detach().topk(m, dim=1).indices
        hardest = candidates.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
        return Negatives(torch.gather(candidates, 1, chosen), torch.gather(scores, 1, chosen), hardest=hardest), terms

    def extra_losses(self, batch: Batch, vision: Encoded, text: Encoded, negatives: Negatives | None
                     ) -> dict[str, torch.Tensor]:
        cla = self.cfg.cla
        if not cla.enabled or negatives is None:
            return {}
        if cla.negative == "hardest":
            captions, state = negatives.hardest, None
        else:
            captions, state = negatives.first()
        if state is None:
            with torch.set_grad_enabled(self.cfg.negative_grad):
                state = self.model.shared(self.train_split.text_tokens(captions), "text")
        # the positive and the negative caption against the same images: only the map is needed
        attn_pos, attn_neg = self.model.cross_map(torch.cat([text.shared, state]), vision.hidden).chunk(2)
        local, delta = cla_loss(attn_pos[:, 1:], attn_neg[:, 1:], cla.beta, cla.top)  # CLS query excluded
        return {"local_loss": cla.lambda_local * local.mean(), "delta_a": delta.detach().mean()}


def row_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the Pearson correlation of two [b, k] tensors (0 for a constant row)."""
    x, y = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
    denom = (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-12)
    return ((x * y).sum(dim=1) / denom).mean()
