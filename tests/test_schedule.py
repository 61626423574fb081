import math

import pytest

from bacl.config import load_config
from bacl.schedule import SHAPES, Curriculum


def curriculum(shape: str, **kw) -> Curriculum:
    cfg = load_config([f"method.schedule.shape={shape}", *(f"method.schedule.{k}={v}" for k, v in kw.items())])
    return Curriculum(**cfg.method.schedule)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_endpoints_and_monotone_decrease(shape):
    c = curriculum(shape)
    early, late, _, _ = SHAPES[shape]
    assert c.alpha(0.0) == pytest.approx(early, abs=1e-12)
    assert c.alpha(1.0) == pytest.approx(late, abs=1e-12)
    values = [c.alpha(i / 200) for i in range(201)]
    assert all(b < a for a, b in zip(values, values[1:]))
    assert c.alpha(-0.5) == c.alpha(0.0) and c.alpha(1.5) == c.alpha(1.0)


def test_default_is_the_papers_triple():
    cfg = load_config([])
    s = cfg.method.schedule
    assert (s.alpha_early, s.alpha_late, s.gamma) == (0.3, -0.5, 1.5)


def test_matches_hand_computed_logistic():
    # alpha = ae + (al - ae) * (sig(g*S*(eta-m)) - sig(-g*S*m)) / (sig(g*S*(1-m)) - sig(-g*S*m))
    c = curriculum("default")
    sig = lambda x: 1 / (1 + math.exp(-x))
    lo, hi = sig(1.5 * 10 * -0.5), sig(1.5 * 10 * 0.5)
    expected = 0.3 + (-0.8) * (sig(1.5 * 10 * (0.3 - 0.5)) - lo) / (hi - lo)
    assert c.alpha(0.3) == pytest.approx(expected, rel=1e-12)
    assert c.alpha(0.5) == pytest.approx(-0.1, abs=1e-12)  # symmetric around the midpoint


def test_shapes_differ_as_named():
    d, a, s = curriculum("default"), curriculum("aggressive"), curriculum("shallow")
    # aggressive reaches hard negatives (alpha < 0) earlier than default; shallow is nearly linear
    first_negative = lambda c: next(i / 1000 for i in range(1001) if c.alpha(i / 1000) < 0)
    assert first_negative(a) < first_negative(d)
    linear = lambda eta: 0.1 + (-0.3) * eta
    assert max(abs(s.alpha(i / 10) - linear(i / 10)) for i in range(11)) < 0.03


def test_override_wins_over_shape_and_constant_kind():
    c = curriculum("aggressive", gamma=2.0)
    assert c.gamma == 2.0 and c.alpha_late == SHAPES["aggressive"][1]
    const = Curriculum(**load_config(["method=bns_no_curriculum"]).method.schedule)
    assert const.alpha(0.0) == const.alpha(0.7) == -0.5
