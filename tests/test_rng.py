"""Common random numbers: arms at one seed share model init, batch order and caption draws;
streams of different purposes or seeds never coincide."""
import numpy as np
import torch

from bacl.rng import PURPOSES, stream_seed
from bacl.trainer import Trainer


def test_stream_seeds_are_spawned_children_of_the_run_seed():
    children = np.random.SeedSequence(7).spawn(len(PURPOSES))
    for i, purpose in enumerate(PURPOSES):
        expected = int(children[i].generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        assert stream_seed(7, purpose) == expected
    seeds = {stream_seed(s, p, *key) for s in range(50) for p in PURPOSES for key in ((), (0,), (1,))}
    assert len(seeds) == 50 * len(PURPOSES) * 3  # no two streams of any seed, purpose or epoch coincide


def test_methods_at_one_seed_share_init_and_caption_draws(tiny_method):
    clip, bacl = tiny_method("method=clip"), tiny_method("method=bacl")
    model_a, model_b = clip.model.state_dict(), bacl.model.state_dict()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    for start in (0, 12, 24):  # bacl draws pool candidates, Gumbel noise and ITM negatives in between
        a, b = clip.batch(torch.arange(start, start + 12)), bacl.batch(torch.arange(start, start + 12))
        assert torch.equal(a.captions, b.captions)
        bacl(b, step=start // 12, progress=0.5)
        clip(a, step=start // 12, progress=0.5)
    other = tiny_method("method=clip", "seed=1")
    assert not torch.equal(other.model.proj["text"].weight, clip.model.proj["text"].weight)


def test_epoch_order_is_shared_by_methods_and_differs_by_seed_and_epoch(tiny_config):
    def order(*overrides: str, epoch: int = 0) -> torch.Tensor:
        trainer = Trainer(tiny_config(*overrides))
        trainer.build()
        return trainer._epoch_order(epoch)
    assert torch.equal(order("method=clip"), order("method=hardest"))
    assert not torch.equal(order("method=clip"), order("method=clip", "seed=1"))
    assert not torch.equal(order("method=clip"), order("method=clip", epoch=1))
