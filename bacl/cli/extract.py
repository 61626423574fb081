"""Extract frozen features and the candidate pool: `bacl-extract dataset=laion400m dataset.root=DIR`
(or `python experiments/extract.py ...`).

Any run-config key applies (`dataset.*` picks the data and encoders, `pool.*` the pool,
`train.device=cuda` the device); these extraction-only keys are added:
    extract.workers=N      decoding processes (DataLoader workers; default 0 = in this process)
    extract.batch_size=N   samples per loader batch (default 32)
    extract.tasks=N        cluster=slurm: spread the shards over an array of N tasks (default 8)
    cluster=local|slurm    local (default): here, then the pool; slurm: an sbatch array, then a
                           pool job that waits for it (afterok), and return at once
    pool.out_of_core_parts=P   build the pool out of core: a prepare job, an array of P search parts,
                           the test deduplication and a finish job, each after those it needs
                           (cluster=local: in turn here); pool.out_of_core_chunk: rows at a time
  --cfg                  print the resolved run config (YAML) and exit
  --dry-run              list the jobs (stages) and what each waits for; nothing is extracted or submitted
  --help                 the groups and their choices; `--help dataset=laion400m`: its keys
Run it again after an interruption: finished shards are kept and skipped. A shard without any
usable sample (an empty or unreadable tar) is skipped whole and counted (`shards_skipped`).
Exit codes: 0 done (or submitted), 1 a bad sample under dataset.strict=true, 2 bad input (a
malformed CSV or annotation JSON; under dataset.strict=true also a shard without any usable sample).
"""
from __future__ import annotations

import sys
import time

from omegaconf import DictConfig, OmegaConf

from bacl.cli.args import parse, single_values
from bacl.cli.help import render
from bacl.config import load_config
from bacl.encoders import EncoderUnavailable
from bacl.errors import ConfigError
from bacl.extract import (
    DataError,
    ExtractJob,
    PoolJob,
    Stage,
    dataset_shards,
    extract_features,
    open_store,
    run_stages_here,
    stages,
    summary,
)
from bacl.launch import make_executor, validate_profile
from bacl.sweep import load_group_file

EXTRACT_KEYS = {"extract.workers": 0, "extract.batch_size": 32, "extract.tasks": 8}
LOCAL = ("local", "debug")  # clusters run in this process; any other names a profile to submit to


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


def _profile(cluster: str) -> DictConfig:
    return validate_profile(load_group_file("cluster", cluster), f"bacl/conf/cluster/{cluster}.yaml")


def plan(cfg: DictConfig, options: dict[str, int], cluster: str, shards: int) -> list[Stage]:
    """The stages this command runs: on a cluster the shards spread over at most extract.tasks array tasks."""
    if cluster in LOCAL:
        return stages(cfg.pool)
    profile = _profile(cluster)
    return stages(cfg.pool, min(options["extract.tasks"], shards, profile.max_array_size), profile.max_array_size)


def describe(cfg: DictConfig, stage_list: list[Stage], cluster: str) -> list[str]:
    """What --dry-run prints: each stage, its size and what it waits for."""
    lines = [f"bacl-extract dataset={cfg.dataset.name} cluster={cluster}: {len(stage_list)} stage(s)"]
    for i, s in enumerate(stage_list, 1):
        size = f"array of {s.tasks}" if s.tasks > 1 else "1 job"
        after = f"after {' and '.join(s.after)} (afterok)" if s.after else "at once"
        lines.append(f"  {i}. {s.name:<12} {size:<12} {after:<32} {s.does}")
    return lines


def submit(overrides: list[str], options: dict[str, int], cluster: str) -> dict[str, str]:
    """Every stage as a SLURM array (one task for a single job) held by `afterok` on the stages it needs;
    another executor (local, debug) runs a stage's jobs to the end before the next is submitted. Returns
    each stage's job id."""
    profile = _profile(cluster)
    cfg = load_config(overrides)
    _, store, shards = open_store(cfg)
    stage_list = plan(cfg, options, cluster, len(shards))
    executor = make_executor(profile, store.path / "slurm", f"extract-{cfg.dataset.name}")
    # one process a shard: a multi-node or multi-GPU training profile must not run each shard once per task
    executor.update_parameters(nodes=1, tasks_per_node=1, gpus_per_node=min(profile.gpus_per_node, 1))
    base = dict(profile.get("additional_parameters") or {})
    ids: dict[str, str] = {}
    for stage in stage_list:
        wait = {"dependency": "afterok:" + ":".join(ids[a] for a in stage.after)} if stage.after else {}
        executor.update_parameters(name=f"{stage.name}-{cfg.dataset.name}", slurm_additional_parameters={**base, **wait})
        n = stage.tasks
        if stage.name == "extract":
            jobs = executor.map_array(ExtractJob(), [overrides] * n, list(range(n)), [n] * n,
                                      [options["extract.workers"]] * n, [options["extract.batch_size"]] * n)
        else:
            jobs = executor.map_array(PoolJob(), [overrides] * n, [stage.name] * n, list(range(n)))
        ids[stage.name] = jobs[0].job_id.split("_")[0]
        if profile.executor != "slurm":  # no dependencies there: finish this stage first
            for job in jobs:
                job.result()
    print("submitted " + ", ".join(f"{s.name} {ids[s.name]} ({s.tasks} task(s))" for s in stage_list)
          + f" over {len(shards)} shards")
    print(f"store: {store.path}\nfollow: squeue -j {','.join(ids.values())}; logs in {store.path / 'slurm'}")
    return ids


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd = parse(argv, flags=("--cfg", "--dry-run"))
        if cmd.help is not None:
            print(render(__doc__, cmd.help, groups=("dataset", "cluster")))
            return 0
        single_values(cmd.overrides)
        overrides, options, cluster = split(cmd.overrides)
        if "--cfg" in cmd.flags:
            print(OmegaConf.to_yaml(load_config(overrides)), end="")
            return 0
        if "--dry-run" in cmd.flags:
            cfg = load_config(overrides)
            print("\n".join(describe(cfg, plan(cfg, options, cluster, len(dataset_shards(cfg)[1])), cluster)))
            return 0
        if cluster not in LOCAL:
            submit(overrides, options, cluster)
            return 0
        cfg = load_config(overrides)
        stages(cfg.pool)  # bad pool.out_of_core_* keys stop it before the extraction
        t0 = time.perf_counter()
        n = {"samples": 0, "shards": 0}

        def count(shard: str, samples: int, seconds: float) -> None:
            n["samples"] += samples
            n["shards"] += 1
        store = extract_features(cfg, workers=options["extract.workers"], batch_size=options["extract.batch_size"],
                                 on_shard=count)
        seconds = time.perf_counter() - t0
        run_stages_here(cfg)
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
