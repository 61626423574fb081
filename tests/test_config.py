"""Bad input fails before training, naming the key, the value and what is expected."""
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bacl.config import load_config, run_id
from bacl.errors import ConfigError
from bacl.registry import METHODS
from bacl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args,expected", [
    (["method=nope"], r"unknown method 'nope': valid choices are .*bacl.*clip"),
    (["dataset=imagenet"], r"unknown dataset 'imagenet': valid choices are .*synthetic"),
    (["train.lrr=0.1"], r"unknown config key 'train.lrr'.*valid keys under 'train': .*lr"),
    (["method.cla.betaa=1"], r"unknown config key 'method.cla.betaa'.*valid keys under 'method.cla': .*beta"),
    (["method=clip", "method.cla.beta=1"], r"unknown config key 'method.cla.beta'"),
    (["pool.k=0"], r"pool.k=0 .*positive integer"),
    (["pool.k=-3"], r"pool.k=-3"),
    (["method.schedule.gamma=0"], r"method.schedule.gamma=0.0 .*> 0"),
    (["method.schedule.gamma=-1.5"], r"method.schedule.gamma=-1.5"),
    (["method.cla.lambda_local=-0.1"], r"method.cla.lambda_local=-0.1 .*>= 0"),
    (["train.lr=nan"], r"train.lr=nan is not a finite number"),
    (["method.cla.beta=inf"], r"method.cla.beta=inf is not a finite number"),
    (["pool.k=abc"], r"bad value 'abc' for 'pool.k'"),
    (["method.schedule.shape=steep"], r"unknown method.schedule.shape 'steep': valid choices are default, aggressive, shallow"),
    (["method.negatives=bns", "method=uniform_hn"], r"method.negatives='bns' is not valid for method 'uniform_hn'"),
    (["dataset.rho=0.9"], r"dataset.rho=0.9 .*sibling group"),
    (["trainlr"], r"expected key=value"),
])
def test_bad_config_is_rejected_with_its_key(args, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(args)


def test_k_larger_than_the_pool_fails_before_training(tiny_config, tmp_path):
    trainer = Trainer(tiny_config("pool.k=500"))
    with pytest.raises(ConfigError, match=r"pool.k=500 .*72 items"):
        trainer.run()
    assert not trainer.run_dir.exists()  # nothing written


def test_every_registered_method_loads_with_defaults():
    for name in METHODS.names():
        assert load_config([f"method={name}"]).method.name == name


def test_run_id_is_stable_and_ignores_output_dir():
    a = load_config(["method=clip", "output_dir=/x"])
    b = load_config(["output_dir=/y", "method=clip"])
    assert run_id(a) == run_id(b) == run_id(load_config(["method=clip"]))
    assert run_id(a) != run_id(load_config(["method=clip", "seed=1"]))
    assert run_id(a) == run_id(load_config(["method=clip", "train.threads=2"]))  # not a result-changing key


def test_cli_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/train.py"), "method=bacl",
                           "method.schedule.gamma=0", f"output_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "method.schedule.gamma=0.0" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_result_neutral_fields_change_neither_run_id_nor_store_path():
    """One marker (bacl/neutral.py) feeds both hashes; a result-changing key still changes them."""
    from bacl.config import run_id
    from bacl.registry import DATASETS

    base = ["dataset=laion400m", "data_root=/d"]
    ref = load_config(base)
    store = DATASETS.entry("laion400m").load().store_path
    for neutral in ("train.threads=3", "output_dir=/elsewhere", "dataset.strict=true",
                    "dataset.vision_encoder.batch_size=7", "dataset.root=/d/laion400m"):
        cfg = load_config([*base, neutral])
        assert run_id(cfg) == run_id(ref), neutral
        assert store(cfg.dataset) == store(ref.dataset), neutral
    for changing in ("seed=1", "dataset.vision_encoder.patch_grid=2"):
        assert run_id(load_config([*base, changing])) != run_id(ref), changing
    assert store(load_config([*base, "dataset.vision_encoder.patch_grid=2"]).dataset) != store(ref.dataset)
    stored = OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(ref)))  # as read back from config.yaml
    assert run_id(stored) == run_id(ref)
