"""submitit against a real single-node SLURM cluster (slurm/local/start.sh).

Deselected by default; run with `python -m pytest -m slurm tests/test_slurm_cluster.py`.
If a controller already answers (`scontrol ping`), the running cluster is used and left running; otherwise the module
starts the local cluster (root and apt-get needed, about 35 s the first time, 2 s once the
packages are installed) and stops it again at the end.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

pytestmark = pytest.mark.slurm



@pytest.fixture
def executor(slurm_cluster, tmp_path):
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, slurm_job_name="bacl-slurm-test")
    return ex


def _result_within(job: submitit.Job, timeout_s: float):
    """job.result() in a thread: ("ok", value), ("error", exception), or a test failure on a hang."""
    box: dict = {}

    def wait() -> None:
        try:
            box["ok"] = job.result()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        job.cancel(check=False)
        pytest.fail(f"job {job.job_id}: result() still waiting after {timeout_s:.0f}s (state {job.state})")
    return ("ok", box["ok"]) if "ok" in box else ("error", box["error"])


def test_round_trip_runs_inside_slurm(executor):
    def where(x: int) -> tuple[int, str]:  # nested: cloudpickle sends it by value
        return x * 2, os.environ.get("SLURM_JOB_ID", "")

    job = executor.submit(where, 21)
    assert isinstance(job, submitit.SlurmJob)
    kind, value = _result_within(job, 60)
    assert kind == "ok", value
    assert value == (42, str(job.job_id))


def test_hard_exit_raises_instead_of_hanging(executor):
    job = executor.submit(os._exit, 3)  # dies without writing a result pickle
    t0 = time.monotonic()
    kind, exc = _result_within(job, 120)
    assert kind == "error", f"expected an exception, got the result {exc!r}"
    assert isinstance(exc, (UncompletedJobError, FailedJobError)), repr(exc)
    assert time.monotonic() - t0 < 120


def test_map_array_returns_all_results(executor):
    def square(x: int) -> int:
        return x * x

    jobs = executor.map_array(square, [1, 2, 3])
    assert len(jobs) == 3
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1, "expected one job array"
    results = [_result_within(j, 90) for j in jobs]
    assert results == [("ok", 1), ("ok", 4), ("ok", 9)]
