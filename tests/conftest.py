import pytest

from bacl.config import load_config

TINY = [
    "dataset.n_train=72", "dataset.n_test=36", "dataset.seed=3",
    "model.width=32", "model.heads=2", "model.layers=2",
    "train.batch_size=12", "train.epochs=2", "train.checkpoint_every=2", "train.threads=1",
    "pool.k=6",
]


@pytest.fixture
def tiny_config(tmp_path):
    """A config that trains in about a second; extra overrides win."""
    def make(*overrides: str):
        return load_config([*TINY, f"output_dir={tmp_path / 'runs'}", *overrides])
    return make
