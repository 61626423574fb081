"""Held-out evaluation: dual-encoder and re-ranked retrieval, alignment margin, attention-error localisation.

Re-ranking follows ALBEF's and BLIP's evaluation: each query's dual-encoder top `rerank_k`
candidates are re-scored and ranked above the rest, which keep their dual-encoder order
(`rerank_{i2t,t2i}_R@k`). The new score is BLIP's, the match logit plus the dual-encoder
similarity, here in logit units (similarity / temperature) so neither term dominates by scale.
It is what makes the cross-attention, which CLA and ITM train, part of an evaluated score.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bacl.data.split import FeatureSplit
from bacl.data.synthetic import ambiguous_pairs
from bacl.metrics import retrieval_metrics
from bacl.model import MAX_LOGIT_SCALE, AlignmentModel

CHUNK = 1024


def _encode(model: AlignmentModel, tokens: torch.Tensor, modality: str) -> torch.Tensor:
    return torch.cat([model.encode(tokens[i:i + CHUNK].float(), modality).embedding
                      for i in range(0, len(tokens), CHUNK)])


def alignment_margin(scores: torch.Tensor, text_item: torch.Tensor) -> float:
    """Mean over items of (best positive caption score − best negative caption score)."""
    positive = text_item[None, :] == torch.arange(scores.shape[0], device=scores.device)[:, None]
    best_pos = scores.masked_fill(~positive, float("-inf")).amax(dim=1)
    best_neg = scores.masked_fill(positive, float("-inf")).amax(dim=1)
    return float((best_pos - best_neg).mean())


def ambiguous_accuracy(scores: torch.Tensor, split: FeatureSplit) -> dict[str, float]:
    """How often an item scores its own caption above a caption of an ambiguous sibling.

    Over every (anchor, sibling) pair differing in one attribute and every (own caption,
    sibling caption) pair; ties count half. 0.5 is chance: a model blind to the differing
    attribute.
    """
    anchor, negative, _ = ambiguous_pairs(split)
    if anchor.numel() == 0:
        return {}
    captions = split.captions_padded()  # [N, C], -1 where an item has fewer captions
    own, sib = captions[anchor], captions[negative]  # [P, C]
    rows = scores[anchor]
    pos = torch.gather(rows, 1, own.clamp_min(0))
    neg = torch.gather(rows, 1, sib.clamp_min(0))
    diff = pos[:, :, None] - neg[:, None, :]  # [P, C, C]
    valid = (own >= 0)[:, :, None] & (sib >= 0)[:, None, :]
    wins = (diff > 0).double() + 0.5 * (diff == 0).double()
    return {"ambiguous_acc": float(wins[valid].mean())}


def attention_localisation(model: AlignmentModel, split: FeatureSplit, max_pairs: int) -> dict[str, float]:
    """Does ΔA = |A⁺ − A⁻| point at the tokens that truly differ? (synthetic data only)

    For ambiguous pairs (anchor item, sibling differing in one attribute), A⁺ is the
    anchor's caption attending to the anchor and A⁻ the sibling's caption attending to the
    anchor. `ael` counts a hit when the largest cell of ΔA is (caption token, patch) of the
    differing attribute; `ael_text` / `ael_vision` when the caption row / patch column with
    the largest ΔA mass is that attribute's token. Chance levels are reported beside them.
    """
    anchor, negative, attribute = ambiguous_pairs(split)
    if anchor.numel() == 0:
        return {}
    keep = torch.linspace(0, anchor.numel() - 1, min(max_pairs, anchor.numel())).long()
    anchor, negative, attribute = anchor[keep], negative[keep], attribute[keep]
    first_caption = split.captions_padded()[:, 0]
    rows = []
    for i in range(0, anchor.numel(), CHUNK):
        a, n = anchor[i:i + CHUNK], negative[i:i + CHUNK]
        hidden = model.encode(split.vision[a].float(), "vision").hidden
        _, attn_pos = model.cross(model.shared(split.text[first_caption[a]].float(), "text"), hidden)
        _, attn_neg = model.cross(model.shared(split.text[first_caption[n]].float(), "text"), hidden)
        rows.append((attn_pos[:, 1:] - attn_neg[:, 1:]).abs().cpu())
    delta = torch.cat(rows)  # [P, Lt, Lv]
    text_tok = split.text_token_of_attribute.cpu()[attribute]
    vision_tok = split.vision_token_of_attribute.cpu()[attribute]
    lt, lv = delta.shape[1:]
    cell = delta.flatten(1).argmax(dim=1)
    return {
        "ael": float(((cell // lv == text_tok) & (cell % lv == vision_tok)).float().mean()),
        "ael_text": float((delta.sum(dim=2).argmax(dim=1) == text_tok).float().mean()),
        "ael_vision": float((delta.sum(dim=1).argmax(dim=1) == vision_tok).float().mean()),
        "ael_chance": 1.0 / (lt * lv), "ael_text_chance": 1.0 / lt, "ael_vision_chance": 1.0 / lv,
        "delta_a": float(delta.mean()), "ael_pairs": int(anchor.numel()),
    }


RERANK_ABOVE = 1e4  # re-scored candidates sit above every dual-encoder cosine, in match-logit order


def match_scores(model: AlignmentModel, text_shared: torch.Tensor, vision_hidden: torch.Tensor,
                 captions: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Match logits of (caption, item) index pairs of any equal shape, in chunks."""
    flat_c, flat_i = captions.flatten(), items.flatten()
    out = [model.cross(text_shared[flat_c[j:j + CHUNK]], vision_hidden[flat_i[j:j + CHUNK]])[0]
           for j in range(0, flat_c.numel(), CHUNK)]
    return torch.cat(out).view(captions.shape)


def reranked_retrieval(model: AlignmentModel, split: FeatureSplit, scores: torch.Tensor, k: int,
                       ks: Sequence[int]) -> dict[str, float]:
    """`rerank_{i2t,t2i}_R@k`: the dual-encoder shortlist of `k` per query re-scored by match + similarity / τ."""
    vision_hidden = torch.cat([model.encode(split.vision[i:i + CHUNK].float(), "vision").hidden
                               for i in range(0, split.n_items, CHUNK)])
    text_shared = torch.cat([model.shared(split.text[i:i + CHUNK].float(), "text")
                             for i in range(0, split.n_texts, CHUNK)])
    out, scale = {}, float(model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))
    for direction, dual in (("i2t", scores), ("t2i", scores.T)):
        top = dual.topk(min(k, dual.shape[1]), dim=1).indices  # [queries, k]
        queries = torch.arange(dual.shape[0], device=dual.device)[:, None].expand_as(top)
        captions, items = (top, queries) if direction == "i2t" else (queries, top)
        score = match_scores(model, text_shared, vision_hidden, captions, items) + scale * dual.gather(1, top)
        reranked = dual.scatter(1, top, RERANK_ABOVE + score)
        matrix = reranked if direction == "i2t" else reranked.T
        out.update({f"rerank_{key}": value for key, value in retrieval_metrics(matrix, split.text_item, ks).items()
                    if key.startswith(f"{direction}_R@")})
    return out


@torch.no_grad()
def evaluate(model: AlignmentModel, split: FeatureSplit, ks: Sequence[int],
             extra: Callable[[torch.Tensor], dict[str, float]] | None = None, max_pairs: int = 512,
             rerank_k: int = 0, cross_attention: bool = True) -> dict[str, float]:
    """Held-out metrics; `extra` adds a dataset's own metrics from the [items, captions] score matrix.

    `rerank_k > 0` adds re-ranked retrieval (only for a model whose match head was trained);
    `cross_attention=False` (nothing trained the cross-attention) leaves out the maps' AEL.
    """
    was_training = model.training
    model.eval()
    try:
        scores = _encode(model, split.vision, "vision") @ _encode(model, split.text, "text").T
        metrics = retrieval_metrics(scores, split.text_item, ks)
        metrics["margin"] = alignment_margin(scores, split.text_item)
        if extra is not None:
            metrics.update(extra(scores))
        if rerank_k > 0:
            metrics.update(reranked_retrieval(model, split, scores, rerank_k, ks))
        if split.attributes is not None:
            metrics.update(ambiguous_accuracy(scores, split))
            if cross_attention:
                metrics.update(attention_localisation(model, split, max_pairs))
        return metrics
    finally:
        model.train(was_training)
