"""The sharded embedding bank: per-rank memory, lookup and write cost, and what deduplicating requests saves.

Timing: a float16 bank of `--rows` captions x 512 in host memory, at world sizes 1 and 2 (one
spawned gloo process per rank, one torch thread each). Every step each rank looks up the
paper's per-GPU candidate request (512 anchors x k = 20, uniform ids: the LAION case, where a
step's candidates barely repeat) and writes the gathered rows of the global batch (each rank's
512 positives and 512 negatives). Records per rank the shard's bytes, the peak RSS the bank
added, the fastest and median lookup and write, and the bytes it sent and received per lookup.

Deduplication: a rank sends each distinct id once. How many of a step's 512 x 20 candidate
captions are distinct is measured on FAISS pools (exact, k = 20) of clustered synthetic
embeddings (`pool_build.embeddings`, about 100 items a cluster) at 10^4 and 3 x 10^4 items,
with 1 caption per item (LAION) and 5 (COCO), and for uniform ids at 10^6 and LAION's 4 x 10^8.

    python benchmarks/bank_shard.py --quick      # about a minute on 2 shared cores
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacl.bank import EmbeddingBank  # noqa: E402
from bacl.data.pool import candidate_pool  # noqa: E402
from bacl.distributed import World, free_port  # noqa: E402
from benchmarks.common import device, write_result  # noqa: E402
from benchmarks.pool_build import embeddings  # noqa: E402

DIM, LOCAL_BATCH, K, NEGATIVES = 512, 512, 20, 1  # the paper's per-GPU setting (docs/scaling.md)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(rank: int, size: int, port: int, rows: int, reps: int, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    before = peak_rss_bytes()
    bank = EmbeddingBank(rows, DIM, refresh_every=10**9, world=World(rank, size), dtype=torch.float16)
    bank.shard.normal_()  # touch every page, as a filled bank would
    gen = torch.Generator().manual_seed(rank)
    write_rows = size * LOCAL_BATCH * (1 + NEGATIVES)
    lookup_s, write_s, sent, received = [], [], [], []
    for step in range(reps + 1):
        request = torch.randint(0, rows, (LOCAL_BATCH, K), generator=gen)
        distinct = request.unique()
        remote = int((distinct % size != rank).sum())
        # ids out and rows back for the distinct ids others own; the same for what others ask of this rank
        sent.append(remote * 8)
        received.append(remote * DIM * 2)
        start = time.perf_counter()
        bank.lookup(request)
        lookup_s.append(time.perf_counter() - start)
        captions = torch.randint(0, rows, (write_rows,), generator=gen)
        rows_written = torch.randn(write_rows, DIM, generator=gen)
        start = time.perf_counter()
        bank.write(captions, rows_written, step)
        write_s.append(time.perf_counter() - start)
    lookup_s, write_s = lookup_s[1:], write_s[1:]  # the first step warms up
    out.put({"world_size": size, "rank": rank, "rows": rows, "shard_bytes": bank.shard.numel() * 2,
             "written_bytes": bank.written.numel() * 4, "rss_added_bytes": peak_rss_bytes() - before,
             "lookup_min_ms": 1e3 * min(lookup_s), "lookup_median_ms": 1e3 * statistics.median(lookup_s),
             "write_min_ms": 1e3 * min(write_s), "write_median_ms": 1e3 * statistics.median(write_s),
             "id_bytes_sent_per_lookup": statistics.mean(sent[1:]),
             "row_bytes_received_per_lookup": statistics.mean(received[1:])})
    if size > 1:
        dist.destroy_process_group()


def timing(rows: int, reps: int) -> list[dict]:
    results = []
    ctx = mp.get_context("spawn")
    for size in (1, 2):
        queue = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=worker, args=(rank, size, port, rows, reps, queue)) for rank in range(size)]
        for p in procs:
            p.start()
        results += sorted((queue.get(timeout=600) for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join()
            if p.exitcode:
                raise RuntimeError(f"rank process exited with {p.exitcode}")
    return results


def dedup(items: int, captions_per_item: int, pool: torch.Tensor | None, steps: int = 20) -> dict:
    """Distinct share of a rank's [512, K] candidate captions: random anchors, one random caption per candidate."""
    gen = torch.Generator().manual_seed(0)
    shares = []
    for _ in range(steps):
        anchors = torch.randint(0, items, (LOCAL_BATCH,), generator=gen)
        candidates = pool[anchors] if pool is not None else torch.randint(0, items, (LOCAL_BATCH, K), generator=gen)
        captions = candidates * captions_per_item + torch.randint(0, captions_per_item, candidates.shape, generator=gen)
        shares.append(captions.unique().numel() / captions.numel())
    return {"items": items, "captions_per_item": captions_per_item, "pool": "faiss exact" if pool is not None
            else "uniform", "requested": LOCAL_BATCH * K, "distinct_share": statistics.mean(shares)}


def dedup_table(pool_sizes: list[int]) -> list[dict]:
    rows = []
    for n in pool_sizes:
        pool = candidate_pool(embeddings(n), K)
        rows += [dedup(n, c, pool) for c in (1, 5)]
    rows += [dedup(n, 1, None) for n in (10**6, 4 * 10**8)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2^20 rows, 10 steps, pools at 10^4 only")
    parser.add_argument("--rows", type=int, default=None, help="bank rows (default 2^22, quick 2^20)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = args.rows or (2**20 if args.quick else 2**22)
    start = time.perf_counter()
    payload = {"device": device(), "settings": {"rows": rows, "dim": DIM, "dtype": "float16",
                                                "local_batch": LOCAL_BATCH, "k": K, "negatives": NEGATIVES},
               "timing": timing(rows, 10 if args.quick else 30),
               "dedup": dedup_table([10**4] if args.quick else [10**4, 3 * 10**4])}
    payload["elapsed_s"] = time.perf_counter() - start
    path = write_result("bank_shard" + ("-quick" if args.quick else ""), payload, args.out)
    print("| world | rank | shard MiB | RSS added MiB | lookup ms (min / median) | write ms (min / median) "
          "| KiB received per lookup |\n|---|---|---|---|---|---|---|")
    for r in payload["timing"]:
        print(f"| {r['world_size']} | {r['rank']} | {r['shard_bytes'] / 2**20:.0f} | {r['rss_added_bytes'] / 2**20:.0f} "
              f"| {r['lookup_min_ms']:.1f} / {r['lookup_median_ms']:.1f} | {r['write_min_ms']:.1f} / "
              f"{r['write_median_ms']:.1f} | {r['row_bytes_received_per_lookup'] / 2**10:.0f} |")
    print("\n| items | captions per item | candidates | distinct share of 512 x 20 |\n|---|---|---|---|")
    for r in payload["dedup"]:
        print(f"| {r['items']:,} | {r['captions_per_item']} | {r['pool']} | {r['distinct_share']:.3f} |")
    print(f"\nwrote {path} ({payload['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
