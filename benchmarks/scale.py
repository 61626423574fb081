"""Streaming at scale: peak memory and loader rate of `bacl.data.stream` on stores of 10^4 to 10^6 pairs.

Writes synthetic feature stores (small token dims, float16, 5,000 rows a shard) and streams a
fixed number of batches from each at world sizes 1 and 2 (one spawned process per rank, each
reading its own shards), consuming each batch with a fixed synthetic step (a small MLP forward
and backward on the batch's tokens). Records per run the largest rank's peak RSS, samples/s
and how far the loader runs ahead of the step (its rows/s over the step's). Issue 15's bar:
peak RSS at 10^6 at most 1.5x the peak at 10^4, at both world sizes; loader at least 3x ahead.

    python benchmarks/scale.py --quick --out FILE     # under 10 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacl.data.store import FeatureStore, ShardArrays  # noqa: E402
from bacl.data.stream import ShardIndex, ShardStream  # noqa: E402
from benchmarks.common import device, write_result  # noqa: E402

SHARD_ROWS = 5_000  # two shards at 10^4: one for each of two ranks
LV, DV, LT, DT = 4, 8, 4, 8  # tokens x dims of items and captions: 128 B of features a pair in float16


def write_store(path: Path, n: int) -> FeatureStore:
    """A store of n caption-item pairs (one caption per item), reused if already complete."""
    store = FeatureStore(path)
    shards = [f"{s:05d}" for s in range(-(-n // SHARD_ROWS))]
    store.init({"benchmark": "scale", "n": n, "dims": [LV, DV, LT, DT]}, ["frames"], shards)
    gen = np.random.default_rng(n)
    for s in store.missing_shards():
        start = int(s) * SHARD_ROWS
        rows = min(SHARD_ROWS, n - start)
        store.write_shard(s, ShardArrays(
            keys=[str(start + i) for i in range(rows)], splits=["train"] * rows, skipped=[],
            streams={"frames": (gen.standard_normal((rows, LV, DV), np.float32), gen.standard_normal((rows, DV), np.float32))},
            text_tokens=gen.standard_normal((rows, LT, DT), np.float32), text_pooled=gen.standard_normal((rows, DT), np.float32),
            text_item=np.arange(rows)))
    return store


def worker(rank: int, world: int, path: str, batches: int, batch_size: int, buffer: int, out: mp.Queue) -> None:
    """Stream `batches` batches of this rank's shards through the synthetic step; report timings and peak RSS."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    step = torch.nn.Sequential(torch.nn.Linear(LV * DV + LT * DT, 512), torch.nn.GELU(), torch.nn.Linear(512, 512))
    stream = ShardStream(ShardIndex(FeatureStore(path), "train"), batch_size, buffer, seed=0, rank=rank, world_size=world)
    load_s = step_s = 0.0
    rows = 0
    start = time.perf_counter()
    while rows < batches * batch_size:
        epoch = iter(stream)
        while rows < batches * batch_size:
            t0 = time.perf_counter()
            batch = next(epoch, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            x = torch.cat([batch.vision.flatten(1), batch.text.flatten(1)], dim=1).float()
            step(x).square().mean().backward()
            load_s, step_s, rows = load_s + t1 - t0, step_s + time.perf_counter() - t1, rows + batch.ids.numel()
    out.put({"rank": rank, "rows": rows, "wall_s": time.perf_counter() - start, "load_s": load_s, "step_s": step_s,
             "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def run(path: Path, n: int, world: int, batches: int, batch_size: int, buffer: int) -> dict:
    ctx = mp.get_context("spawn")  # fresh processes: each rank's peak RSS is its own
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, str(path), batches, batch_size, buffer, queue)) for r in range(world)]
    for p in procs:
        p.start()
    ranks = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    rows = sum(r["rows"] for r in ranks)
    return {"n": n, "world_size": world, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
            "samples_per_s": rows / max(r["wall_s"] for r in ranks),
            "loader_ahead_ratio": min(r["step_s"] / r["load_s"] for r in ranks),  # loader rows/s / step rows/s
            "batches_per_rank": batches, "batch_size": batch_size, "buffer_size": buffer, "ranks": ranks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches per run (under 10 minutes on 2 cores)")
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/scale-<host>-<date>.json)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bacl-scale"), help="where the stores are written (kept)")
    args = parser.parse_args(argv)
    batches, batch_size, buffer = (40, 256, 8192) if args.quick else (200, 256, 8192)
    sizes = (10**4, 10**5, 10**6)
    runs, written = [], {}
    for n in sizes:
        t0 = time.perf_counter()
        write_store(args.dir / f"n{n}", n)
        written[n] = {"seconds": time.perf_counter() - t0,
                      "bytes": sum(f.stat().st_size for f in (args.dir / f"n{n}").rglob("*") if f.is_file())}
        for world in (1, 2):
            runs.append(run(args.dir / f"n{n}", n, world, batches, batch_size, buffer))
            r = runs[-1]
            print(f"n={n:>9,} world={world} peak RSS {r['peak_rss_bytes'] / 2**20:7.1f} MiB  "
                  f"{r['samples_per_s']:9,.0f} samples/s  loader {r['loader_ahead_ratio']:5.1f}x ahead", flush=True)
    peak = {(r["n"], r["world_size"]): r["peak_rss_bytes"] for r in runs}
    verdict = {f"rss_ratio_world{w}": peak[(sizes[-1], w)] / peak[(sizes[0], w)] for w in (1, 2)}
    verdict["min_loader_ahead_ratio"] = min(r["loader_ahead_ratio"] for r in runs)
    verdict["met"] = all(verdict[f"rss_ratio_world{w}"] <= 1.5 for w in (1, 2)) and verdict["min_loader_ahead_ratio"] >= 3
    payload = {"device": device(), "quick": args.quick, "stores": {str(k): v for k, v in written.items()},
               "feature_dims": {"item_tokens": LV, "item_dim": DV, "caption_tokens": LT, "caption_dim": DT},
               "shard_rows": SHARD_ROWS, "runs": runs, "must_show": verdict}
    path = write_result("scale" + ("-quick" if args.quick else ""), payload, args.out)
    print(json.dumps(verdict), f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
