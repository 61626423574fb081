"""Run an ablation grid: `python experiments/sweep.py ablation=schedule [cluster=local|slurm|debug]`.

Extra `key=value` arguments override every run; `key=[a,b]` adds a grid axis.
  --dry-run   print the runs and what would be skipped, submit nothing
  --status    summarise done / running / failed (with the log tail) / missing
Finished runs (result.json status ok) are skipped, so running a sweep again submits only
what failed or is missing. `cluster=local` waits and then writes the aggregated tables;
`cluster=slurm` submits job arrays and returns at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import submitit

from analysis.aggregate import write_tables
from analysis.report import draw
from bacl.launch import (local_parallelism, make_executor, run_throttled, submit_slurm, validate_profile)
from bacl.errors import ConfigError
from bacl.results import read_json, write_json
from bacl.sweep import expand, load_group_file, run_state, unextracted

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN"}


def _log_tail(path: str | None, lines: int = 8) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def _slurm_state(record: dict, folder: Path) -> str | None:
    try:
        return submitit.SlurmJob(folder=folder / "%j", job_id=record["job_id"]).state
    except Exception:  # no scheduler reachable: treat as unknown
        return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--status", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    groups = {k: v for k, _, v in (a.partition("=") for a in args.overrides) if k in ("ablation", "cluster")}
    rest = [a for a in args.overrides if a.partition("=")[0] not in ("ablation", "cluster")]
    try:
        if "ablation" not in groups:
            raise ConfigError("missing ablation=<name>")
        profile = load_group_file("cluster", groups.get("cluster", "local"))
        validate_profile(profile, f"experiments/conf/cluster/{groups.get('cluster', 'local')}.yaml")
        runs = expand(groups["ablation"], rest)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    sweep_dir = Path(runs[0].cfg.output_dir)
    jobs_path, folder = sweep_dir / "jobs.json", sweep_dir / ".submitit"
    jobs = read_json(jobs_path) or {}
    states = {}
    for run in runs:
        state, error = run_state(run)
        if state in ("started", "missing") and profile.executor == "slurm" and run.run_id in jobs:
            slurm_state = _slurm_state(jobs[run.run_id], folder)
            if slurm_state in ACTIVE or slurm_state is None:
                state = "running"
            else:  # the job ended (cancelled, killed, out of memory...) without writing a result
                state, error = "failed", f"slurm job {jobs[run.run_id]['job_id']} ended {slurm_state} without a result"
        states[run.run_id] = (state, error)

    if args.dry_run or args.status:
        counts: dict[str, int] = {}
        for run in runs:
            state, error = states[run.run_id]
            counts[state] = counts.get(state, 0) + 1
            if args.dry_run:
                action = "skip" if state in ("done", "running") else "submit"
                axes = " ".join(f"{k}={v}" for k, v in run.axes.items())
                print(f"{run.run_id}  {state:8s} {action:6s} {axes}")
            elif state == "failed":
                record = jobs.get(run.run_id, {})
                print(f"FAILED {run.run_id} {run.axes}: {error}")
                tail = _log_tail(record.get("stderr"))
                if tail:
                    print("  " + tail.replace("\n", "\n  "))
        print(f"sweep {groups['ablation']} ({len(runs)} runs in {sweep_dir}): "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for message in unextracted([r for r in runs if states[r.run_id][0] != "done"]) if args.dry_run else []:
            print(f"warning: {message}")
        return 0

    todo = [run for run in runs if states[run.run_id][0] not in ("done", "running")]
    missing_features = unextracted(todo)
    if missing_features:
        print("error: extract the features before training on them:\n  " + "\n  ".join(missing_features), file=sys.stderr)
        return 2
    print(f"sweep {groups['ablation']}: {len(runs)} runs, {len(runs) - len(todo)} done or running, "
          f"submitting {len(todo)} to {profile.executor}")
    if not todo:
        if profile.executor != "slurm":
            write_tables(sweep_dir)
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    executor = make_executor(profile, folder, f"bacl-{groups['ablation']}")
    job_args = [list(run.overrides) for run in todo]
    threads = profile.cpus_per_task
    if profile.executor == "slurm":
        submitted = submit_slurm(executor, job_args, threads, profile.max_array_size)
        for run, job in zip(todo, submitted):
            jobs[run.run_id] = {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        write_json(jobs_path, jobs)
        arrays = sorted({job.job_id.split("_")[0] for job in submitted})
        print(f"submitted arrays {', '.join(arrays)}; follow with: squeue -j {','.join(arrays)}")
        print(f"check with: python experiments/sweep.py ablation={groups['ablation']} cluster=slurm --status")
        print(f"tables when done: python analysis/report.py {sweep_dir}")
        return 0

    parallel = 1 if profile.executor == "debug" else local_parallelism(profile)
    finished = run_throttled(executor, job_args, threads, parallel)
    run_of = {tuple(run.overrides): run.run_id for run in todo}
    for args_, job in finished:
        jobs[run_of[tuple(args_)]] = {"job_id": str(job.job_id), "stdout": str(job.paths.stdout),
                                      "stderr": str(job.paths.stderr)}
    write_json(jobs_path, jobs)
    failed = 0
    for args_, job in finished:
        try:
            outcome = job.result()
        except Exception as err:  # the job process itself died
            outcome = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[-500:]}"}
        if outcome["status"] != "ok":
            failed += 1
            print(f"FAILED {outcome.get('run_id', args_)}: {outcome.get('error')}", file=sys.stderr)
    summary = write_tables(sweep_dir)
    if not summary.empty:
        print(summary.to_markdown(index=False, floatfmt=".2f"))
        draw(sweep_dir)
    print(f"tables: {sweep_dir}/summary.md, {sweep_dir}/runs.parquet; figures: {sweep_dir}/figures/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
