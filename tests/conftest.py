import os
import shutil
import subprocess

import pytest
import torch

import bacl.sweep as sweep
from bacl.config import load_config
from bacl.method import Method, build_method
from bacl.registry import DATASETS
from helpers import REPO, TINY

START, STOP = REPO / "slurm" / "local" / "start.sh", REPO / "slurm" / "local" / "stop.sh"


@pytest.fixture
def tiny_config(tmp_path):
    """A config that trains in about a second; extra overrides win."""
    def make(*overrides: str):
        return load_config([*TINY, f"output_dir={tmp_path / 'runs'}", *overrides])
    return make


@pytest.fixture
def tiny_method(tiny_config):
    """A method built directly (no Trainer) on the tiny synthetic split and its FAISS pool."""
    def make(*overrides: str) -> Method:
        cfg = tiny_config(*overrides)
        data = DATASETS.entry(cfg.dataset.name).load()(cfg.dataset)
        return build_method(cfg, data.train, data.candidate_pool(cfg.pool))
    return make


def _controller_up() -> bool:
    """`scontrol ping` answers at once; sinfo spends about 9 s retrying a controller that is down."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        return ping.returncode == 0 and " is UP" in ping.stdout
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM cluster that answers; stopped afterwards only if this fixture started it."""
    if _controller_up():
        yield "existing"
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster answers and starting the local one needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no SLURM cluster answers and apt-get is unavailable to install one")
    # two slurmd on this host (slurm/README.md): one-node jobs run as before, and the nodes=2 tests need not restart it
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SLURM_LOCAL_NODES": "2"})
    if proc.returncode != 0:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120)
        pytest.fail(f"slurm/local/start.sh failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    try:
        yield "started"
    finally:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120)


@pytest.fixture
def conf(tmp_path, monkeypatch):
    """A private bacl/conf with the real cluster profiles and test ablations."""
    root = tmp_path / "conf"
    (root / "ablation").mkdir(parents=True)
    (root / "cluster").symlink_to(REPO / "bacl/conf/cluster")
    monkeypatch.setattr(sweep, "CONF_DIR", root)

    def write(name: str, text: str) -> None:
        (root / "ablation" / f"{name}.yaml").write_text(text)
    return write


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: HNSW builds (and so the pools compared) are deterministic only there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
