"""Which run the CLA heat map comes from.

The map itself is computed by the training run (bacl/attention_example.py) at its final
evaluation and stored as `attention_example.json` in the run directory; the report only
reads that file, so drawing it needs no model, checkpoint or config.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bacl.attention_example import ATTENTION_EXAMPLE


def first_cla_run(runs: pd.DataFrame) -> Path | None:
    """Directory of the first finished run whose method uses CLA and that left an attention example."""
    if "cfg.method.cla.enabled" not in runs:
        return None
    for row in runs[(runs["status"] == "ok") & runs["cfg.method.cla.enabled"].eq(True)].itertuples():
        run_dir = Path(row.path)
        if (run_dir / ATTENTION_EXAMPLE).exists():
            return run_dir
    return None
