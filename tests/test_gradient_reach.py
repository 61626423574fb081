"""Every registered method's loss terms reach the scores it is judged by (bacl/reach.py)."""
import copy
import dataclasses

import pytest
import torch

from bacl.reach import reach_problems
from bacl.registry import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_every_term_of_every_registered_method_reaches_an_evaluated_score(tiny_method, name):
    method = tiny_method(f"method={name}")
    assert reach_problems(method, method.batch(torch.arange(12))) == []


def test_a_trained_attention_that_no_score_uses_is_caught(tiny_method):
    """The harness's old design: CLA trains the cross-attention, nothing evaluated uses it."""
    method = tiny_method("method=cla_only", "method.itm_weight=0")
    problems = reach_problems(method, method.batch(torch.arange(12)))
    assert any(p.startswith("local_loss trains") and "cross_attn" in p for p in problems), problems


def detach(encoded):
    return dataclasses.replace(encoded, **{f.name: getattr(encoded, f.name).detach()
                                           for f in dataclasses.fields(encoded)})


def test_a_cla_map_detached_from_the_evaluated_model_is_caught(tiny_method):
    """CLA computed on a copy of the model: its gradient reaches nothing the evaluated model uses."""
    method = tiny_method("method=bacl")
    method.cla_copy = copy.deepcopy(method.model)
    real = method.extra_losses

    def detached(batch, vision, text, negatives):
        original, method.model = method.model, method.cla_copy
        try:
            return real(batch, detach(vision), detach(text), negatives)
        finally:
            method.model = original
    method.extra_losses = detached
    problems = reach_problems(method, method.batch(torch.arange(12)))
    assert any(p.startswith("local_loss sends no gradient") for p in problems), problems
