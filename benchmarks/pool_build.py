"""Candidate-pool construction: FAISS (flat, ivf, hnsw) against a brute-force torch top-k.

Exact all-pairs search at N = 10^6 costs N^2·d ≈ 5·10^14 FLOPs, out of reach on a small CPU,
so every method searches the full database of N vectors for a fixed random subset of Q
queries; the full-N time is projected as build + (search time per query) × N. Recall@k of
the approximate indexes is measured against the brute-force pools of the same queries.

    python benchmarks/pool_build.py [--quick] [--out PATH]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacl.data.pool import IndexConfig, build_index, search_pool  # noqa: E402
from benchmarks.common import device, timed, write_result  # noqa: E402

D, K = 512, 20
LATENT, SPREAD, NOISE = 64, 1.2, 0.02  # see embeddings(); SPREAD 1.0 makes ivf and hnsw near exact
SCORE_BYTES = 2**29  # brute force: [queries, N] float32 scores per block


@dataclass
class Size:
    n: int
    queries: int
    index: dict[str, IndexConfig]  # method -> config: the defaults unless too slow for this machine
    why: str = ""  # why settings differ from Q = 10^4 and the defaults, printed with the table


DEFAULTS = {kind: IndexConfig(kind=kind) for kind in ("flat", "ivf", "hnsw")}
# On 2 cores the default HNSW build (M=32, efConstruction=200) took about 2 minutes at 10^5, so half an
# hour or more is expected at 10^6, and IVF k-means on the default 256 training points per list (all
# 10^6 items, 4000 lists) several minutes: both are lightened there to keep the run near 15 minutes.
LIGHT = {**DEFAULTS, "hnsw": replace(DEFAULTS["hnsw"], hnsw_m=16, ef_construction=40, ef_search=64)}
FULL = [
    Size(10**4, 10**4, DEFAULTS),
    Size(10**5, 10**4, DEFAULTS),
    Size(10**6, 2000, {**LIGHT, "ivf": replace(DEFAULTS["ivf"], train_size=64 * 4000)},
         "Q reduced from 10^4 (brute force and flat cost about 10 ms per query here); lighter HNSW build "
         "and a 64-per-list IVF training sample, the defaults would take most of an hour on 2 cores"),
]
QUICK = [Size(10**4, 2000, DEFAULTS, "quick"), Size(10**5, 500, LIGHT, "quick: lighter HNSW build")]


def embeddings(n: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """Unit vectors from overlapping Gaussian clusters (about 100 items each) in a LATENT-dimensional
    subspace plus small isotropic noise: clustered and of low intrinsic dimension like real encoder
    embeddings, so approximate recall means something. Built in chunks to bound memory."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 100), LATENT, generator=g)
    basis = torch.linalg.qr(torch.randn(D, LATENT, generator=g)).Q.T  # [LATENT, D], orthonormal rows
    x = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        z = centres[torch.randint(len(centres), (m,), generator=g)] + SPREAD * torch.randn(m, LATENT, generator=g)
        v = z @ basis + NOISE * torch.randn(m, D, generator=g)
        x[start:start + m] = torch.nn.functional.normalize(v, dim=1).numpy()
    return x


def brute_force(x: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """[len(rows), k] exact pools by blocked matmul + topk, the anchor masked out."""
    block = max(1, SCORE_BYTES // (4 * x.shape[0]))
    out = torch.empty(len(rows), k, dtype=torch.int64)
    for start in range(0, len(rows), block):
        q = rows[start:start + block]
        sims = x[q] @ x.T
        sims[torch.arange(len(q)), q] = -float("inf")
        out[start:start + len(q)] = sims.topk(k, dim=1).indices
    return out


def recall(pool: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(pool.tolist(), exact.tolist())]))


def power(n: int) -> str:
    return f"10^{round(math.log10(n))}"


def bench(size: Size) -> list[dict]:
    x = embeddings(size.n)
    rows = np.sort(np.random.default_rng(1).choice(size.n, size.queries, replace=False))
    exact, brute_s = timed(brute_force, torch.from_numpy(x), torch.from_numpy(rows), K)
    exact = exact.numpy()
    brute_projected = brute_s / size.queries * size.n

    def row(method: str, build_s: float, search_s: float, found: np.ndarray, **extra: Any) -> dict:
        projected = build_s + search_s / size.queries * size.n
        print(f"N={power(size.n)} {method}: build {build_s:.1f} s, {size.queries} queries {search_s:.1f} s",
              file=sys.stderr, flush=True)
        return {"n": size.n, "queries": size.queries, "method": method, "build_s": build_s, "search_s": search_s,
                "ms_per_query": 1e3 * search_s / size.queries, "projected_s": projected,
                "vs_brute_force": projected / brute_projected, "recall": recall(found, exact), **extra}

    results = [row("torch brute force", 0.0, brute_s, exact)]
    for method, cfg in size.index.items():
        index, build_s = timed(build_index, x, cfg)
        found, search_s = timed(search_pool, index, x, rows, K, cfg.query_batch)
        del index
        results.append(row(f"faiss {method}", build_s, search_s, found, index=asdict(cfg)))
    return results


def table(results: list[dict]) -> str:
    lines = [f"| N | Q | method | build (s) | search (ms/query) | projected full-N (s) | ÷ brute force | recall@{K} |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {power(r['n'])} | {r['queries']} | {r['method']} | {r['build_s']:.1f} "
                     f"| {r['ms_per_query']:.3f} | {r['projected_s']:.1f} | {r['vs_brute_force']:.3f} "
                     f"| {r['recall']:.3f} |")
    return "\n".join(lines)


def size_note(size: Size) -> str:
    changed = {m: {f: v for f, v in asdict(c).items() if v != asdict(DEFAULTS[m])[f]} for m, c in size.index.items()}
    changed = {m: c for m, c in changed.items() if c}
    return (f"N={power(size.n)}, Q={size.queries}: " + (f"{size.why}; " if size.why else "")
            + (f"changed from the IndexConfig defaults: {changed}" if changed else "IndexConfig defaults"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^5 with fewer queries (about a minute)")
    parser.add_argument("--out", type=Path,
                        help="JSON path (default: benchmarks/results/pool_build-<host>-<date>.json)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    info = device()
    start = time.perf_counter()
    results = [r for size in sizes for r in bench(size)]
    info.update(wall_s=time.perf_counter() - start, load_avg_1m_end=os.getloadavg()[0])
    notes = [size_note(s) for s in sizes]
    out = write_result("pool_build", {"device": info, "d": D, "k": K, "quick": args.quick, "notes": notes,
                                      "results": results}, args.out)
    print(f"{info['cpu']} ({info['cpus']} CPUs), {info['torch_threads']} threads, faiss {info['faiss']}, "
          f"torch {info['torch']}; load average {info['load_avg_1m']:.1f} at start, "
          f"{info['load_avg_1m_end']:.1f} at end; d={D}, k={K}; {info['wall_s']:.0f} s in all")
    print(table(results))
    print("\n".join(f"- {note}" for note in notes))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
