"""One look per method name (colour, marker, line style), the same in every figure of every report.

A style follows from the name alone, never from which methods a figure happens to hold, so
`bacl` is the same red circle with a solid line in a two-method figure and in a fifteen-method
one. Methods the paper compares have a fixed entry; a method registered later gets one from a
hash of its name (stable across runs and machines). Markers and line styles differ between
methods of one family, so lines that coincide (bacl and bns_only often do) stay apart.
"""
from __future__ import annotations

import zlib

# method: (colour, marker, line style)
FIXED: dict[str, tuple[str, str, str]] = {
    "bacl": ("#d62728", "o", "-"),
    "bns_only": ("#ff7f0e", "s", "--"),
    "cla_only": ("#2ca02c", "^", "-."),
    "bns_no_curriculum": ("#bcbd22", "v", ":"),
    "bns_curriculum_only": ("#8c564b", "<", "--"),
    "itm_hardest": ("#e377c2", ">", "-."),
    "clip": ("#1f77b4", "D", "-"),
    "clip_itm": ("#17becf", "d", "--"),
    "uniform_data": ("#7f7f7f", "X", ":"),
    "uniform_hn": ("#9467bd", "P", "-."),
    "hardest": ("#000000", "*", ":"),
    "hcl": ("#5254a3", "h", "--"),
    "variance_aware": ("#98df8a", "H", "-"),
    "variance_aware_entropy": ("#c5b0d5", "8", "--"),
    "variance_aware_cosine_spread": ("#c49c94", "p", ":"),
}
COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
REFERENCES = ("bacl", "clip")  # the paper's method, else the baseline a comparison is made against


def style(method: str) -> dict[str, str]:
    """Matplotlib keywords (color, marker, linestyle) of `method`."""
    if method in FIXED:
        colour, marker, linestyle = FIXED[method]
    else:
        h = zlib.crc32(method.encode())
        colour, marker = COLOURS[h % len(COLOURS)], MARKERS[(h // len(COLOURS)) % len(MARKERS)]
        linestyle = LINESTYLES[(h // (len(COLOURS) * len(MARKERS))) % len(LINESTYLES)]
    return {"color": colour, "marker": marker, "linestyle": linestyle}


def reference(methods) -> str | None:
    """The method a figure marks: BACL where present, else CLIP, else none."""
    present = set(methods)
    return next((m for m in REFERENCES if m in present), None)


def ordered(methods) -> list[str]:
    """The reference first, then the others by name: a stable legend and panel order."""
    ref = reference(methods)
    return sorted(set(methods), key=lambda m: (m != ref, m))
