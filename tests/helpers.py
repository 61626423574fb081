"""What several test modules share: the repo root, the tiny run config, the CLIs as functions."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A config that trains in about a second on one thread.
TINY = [
    "dataset.n_train=72", "dataset.n_test=36", "dataset.seed=3",
    "model.width=32", "model.heads=2", "model.layers=2",
    "train.batch_size=12", "train.epochs=2", "train.checkpoint_every=2", "train.threads=1",
    "pool.k=6", "eval.every_epochs=1",
]


def load_cli(script: str) -> Callable[[list[str]], int]:
    """`main(argv)` of experiments/<script>.py, imported from its file (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"cli_{script}", REPO / "experiments" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
