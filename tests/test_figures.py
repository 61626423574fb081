"""Figures a reviewer can read: a fixed style per method, n and the error measure on the figure,
dot plots around chance, the reference marked, coinciding lines both visible."""
import pandas as pd
import pytest

from analysis import figures
from analysis.styles import reference, style


@pytest.fixture
def drawn(monkeypatch):
    """The figures the functions draw, kept open instead of saved."""
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, name: kept.append(fig) or [])
    yield kept
    for fig in kept:
        figures.plt.close(fig)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()] + \
           [legend.get_title().get_text() for legend in fig.legends]


def curves(methods, seeds=3) -> pd.DataFrame:
    return pd.DataFrame([{"run": f"{m}{s}", "method": m, "progress": eta, "train/boundary_score": -eta + 0.01 * s}
                         for m in methods for s in range(seeds) for eta in (0.5, 1.0)])


def final(values: dict[str, list[float]], metric: str = "ambiguous_acc") -> pd.DataFrame:
    return pd.DataFrame([{"status": "ok", "cfg.method.name": m, metric: v, "cfg.pool.k": k}
                         for m, vs in values.items() for v in vs for k in (10, 20)])


def test_every_method_has_one_style_everywhere_and_related_methods_differ_in_marker_and_line():
    assert style("bacl") == style("bacl")
    a, b = style("bacl"), style("bns_only")
    assert a["marker"] != b["marker"] and a["linestyle"] != b["linestyle"] and a["color"] != b["color"]
    assert style("a_method_registered_later") == style("a_method_registered_later")  # from the name alone
    assert reference(["clip", "bacl", "hcl"]) == "bacl" and reference(["clip", "hcl"]) == "clip"


def test_curves_of_few_methods_share_an_axes_with_n_and_the_error_measure_in_the_legend(drawn, tmp_path):
    figures.curve_by_method(curves(["bacl", "bns_only"]), "train/boundary_score", "BS", "t", tmp_path, "bs")
    (fig,) = drawn
    texts = legend_texts(fig)
    assert "bacl (n=3), reference" in texts and "bns_only (n=3)" in texts
    assert any("std" in t for t in texts)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    ref, other = lines["bacl (n=3), reference"], lines["bns_only (n=3)"]
    assert (ref.get_marker(), ref.get_linestyle()) != (other.get_marker(), other.get_linestyle())
    assert other.get_zorder() > ref.get_zorder()  # the thin line is drawn over the thick reference: both show


def test_curves_of_many_methods_get_one_panel_each_with_the_reference_behind(drawn, tmp_path):
    methods = ["bacl", "bns_only", "cla_only", "clip", "hcl"]
    figures.curve_by_method(curves(methods), "train/boundary_score", "BS", "t", tmp_path, "bs")
    (fig,) = drawn
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["bacl (n=3), reference", "bns_only (n=3)", "cla_only (n=3)",
                                                   "clip (n=3)", "hcl (n=3)"]
    assert "std over seeds" in fig.get_supylabel()
    assert all(len(ax.get_lines()) == 2 for ax in visible[1:])  # the method and the reference's mean


def test_final_metrics_are_dot_plots_around_chance_with_every_seed(drawn, tmp_path):
    runs = final({"bacl": [0.51, 0.52, 0.53], "clip": [0.50, 0.505, 0.51], "hcl": [0.52, 0.53, 0.54]})
    figures.metric_by_method(runs, "ambiguous_acc", tmp_path, "amb", chance=0.5)
    (fig,) = drawn
    ax = fig.axes[0]
    assert not ax.patches  # no bars
    low, high = ax.get_xlim()
    assert 45 < low < 50 < high < 60  # around the data and chance (percent), not from 0
    assert any(list(line.get_xdata()) == [50, 50] for line in ax.get_lines())  # chance drawn
    ticks = {t.get_text(): t.get_fontweight() for t in ax.get_yticklabels()}
    assert ticks == {"clip (n=6)": "normal", "bacl (n=6)": "bold", "hcl (n=6)": "normal"}  # two k values x 3 seeds
    texts = legend_texts(fig)
    assert "mean ± 95 % CI (t) over seeds" in texts and "bacl (reference) mean" in texts and "chance (50)" in texts
    points = sum(len(c.get_offsets()) for c in ax.collections if len(c.get_offsets()) > 1)
    assert points == 18  # every seed drawn


def test_metric_against_an_axis_names_n_and_the_error_measure(drawn, tmp_path):
    runs = final({"bacl": [50.0, 52.0], "clip": [40.0, 41.0]}, metric="i2t_R@1")
    figures.metric_vs_axis(runs, "cfg.pool.k", "i2t_R@1", tmp_path, "k")
    (fig,) = drawn
    texts = legend_texts(fig)
    assert "bacl (n=2 per point), reference" in texts and "clip (n=2 per point)" in texts
    assert any("std over seeds" in t for t in texts)
