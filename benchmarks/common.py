"""What every benchmark records: the device it ran on, wall-clock timing, where results go."""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": socket.gethostname(), "cpu": model, "cpus": os.cpu_count(), "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
            "faiss": faiss.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "faiss_gpus": faiss.get_num_gpus()}


def timed(fn: Callable, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def write_result(name: str, payload: dict, out: Path | None = None) -> Path:
    """benchmarks/results/<name>-<host>-<date>.json unless `out` is given."""
    path = out or RESULTS / f"{name}-{payload['device']['host']}-{datetime.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
