"""Re-ranked retrieval, the ITM negatives, uniform-over-data negatives, the sibling fraction and
a policy that can follow the curriculum, each against an independent reference."""
import torch

from bacl.bacl_method import row_correlation
from bacl.evaluate import evaluate
from bacl.sampler import PolicyNet, gumbel_topk_st


def test_reranked_retrieval_equals_a_per_query_loop(tiny_method):
    method = tiny_method("method=clip_itm")
    model, split = method.model.eval(), method.train_split
    k = 5
    ours = evaluate(model, split, [1, 5], rerank_k=k)
    with torch.no_grad():
        img = model.encode(split.vision.float(), "vision")
        txt = model.encode(split.text.float(), "text")
        dual = img.embedding @ txt.embedding.T
        hits = []
        for i in range(split.n_items):
            short = dual[i].topk(k).indices.tolist()
            scale = float(model.logit_scale.exp().clamp(max=100))
            match = {c: float(model.cross(txt.shared[[c]], img.hidden[[i]])[0]) + scale * float(dual[i, c])
                     for c in short}
            order = sorted(short, key=lambda c: -match[c]) + [c for c in dual[i].argsort(descending=True).tolist()
                                                               if c not in short]
            hits.append(int(split.text_item[order[0]]) == i)
    assert abs(ours["rerank_i2t_R@1"] - 100 * sum(hits) / len(hits)) < 1e-9
    assert ours["rerank_i2t_R@5"] >= ours["rerank_i2t_R@1"] and "rerank_t2i_R@1" in ours
    assert "rerank_i2t_R@1" not in evaluate(model, split, [1], rerank_k=0)


def test_uniform_data_negatives_cover_the_data_and_never_the_anchor(tiny_method):
    method = tiny_method("method=uniform_data", "method.num_negatives=6")
    n = method.train_split.n_items
    counts = torch.zeros(n)
    for start in range(0, 60 * 12, 12):
        items = torch.arange(start, start + 12) % n
        batch = method.batch(items)
        negatives, _ = method.select_negatives(batch, None, None, 0, 0.0)
        neg_items = method.train_split.text_item[negatives.captions]
        assert not (neg_items == items[:, None]).any()
        counts += torch.bincount(neg_items.flatten(), minlength=n)
    expected = counts.sum() / n  # uniform over items: 60 draws each, a Poisson-like spread
    assert (counts > 0).float().mean() > 0.99 and (counts - expected).abs().max() < 5 * expected.sqrt()


def test_sibling_fraction_counts_negatives_one_attribute_away(tiny_method):
    method = tiny_method("method=hardest", "method.num_negatives=3")
    batch = method.batch(torch.arange(12))
    picked, select = [], method.select_negatives
    method.select_negatives = lambda *a: picked.append(select(*a)) or picked[-1]
    out = method(batch, step=0, progress=0.0)
    attrs, item_of = method.train_split.attributes.tolist(), method.train_split.text_item.tolist()
    siblings = [sum(a != b for a, b in zip(attrs[anchor], attrs[item_of[c]])) == 1
                for anchor, row in zip(batch.items.tolist(), picked[0][0].captions.tolist()) for c in row]
    assert 0 < sum(siblings) < len(siblings)
    assert abs(float(out["sibling_fraction"]) - sum(siblings) / len(siblings)) < 1e-6


def policy_effect_after_training(reading: str, alpha: float, steps: int = 300) -> float:
    """Correlation with BS of a trained policy's effect on the selection logits, at curriculum value `alpha`.

    The policy is trained on both phases of the curriculum (α = ±0.5, interleaved), as BACL's is over a run.
    """
    torch.manual_seed(0)
    policy = PolicyNet(dim=4, hidden=32)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)

    def logits_and_effect(a: float, anchor, cands, bs):
        learned = 2.0 * torch.tanh(policy(anchor, cands, bs))
        if reading == "scaled":
            return -a * (bs + learned), -a * learned
        return learned - a * bs, learned

    def draw():
        return torch.randn(64, 4, generator=g), torch.randn(64, 8, 4, generator=g), torch.randn(64, 8, generator=g)
    for step in range(steps):
        a = 0.5 if step % 2 else -0.5
        anchor, cands, bs = draw()
        logits, _ = logits_and_effect(a, anchor, cands, bs)
        pick = gumbel_topk_st(logits, 1.0, 1, torch.rand(bs.shape, generator=g))
        reward = -a * bs if reading == "scaled" else bs
        loss = -(pick * reward).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    anchor, cands, bs = draw()
    with torch.no_grad():
        return float(row_correlation(logits_and_effect(alpha, anchor, cands, bs)[1], bs))


def test_the_scaled_policy_follows_the_curriculum_and_the_literal_one_does_not():
    assert policy_effect_after_training("scaled", +0.5) < -0.5  # early: its effect favours easy negatives (low BS)
    assert policy_effect_after_training("scaled", -0.5) > 0.5  # late: hard ones
    literal = policy_effect_after_training("literal", +0.5), policy_effect_after_training("literal", -0.5)
    assert literal[0] > 0.5 and literal[1] > 0.5  # "harder is better" in both phases


def test_max_items_evaluates_the_first_items_and_their_captions(tiny_method):
    from bacl.evaluate import first_items

    method = tiny_method("method=clip_itm")
    model, split = method.model.eval(), method.train_split
    n = split.n_items // 3
    head = first_items(split, n)
    assert head.n_items == n and torch.equal(head.text_item, split.text_item[split.text_item < n])
    assert torch.equal(head.text, split.text[split.text_item < n])
    ours = evaluate(model, split, [1, 5], rerank_k=3, max_items=n)
    assert ours == evaluate(model, head, [1, 5], rerank_k=3)
    assert ours["eval_items"] == n and ours["eval_texts"] == head.n_texts
    assert evaluate(model, split, [1], max_items=0)["eval_items"] == split.n_items
