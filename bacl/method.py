"""A method turns a batch (plus its FAISS candidates) into named loss terms and statistics.

The base class is symmetric InfoNCE with a learnable temperature; negatives drawn from
the candidate pool join the image->text denominator. Baselines override one narrow hook:
`select_negatives` (which negatives), `direction_loss` (the per-query loss) or
`direction_weights` (how the two directions are mixed). Output keys ending in `_loss`
are summed into the objective (open_clip's convention); the other keys are statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bacl.errors import require
from bacl.data.split import FeatureSplit
from bacl.distributed import World
from bacl.losses import info_nce
from bacl.model import AlignmentModel, Encoded
from bacl.errors import ConfigError
from bacl.sampler import boundary_scores

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on 1 / temperature


@dataclass
class MethodConfig:
    name: str = ""
    negatives: str = "in_batch"  # in_batch | uniform | hardest (| bns for BACL)
    num_negatives: int = 1  # pool negatives per anchor
    negatives_in_contrast: bool = True  # do pool negatives join the InfoNCE denominator?
    init_temperature: float = 0.07
    learn_temperature: bool = True
    negative_grad: bool = False  # backpropagate through the pool negatives' text pass (False: one forward each)
    bank_refresh_steps: int = 0  # bank rows not rewritten by training for this many steps are re-encoded; 0: an epoch


@dataclass
class Batch:
    """This rank's rows of a global batch (all of it in a single process)."""
    global_items: torch.Tensor  # [B] item indices of the whole global batch
    rows: slice  # this rank's rows of it
    captions: torch.Tensor  # [b] the caption drawn for each local item
    vision: torch.Tensor  # [b, Lv, dv]
    text: torch.Tensor  # [b, Lt, dt]

    @property
    def items(self) -> torch.Tensor:
        return self.global_items[self.rows]

    def draw(self, shape_tail: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Uniform noise for the global batch, sliced: ranks draw exactly what one process would."""
        noise = torch.rand((self.global_items.shape[0], *shape_tail), generator=generator)
        return noise[self.rows].to(self.global_items.device)


@dataclass
class Negatives:
    captions: torch.Tensor  # [b, m] caption indices into the training split
    scores: torch.Tensor | None  # [b, m] boundary scores, when known
    shared: torch.Tensor | None = None  # [b, m, 1+Lt, W] their text state, when they were encoded


class Method(nn.Module):
    Config = MethodConfig
    NEGATIVES: tuple[str, ...] = ("in_batch", "uniform", "hardest")

    @classmethod
    def resolve(cls, cfg) -> None:
        """Validate (and fill derived defaults of) the method's config, before any training."""
        if cfg.negatives not in cls.NEGATIVES:
            raise ConfigError(f"method.negatives={cfg.negatives!r} is not valid for method {cfg.name!r}: "
                              f"valid choices are {', '.join(cls.NEGATIVES)}")
        require(cfg.num_negatives > 0, "method.num_negatives", cfg.num_negatives, "> 0")
        require(0 < cfg.init_temperature, "method.init_temperature", cfg.init_temperature, "> 0")
        require(cfg.bank_refresh_steps >= 0, "method.bank_refresh_steps", cfg.bank_refresh_steps, ">= 0")

    def __init__(self, cfg, model: AlignmentModel, train: FeatureSplit, pool: torch.Tensor,
                 steps_per_epoch: int, seed: int, world: World = World()):
        super().__init__()
        self.world = world
        if cfg.negatives != "in_batch" and cfg.num_negatives > pool.shape[1]:
            raise ConfigError(f"method.num_negatives={cfg.num_negatives} is larger than the pool: "
                              f"expected at most pool.k={pool.shape[1]}")
        self.cfg = cfg
        self.model = model
        self.train_split = train
        self.pool = pool
        self.model.logit_scale.requires_grad_(cfg.learn_temperature)
        self.refresh_every = cfg.bank_refresh_steps or steps_per_epoch
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.bank: torch.Tensor | None = None  # [M, W] text embeddings that score pool candidates
        self.bank_written: torch.Tensor | None = None  # [M] step at which each row was last written
        self.bank_step = -1

    # ---- hooks -------------------------------------------------------------------------
    def select_negatives(self, batch: Batch, img: torch.Tensor, txt: torch.Tensor, step: int,
                         progress: float) -> tuple[Negatives | None, dict[str, torch.Tensor]]:
        if self.cfg.negatives == "in_batch":
            return None, {}
        candidates = self.candidates(batch)  # [b, k]
        m = self.cfg.num_negatives
        if self.cfg.negatives == "uniform":
            pick = batch.draw(candidates.shape[1:], self.generator).argsort(dim=1)[:, :m]
            return Negatives(torch.gather(candidates, 1, pick), None), {}
        scores = self.candidate_scores(img, txt, candidates, step)
        top = scores.topk(m, dim=1)
        return Negatives(torch.gather(candidates, 1, top.indices), top.values), {}

    def direction_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[b, C] logits, positive of row i in column labels[i] -> [b] per-query loss."""
        return info_nce(logits, labels)

    def direction_weights(self, sims: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Weights of (image->text, text->image); `sims` is the global [B, B] cosine matrix."""
        return 0.5, 0.5

    def extra_losses(self, batch: Batch, vision: Encoded, text: Encoded, negatives: Negatives | None
                     ) -> dict[str, torch.Tensor]:
        return {}

    # ---- shared machinery ----------------------------------------------------------------
    def candidates(self, batch: Batch) -> torch.Tensor:
        """[b, k] one random caption of each FAISS candidate item of each local anchor."""
        drawn = self.train_split.random_caption(self.pool[batch.global_items], self.generator)
        return drawn[batch.rows]

    @torch.no_grad()
    def _refresh_bank(self, step: int) -> None:
        """Re-encode the rows training has not rewritten lately (all of them the first time)."""
        text = self.train_split.text
        if self.bank is None:
            self.bank = torch.empty(text.shape[0], self.model.head["text"].out_features, device=text.device)
            self.bank_written = torch.full((text.shape[0],), -self.refresh_every, device=text.device)
        stale = torch.nonzero(step - self.bank_written >= self.refresh_every).squeeze(1)
        for rows in stale.split(1024):
            self.bank[rows] = self.model.encode(text[rows].float(), "text").embedding.float()
        self.bank_written[stale] = step
        self.bank_step = step

    @torch.no_grad()
    def _write_bank(self, captions: torch.Tensor, embeddings: torch.Tensor, step: int) -> None:
        """Training encodes these captions anyway: keep their fresh embeddings (every rank the same rows)."""
        captions, embeddings = self.world.gather(captions), self.world.gather(embeddings.detach())
        self.bank[captions] = embeddings.float()
        self.bank_written[captions] = step

    def candidate_scores(self, img: torch.Tensor, txt: torch.Tensor, candidates: torch.Tensor,
                         step: int) -> torch.Tensor:
        """Boundary scores of [B, k] candidate captions, from a periodically refreshed bank."""
        if self.bank is None or step - self.bank_step >= self.refresh_every:
            self._refresh_bank(step)
        return boundary_scores(img.detach(), txt.detach(), self.bank[candidates])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def contrastive(self, img: torch.Tensor, txt: torch.Tensor, neg: torch.Tensor | None,
                    rows: slice) -> torch.Tensor:
        """Local rows against the gathered global batch (open_clip's local loss)."""
        all_img, all_txt = self.world.gather(img), self.world.gather(txt)
        labels = torch.arange(rows.start, rows.stop, device=img.device)
        i2t = img @ all_txt.T
        if neg is not None:
            i2t = torch.cat([i2t, torch.einsum("bd,bmd->bm", img, neg)], dim=1)
        w_i2t, w_t2i = self.direction_weights((all_img @ all_txt.T).detach())
        scale = self.logit_scale
        return (w_i2t * self.direction_loss(scale * i2t, labels).mean()
                + w_t2i * self.direction_loss(scale * (txt @ all_img.T), labels).mean())

    def forward(self, batch: Batch, step: int, progress: float) -> dict[str, torch.Tensor]:
        vision = self.model.encode(batch.vision, "vision")
        text = self.model.encode(batch.text, "text")
        img, txt = vision.embedding, text.embedding
        negatives, out = self.select_negatives(batch, img, txt, step, progress)
        neg = None
        if negatives is not None and self.cfg.negatives_in_contrast:
            b, m = negatives.captions.shape
            with torch.set_grad_enabled(self.cfg.negative_grad):
                encoded = self.model.encode(self.train_split.text[negatives.captions.flatten()].float(), "text")
            neg = encoded.embedding.view(b, m, -1)
            negatives.scores = boundary_scores(img, txt, neg).detach()
            negatives.shared = encoded.shared.view(b, m, *encoded.shared.shape[1:])
        if negatives is not None and negatives.scores is not None:
            out["boundary_score"] = negatives.scores.mean()
        if self.bank is not None:  # one gather for every caption this step encoded
            captions, embeddings = batch.captions, txt
            if neg is not None:
                captions = torch.cat([captions, negatives.captions.flatten()])
                embeddings = torch.cat([embeddings, neg.flatten(0, 1)])
            self._write_bank(captions, embeddings, step)
        out["contrastive_loss"] = self.contrastive(img, txt, neg, batch.rows)
        out.update(self.extra_losses(batch, vision, text, negatives))
        out["temperature"] = 1.0 / self.logit_scale.detach()
        return out
