"""Held-out evaluation: dual-encoder and re-ranked retrieval, alignment margin, attention-error localisation.

Re-ranking follows ALBEF's and BLIP's evaluation: each query's dual-encoder top `rerank_k`
candidates are re-scored and ranked above the rest, which keep their dual-encoder order
(`rerank_{i2t,t2i}_R@k`). The new score is BLIP's, the match logit plus the dual-encoder
similarity, here in logit units (similarity / temperature) so neither term dominates by scale.
It is what makes the cross-attention, which CLA and ITM train, part of an evaluated score.

Nothing here builds the [items x captions] score matrix: retrieval, margins and shortlists come
from `blockwise_retrieval` (peak memory O(block x captions)), and the metrics that need single
scores (ambiguous pairs, a dataset's extras) get a `PairScores`, which scores index pairs.
`max_items` evaluates the first items of the split (and their captions), for paper-scale test sets.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from bacl.data.split import FeatureSplit
from bacl.data.synthetic import ambiguous_pairs
from bacl.metrics import BlockwiseRetrieval, PairScores, blockwise_retrieval, recall_at, shortlist_first_rank
from bacl.model import MAX_LOGIT_SCALE, AlignmentModel

CHUNK = 1024


def first_items(split: FeatureSplit, max_items: int) -> FeatureSplit:
    """The split's first `max_items` items and their captions (0 or more than there are: the whole split)."""
    if max_items <= 0 or max_items >= split.n_items:
        return split
    keep = split.text_item < max_items
    per_item, per_text = ("vision", "attributes", "vision_pooled"), ("text", "text_item", "text_pooled")
    fields = {f.name: getattr(split, f.name) for f in dataclasses.fields(split)}
    fields.update({k: fields[k][:max_items] for k in per_item if fields[k] is not None})
    fields.update({k: fields[k][keep] for k in per_text if fields[k] is not None})
    return FeatureSplit(**fields)


def pair_scorer(items: torch.Tensor, texts: torch.Tensor) -> PairScores:
    """Dual-encoder scores of (item, caption) index pairs, from the two embedding matrices."""
    return lambda i, c: (items[i.to(items.device)] * texts[c.to(texts.device)]).sum(dim=-1)


def _encode(model: AlignmentModel, tokens: torch.Tensor, modality: str) -> torch.Tensor:
    return torch.cat([model.encode(tokens[i:i + CHUNK].float(), modality).embedding
                      for i in range(0, len(tokens), CHUNK)])


def ambiguous_accuracy(scores: PairScores, split: FeatureSplit) -> dict[str, float]:
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
    items = anchor[:, None].expand_as(own)
    pos, neg = scores(items, own.clamp_min(0)), scores(items, sib.clamp_min(0))
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


def reranked_retrieval(model: AlignmentModel, split: FeatureSplit, ranked: BlockwiseRetrieval,
                       ks: Sequence[int]) -> dict[str, float]:
    """`rerank_{i2t,t2i}_R@k`: each query's dual-encoder shortlist (`ranked.top`) re-scored by match + similarity / τ."""
    vision_hidden = torch.cat([model.encode(split.vision[i:i + CHUNK].float(), "vision").hidden
                               for i in range(0, split.n_items, CHUNK)])
    text_shared = torch.cat([model.shared(split.text[i:i + CHUNK].float(), "text")
                             for i in range(0, split.n_texts, CHUNK)])
    out, scale = {}, float(model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))
    text_item = split.text_item.to(vision_hidden.device)
    for direction in ("i2t", "t2i"):
        top = ranked.top[direction]  # [queries, k]
        queries = torch.arange(top.shape[0], device=top.device)[:, None].expand_as(top)
        captions, items = (top, queries) if direction == "i2t" else (queries, top)
        score = match_scores(model, text_shared, vision_hidden, captions, items) + scale * ranked.top_scores[direction]
        first = shortlist_first_rank(score, text_item[captions] == items, ranked.first_rank[direction])
        out.update(recall_at(f"rerank_{direction}", first, ks))
    return out


@torch.no_grad()
def evaluate(model: AlignmentModel, split: FeatureSplit, ks: Sequence[int],
             extra: Callable[[PairScores], dict[str, float]] | None = None, max_pairs: int = 512,
             rerank_k: int = 0, cross_attention: bool = True, max_items: int = 0) -> dict[str, float]:
    """Held-out metrics on the first `max_items` items (0: all), their count in `eval_items` and `eval_texts`.

    `extra` adds a dataset's own metrics from the scores of (item, caption) pairs.
    `rerank_k > 0` adds re-ranked retrieval (only for a model whose match head was trained);
    `cross_attention=False` (nothing trained the cross-attention) leaves out the maps' AEL.
    """
    was_training = model.training
    model.eval()
    try:
        split = first_items(split, max_items)
        items, texts = _encode(model, split.vision, "vision"), _encode(model, split.text, "text")
        ranked = blockwise_retrieval(items, texts, split.text_item, ks, block=CHUNK, top_k=rerank_k)
        metrics = {**ranked.metrics, "margin": float(ranked.margin.mean()),
                   "eval_items": split.n_items, "eval_texts": split.n_texts}
        scores = pair_scorer(items, texts)
        if extra is not None:
            metrics.update(extra(scores))
        if rerank_k > 0:
            metrics.update(reranked_retrieval(model, split, ranked, ks))
        if split.attributes is not None:
            metrics.update(ambiguous_accuracy(scores, split))
            if cross_attention:
                metrics.update(attention_localisation(model, split, max_pairs))
        return metrics
    finally:
        model.train(was_training)
