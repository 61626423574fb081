"""A method turns a batch (plus its FAISS candidates) into named loss terms and statistics.

The base class is symmetric InfoNCE with a learnable temperature; negatives drawn from
the candidate pool join the image->text denominator. Baselines override one narrow hook:
`select_negatives` (which negatives), `direction_loss` (the per-query loss) or
`direction_weights` (how the two directions are mixed). Output keys ending in `_loss`
are summed into the objective (open_clip's convention); the other keys are statistics.

Every method also trains the cross-modal match head (ALBEF's ITM) when `itm_weight > 0`:
each anchor's caption against its image (a match), and against the same image an in-batch
hard negative sampled in proportion to softmax(similarity / temperature), as ALBEF does,
plus, for a pool method, its own top negative (no match).
That match score re-ranks the dual-encoder shortlist at evaluation (`rerank_*` metrics),
so the cross-attention every arm trains is judged, and arms differ only in what they add.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bacl.bank import EmbeddingBank
from bacl.batch import Batch, Negatives
from bacl.data.split import FeatureSplit
from bacl.distributed import World
from bacl.errors import ConfigError, require
from bacl.losses import info_nce
from bacl.model import MAX_LOGIT_SCALE, AlignmentModel, Encoded, build_model
from bacl.registry import METHODS
from bacl.rng import Generators, stream_seed
from bacl.sampler import boundary_scores, gumbel

BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class MethodConfig:
    name: str = ""
    negatives: str = "in_batch"  # in_batch | uniform | uniform_data | hardest (| bns for BACL)
    num_negatives: int = 1  # pool negatives per anchor
    negatives_in_contrast: bool = True  # do pool negatives join the InfoNCE denominator?
    init_temperature: float = 0.07
    learn_temperature: bool = True
    negative_grad: bool = False  # backpropagate through the pool negatives' text pass (False: one forward each)
    bank_refresh_steps: int = 0  # bank rows not rewritten by training for this many steps are re-encoded; 0: an epoch
    itm_weight: float = 1.0  # weight of the match (ITM) loss on the method's own negatives; 0: no match head training
    bank_dtype: str = "float32"  # the candidate-score bank's storage (host memory, sharded over ranks): or float16, bfloat16


class Method(nn.Module):
    Config = MethodConfig
    NEGATIVES: tuple[str, ...] = ("in_batch", "uniform", "uniform_data", "hardest")
    SCORED: tuple[str, ...] = ("hardest",)  # negative kinds that need the candidate-score bank
    # Terms and parameters that shape training but reach no evaluated score by design
    # (tests/test_gradient_reach.py checks every other term and parameter does; the report lists these).
    TRAINING_ONLY_TERMS: tuple[str, ...] = ()
    TRAINING_ONLY_PARAMETERS: tuple[str, ...] = ("model.logit_scale",)  # the temperature scales training logits only

    @classmethod
    def resolve(cls, cfg) -> None:
        """Validate (and fill derived defaults of) the method's config, before any training."""
        if cfg.negatives not in cls.NEGATIVES:
            raise ConfigError(f"method.negatives={cfg.negatives!r} is not valid for method {cfg.name!r}: "
                              f"valid choices are {', '.join(cls.NEGATIVES)}")
        require(cfg.num_negatives > 0, "method.num_negatives", cfg.num_negatives, "> 0")
        require(0 < cfg.init_temperature, "method.init_temperature", cfg.init_temperature, "> 0")
        require(cfg.bank_refresh_steps >= 0, "method.bank_refresh_steps", cfg.bank_refresh_steps, ">= 0")
        require(cfg.itm_weight >= 0, "method.itm_weight", cfg.itm_weight, ">= 0")
        require(cfg.bank_dtype in BANK_DTYPES, "method.bank_dtype", cfg.bank_dtype, " or ".join(BANK_DTYPES))

    def __init__(self, cfg, model: AlignmentModel, train: FeatureSplit, pool: torch.Tensor, seed: int,
                 refresh_every: int, world: World = World()):
        """`pool`: [N, k] candidate items per training item; `refresh_every`: the bank's staleness limit in steps."""
        super().__init__()
        if cfg.negatives != "in_batch" and cfg.num_negatives > pool.shape[1]:
            raise ConfigError(f"method.num_negatives={cfg.num_negatives} is larger than the pool: "
                              f"expected at most pool.k={pool.shape[1]}")
        self.cfg = cfg
        self.world = world
        self.model = model
        self.train_split = train
        self.pool = pool
        self.model.logit_scale.requires_grad_(cfg.learn_temperature)
        self.rng = Generators(seed, ("captions", "negatives", "gumbel", "itm"))
        self.bank = (EmbeddingBank(train.n_texts, model.head["text"].out_features, refresh_every, world,
                                   BANK_DTYPES[cfg.bank_dtype])
                     if cfg.negatives in self.SCORED else None)  # only scored negatives need it

    def batch(self, global_items: torch.Tensor) -> Batch:
        """This rank's rows of a global batch of items, each with a randomly drawn caption."""
        split, rows = self.train_split, self.world.rows(global_items.shape[0])
        items = global_items[rows].to(split.device)
        captions = split.caption_at(items, torch.rand(global_items.shape, generator=self.rng["captions"])[rows])
        return Batch(items, rows, global_items.shape[0], captions, split.vision_tokens(items),
                     split.text_tokens(captions))

    def stream_batch(self, captions: torch.Tensor, items: torch.Tensor, vision: torch.Tensor, text: torch.Tensor,
                     global_size: int) -> Batch:
        """This rank's rows of a global batch read from a stream: its items, their drawn captions, their features."""
        device = self.train_split.device
        return Batch(items.to(device), self.world.rows(global_size), global_size, captions.to(device),
                     vision.to(device).float(), text.to(device).float())

    # ---- hooks -------------------------------------------------------------------------
    def select_negatives(self, batch: Batch, img: torch.Tensor, txt: torch.Tensor, step: int,
                         progress: float) -> tuple[Negatives | None, dict[str, torch.Tensor]]:
        if self.cfg.negatives == "in_batch":
            return None, {}
        m = self.cfg.num_negatives
        if self.cfg.negatives == "uniform_data":
            return Negatives(self.uniform_data_captions(batch, m), None), {}
        candidates = self.candidates(batch)  # [b, k]
        if self.cfg.negatives == "uniform":
            pick = batch.draw(candidates.shape[1:], self.rng["negatives"]).argsort(dim=1)[:, :m]
            return Negatives(torch.gather(candidates, 1, pick), None), {}
        scores, _ = self.candidate_scores(img, txt, candidates, step)
        top = scores.topk(m, dim=1)
        return Negatives(torch.gather(candidates, 1, top.indices), top.values, hardest=candidates.gather(
            1, top.indices[:, :1]).squeeze(1)), {}

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
        candidates = self.pool[batch.items].to(batch.items.device)
        return self.train_split.caption_at(candidates, batch.draw(candidates.shape[1:], self.rng["negatives"]))

    def uniform_data_captions(self, batch: Batch, m: int) -> torch.Tensor:
        """[b, m] captions of items drawn uniformly from the whole training set, the anchor's own excluded.

        Theorem 4.2's uniform sampling is over the data, not over a FAISS pool of neighbours.
        """
        n = self.train_split.n_items
        other = (batch.draw((m,), self.rng["negatives"]) * (n - 1)).long().clamp_max(n - 2)
        items = other + (other >= batch.items[:, None]).long()  # skip the anchor's own index
        return self.train_split.caption_at(items, batch.draw((m,), self.rng["negatives"]))

    @property
    def reranks(self) -> bool:
        """Whether the trained match head re-ranks retrieval at evaluation (it is trained only with ITM)."""
        return self.cfg.itm_weight > 0

    @property
    def trains_cross_attention(self) -> bool:
        """Whether any term trains the cross-attention, so its maps (AEL, the heat map) mean something."""
        return self.reranks

    def sibling_fraction(self, batch: Batch, negatives: Negatives) -> torch.Tensor | None:
        """Share of sampled negatives whose item differs from the anchor's in exactly one attribute (synthetic only)."""
        attributes = self.train_split.attributes
        if attributes is None:
            return None
        negative_items = self.train_split.item_of(negatives.captions)  # [b, m]
        differing = (attributes[negative_items] != attributes[batch.items][:, None]).sum(dim=-1)
        return (differing == 1).float().mean()

    def match_loss(self, batch: Batch, vision: Encoded, text: Encoded, negatives: Negatives | None
                   ) -> dict[str, torch.Tensor]:
        """ITM: BCE of the match score, 1 for (caption, its image), 0 for the image with each of its negatives.

        Every arm uses an in-batch hard negative sampled ∝ softmax(sim / τ) (ALBEF), so the head
        learns coarse matching, which re-ranking a mixed shortlist needs; a pool method adds its own
        top negative, so what it samples also trains the head.
        """
        if not self.reranks:
            return {}
        all_txt, all_shared = self.world.gather(text.embedding), self.world.gather(text.shared)
        sims = self.logit_scale.detach() * (vision.embedding.detach() @ all_txt.detach().T)
        own = torch.arange(batch.rows.start, batch.rows.stop, device=sims.device)
        sims[torch.arange(sims.shape[0], device=sims.device), own] = float("-inf")
        noise = gumbel(batch.draw(sims.shape[1:], self.rng["itm"]))  # Gumbel-max: a sample ∝ softmax(sims)
        states = [text.shared, all_shared[(sims + noise).argmax(dim=1)]]
        if negatives is not None:
            captions, own_negative = negatives.first()
            if own_negative is None or not self.cfg.negative_grad:
                # with gradient whatever `negative_grad` says: if only the positive caption's state could move,
                # the cheapest way to lower the loss is to make every caption "match" (it collapsed the model)
                own_negative = self.model.shared(self.train_split.text_tokens(captions), "text")
            states.append(own_negative)
        match, _ = self.model.cross(torch.cat(states), vision.hidden.repeat(len(states), 1, 1))
        target = torch.zeros_like(match)
        target[: len(text.shared)] = 1.0
        return {"itm_loss": self.cfg.itm_weight * F.binary_cross_entropy_with_logits(match, target)}

    def candidate_scores(self, img: torch.Tensor, txt: torch.Tensor, candidates: torch.Tensor,
                         step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([b, k] boundary scores, [b, k, D] banked embeddings) of candidate captions (the bank refreshed when due).

        One bank lookup a step: with several ranks it is a collective exchange of rows between their owners."""
        if self.bank.due(step):
            self.bank.refresh(step, self.train_split.text_tokens, lambda t: self.model.encode(t, "text").embedding)
        banked = self.bank.lookup(candidates)
        return boundary_scores(img.detach(), txt.detach(), banked), banked

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
                encoded = self.model.encode(self.train_split.text_tokens(negatives.captions.flatten()), "text")
            neg = encoded.embedding.view(b, m, -1)
            negatives.scores = boundary_scores(img, txt, neg).detach()
            negatives.shared = encoded.shared.view(b, m, *encoded.shared.shape[1:])
        if negatives is not None and negatives.scores is not None:
            out["boundary_score"] = negatives.scores.mean()
        if negatives is not None and (siblings := self.sibling_fraction(batch, negatives)) is not None:
            out["sibling_fraction"] = siblings
        if self.bank is not None:  # one gather for every caption this step encoded
            captions, embeddings = batch.captions, txt
            if neg is not None:
                captions = torch.cat([captions, negatives.captions.flatten()])
                embeddings = torch.cat([embeddings, neg.flatten(0, 1)])
            self.bank.write(captions, embeddings.detach(), step)  # each row to its owner rank
        out["contrastive_loss"] = self.contrastive(img, txt, neg, batch.rows)
        out.update(self.match_loss(batch, vision, text, negatives))
        out.update(self.extra_losses(batch, vision, text, negatives))
        out["temperature"] = 1.0 / self.logit_scale.detach()
        return out


def build_method(cfg: DictConfig, train: FeatureSplit, pool: torch.Tensor, world: World = World()) -> Method:
    """The registered method of run config `cfg` with a fresh model, for a training split and its [N, k] pool.

    The initial weights come from the run's `model_init` stream (torch's global generator is seeded
    with it), so every method at one seed starts from the same model.
    """
    batch_size = min(cfg.train.batch_size, train.n_items)
    torch.manual_seed(stream_seed(cfg.seed, "model_init"))
    model = build_model(cfg.model, train, cfg.method.init_temperature)
    method_cls = METHODS.entry(cfg.method.name).load()
    refresh_every = cfg.method.bank_refresh_steps or train.n_items // batch_size  # 0: once an epoch
    return method_cls(cfg.method, model, train, pool, cfg.seed, refresh_every, world)
