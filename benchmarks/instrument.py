"""The claims suite's instrument: seed-to-seed spread of the default run and its wall time.

    python benchmarks/instrument.py [--seeds 5] [--baseline b051f26] [--method clip] [--out FILE]

Two numbers decide whether the synthetic claims suite can give a verdict in reasonable time:
- the seed SD of `i2t_R@1` of the default run (`--seeds` runs, two at a time, one thread each);
- the wall time of one default run on one thread, at this checkout and at `--baseline` (a git
  revision, checked out into a temporary worktree), timed alternately, best of `--repeats`, so
  both see the same machine load: the ratio is the speed-up.
Writes benchmarks/results/instrument-<host>-<date>.json (or --out) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def default_run(repo: Path, out: Path, *overrides: str) -> dict:
    """One `experiments/train.py` run of the code in `repo`, on one thread; its summary line and wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(repo / "experiments" / "train.py"), *overrides, "train.threads=1",
                           f"output_dir={out}"], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(overrides)} in {repo} failed:\n{proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def spread(method: str, seeds: int, work: Path) -> dict:
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda s: default_run(REPO, work / "spread", f"method={method}", f"seed={s}"),
                             range(seeds)))
    r1 = [r["i2t_R@1"] for r in runs]
    return {"method": method, "seeds": seeds, "i2t_R@1": r1, "mean": statistics.mean(r1),
            "sd": statistics.stdev(r1) if len(r1) > 1 else float("nan")}


def speed(method: str, baseline: str, repeats: int, work: Path) -> dict:
    tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), baseline], cwd=REPO, check=True,
                   capture_output=True)
    try:
        times: dict[str, list[float]] = {"current": [], "baseline": []}
        for i in range(repeats):  # alternate, each into a fresh directory so nothing is skipped
            times["current"].append(default_run(REPO, work / f"now{i}", f"method={method}")["process_wall_s"])
            times["baseline"].append(default_run(tree, work / f"then{i}", f"method={method}")["process_wall_s"])
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    best = {k: min(v) for k, v in times.items()}
    return {"method": method, "baseline": baseline, "seconds": times, "best": best,
            "speedup": best["baseline"] / best["current"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--method", default="clip")
    parser.add_argument("--baseline", default="b051f26", help="git revision to time against ('' skips it)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"device": device(), "spread": spread(args.method, args.seeds, work)}
        if args.baseline:
            result["speed"] = speed(args.method, args.baseline, args.repeats, work)
    path = write_result("instrument", result, args.out)
    s = result["spread"]
    print(f"{s['method']} i2t_R@1 over {s['seeds']} seeds: mean {s['mean']:.1f}, SD {s['sd']:.2f} (target <= 2.0)")
    if "speed" in result:
        v = result["speed"]
        print(f"one default run, one thread: {v['best']['current']:.1f} s now vs {v['best']['baseline']:.1f} s at "
              f"{v['baseline']}: {v['speedup']:.2f}x faster (target >= 3.5x)")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
