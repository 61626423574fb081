"""Extract frozen features and the candidate pool: `bacl-extract dataset=laion400m dataset.root=DIR`
(or `python experiments/extract.py ...`).

Any run-config key applies (`dataset.*` picks the data and encoders, `pool.*` the pool,
`train.device=cuda` the device); these extraction-only keys are added:
    extract.workers=N      decoding processes (DataLoader workers; default 0 = in this process)
    extract.batch_size=N   samples per loader batch (default 32)
    extract.tasks=N        cluster=slurm: spread the shards over an array of N tasks (default 8)
    cluster=local|slurm    local (default): here, then the pool; slurm: an sbatch array, then a
                           pool job that waits for it (afterok), and return at once
  --cfg                  print the resolved run config (YAML) and exit
  --help                 the groups and their choices; `--help dataset=laion400m`: its keys
Run it again after an interruption: finished shards are kept and skipped. A shard without any
usable sample (an empty or unreadable tar) is skipped whole and counted (`shards_skipped`).
Exit codes: 0 done (or submitted), 1 a bad sample under dataset.strict=true, 2 bad input (a
malformed CSV or annotation JSON; under dataset.strict=true also a shard without any usable sample).
"""
from __future__ import annotations

import sys
import time

from omegaconf import OmegaConf

from bacl.cli.args import parse, single_values
from bacl.cli.help import render
from bacl.config import load_config
from bacl.encoders import EncoderUnavailable
from bacl.errors import ConfigError
from bacl.extract import DataError, ExtractJob, PoolJob, build_pool, extract_features, open_store, summary
from bacl.launch import make_executor, validate_profile
from bacl.sweep import load_group_file

EXTRACT_KEYS = {"extract.workers": 0, "extract.batch_size": 32, "extract.tasks": 8}


def split(argv: list[str]) -> tuple[list[str], dict[str, int], str]:
    """(run-config overrides, extraction options, cluster) of key=value arguments."""
    options, overrides, cluster = dict(EXTRACT_KEYS), [], "local"
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in EXTRACT_KEYS:
            if not value.isdigit() or (key != "extract.workers" and int(value) < 1):
                sign = "non-negative" if key == "extract.workers" else "positive"
                raise ConfigError(f"{key}={value!r}: expected a {sign} integer")
            options[key] = int(value)
        elif key == "cluster":
            cluster = value
        else:
            overrides.append(arg)
    return overrides, options, cluster


def submit(overrides: list[str], options: dict[str, int], cluster: str) -> None:
    profile = load_group_file("cluster", cluster)
    validate_profile(profile, f"bacl/conf/cluster/{cluster}.yaml")
    cfg = load_config(overrides)
    _, store, shards = open_store(cfg)
    tasks = min(options["extract.tasks"], len(shards), profile.max_array_size)
    executor = make_executor(profile, store.path / "slurm", f"extract-{cfg.dataset.name}")
    jobs = executor.map_array(ExtractJob(), [overrides] * tasks, list(range(tasks)), [tasks] * tasks,
                              [options["extract.workers"]] * tasks, [options["extract.batch_size"]] * tasks)
    array_id = jobs[0].job_id.split("_")[0]
    executor.update_parameters(slurm_additional_parameters={**dict(profile.get("additional_parameters") or {}),
                                                            "dependency": f"afterok:{array_id}"},
                               name=f"pool-{cfg.dataset.name}")
    pool_job = executor.submit(PoolJob(), overrides)
    print(f"submitted array {array_id} ({tasks} tasks over {len(shards)} shards) and pool job {pool_job.job_id}")
    print(f"store: {store.path}\nfollow: squeue -j {array_id},{pool_job.job_id}; logs in {store.path / 'slurm'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd = parse(argv, flags=("--cfg",))
        if cmd.help is not None:
            print(render(__doc__, cmd.help, groups=("dataset", "cluster")))
            return 0
        single_values(cmd.overrides)
        overrides, options, cluster = split(cmd.overrides)
        if "--cfg" in cmd.flags:
            print(OmegaConf.to_yaml(load_config(overrides)), end="")
            return 0
        if cluster == "slurm" or cluster not in ("local", "debug"):
            submit(overrides, options, cluster)
            return 0
        cfg = load_config(overrides)
        t0 = time.perf_counter()
        n = {"samples": 0, "shards": 0}

        def count(shard: str, samples: int, seconds: float) -> None:
            n["samples"] += samples
            n["shards"] += 1
        store = extract_features(cfg, workers=options["extract.workers"], batch_size=options["extract.batch_size"],
                                 on_shard=count)
        seconds = time.perf_counter() - t0
        build_pool(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, EncoderUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rate = n["samples"] / seconds if n["samples"] else 0.0
    print(f"{store.path}: {n['shards']} shard(s) extracted now ({n['samples']} samples, {rate:.1f} samples/s); "
          f"pool built; counts {store.counts()}")
    print("\n".join(summary(cfg, store)))
    counts = store.counts()
    if counts["shards_skipped"]:
        print(f"warning: {counts['shards_skipped']} shard(s) had no usable sample and were skipped: "
              f"{', '.join(counts['shards_skipped_names'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
