"""What the report shows of each dataset and how it names and scales it (analysis/metrics.yaml),
and the paper's numbers (analysis/paper_numbers.yaml)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
METRICS: dict = yaml.safe_load((HERE / "metrics.yaml").read_text())
PAPER: dict = yaml.safe_load((HERE / "paper_numbers.yaml").read_text())


def dataset_metrics(dataset: str) -> list[str]:
    return list(METRICS["datasets"].get(dataset, METRICS["default"]))


def primary_metric(dataset: str) -> str:
    return dataset_metrics(dataset)[0]


def key_metrics(dataset: str) -> list[str]:
    """R@1 and every metric that is not a recall: the columns of ablation tables."""
    return [m for m in dataset_metrics(dataset) if m.endswith("R@1") or "R@" not in m]


def r1_metrics(dataset: str) -> list[str]:
    return [m for m in dataset_metrics(dataset) if m.endswith("R@1")] or [primary_metric(dataset)]


def scaled(values: pd.Series | float, metric: str) -> pd.Series | float:
    """Fractions (mAP, MRR, nDCG, accuracies) as percent, so every number reads like R@k and the paper."""
    return values * 100 if metric in METRICS["fractions"] else values


def unit(metric: str) -> str:
    return "%" if metric in METRICS["fractions"] or metric in METRICS["percent"] or "R@" in metric else ""


def label(metric: str) -> str:
    return METRICS["labels"].get(metric, metric.replace("_", " "))


def label_with_unit(metric: str) -> str:
    return f"{label(metric)} ({unit(metric)})" if unit(metric) else label(metric)


def axis_label(axis: str) -> str:
    key = axis.removeprefix("cfg.")
    return METRICS["axes"].get(key, key)


def where(dataset: str) -> str:
    """A dataset's name in text; hand-written runs may name none."""
    return dataset or "all runs"
