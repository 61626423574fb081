"""Run an ablation grid: `python experiments/sweep.py ablation=schedule [cluster=local|slurm|debug]`.

Extra `key=value` arguments override every run; `key=[a,b]` adds a grid axis.
  --dry-run   print the runs and what would be skipped, submit nothing
  --status    summarise done / running / failed (with the log tail) / interrupted / missing
Finished runs (result.json status ok) and running ones (their run.lock is held) are skipped,
so running a sweep again submits only what failed, was interrupted or is missing; a run that
another sweep started meanwhile is skipped by its job, which finds the lock held.
`cluster=local` waits and then writes the aggregated tables; `cluster=slurm` submits job
arrays and returns at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig

from analysis.aggregate import write_tables
from analysis.report import draw
from bacl.errors import ConfigError
from bacl.launch import local_parallelism, make_executor, run_throttled, submit_slurm
from bacl.results import describe_holder
from bacl.sweep import Run, expand, load_group_file, unextracted
from bacl.sweep_state import State, SweepJobs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--status", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # options may come anywhere among the overrides
    groups = {k: v for k, _, v in (a.partition("=") for a in args.overrides) if k in ("ablation", "cluster")}
    rest = [a for a in args.overrides if a.partition("=")[0] not in ("ablation", "cluster")]
    try:
        if "ablation" not in groups:
            raise ConfigError("missing ablation=<name>")
        profile = load_group_file("cluster", groups.get("cluster", "local"))
        runs = expand(groups["ablation"], rest)
        name, sweep_dir = groups["ablation"], Path(runs[0].cfg.output_dir)
        jobs = SweepJobs.load(sweep_dir)
        states = {run.run_id: jobs.state(run, slurm=profile.executor == "slurm") for run in runs}
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run or args.status:
        show(name, runs, states, jobs, dry_run=args.dry_run)
        return 0

    todo = [run for run in runs if states[run.run_id][0] not in ("done", "running")]
    missing_features = unextracted(todo)
    if missing_features:
        print("error: extract the features before training on them:\n  " + "\n  ".join(missing_features), file=sys.stderr)
        return 2
    print(f"sweep {name}: {len(runs)} runs, {len(runs) - len(todo)} done or running, "
          f"submitting {len(todo)} to {profile.executor}")
    if not todo:
        if profile.executor != "slurm":
            write_tables(sweep_dir)
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if profile.executor == "slurm":
        submit(name, todo, profile, jobs)
        return 0
    return run_here(name, todo, profile, jobs)


def show(name: str, runs: list[Run], states: dict[str, State], jobs: SweepJobs, dry_run: bool) -> None:
    """--dry-run: one line per run with what a real call would do; --status: the failures with their log tail."""
    counts: dict[str, int] = {}
    for run in runs:
        state, error = states[run.run_id]
        counts[state] = counts.get(state, 0) + 1
        if dry_run:
            action = "skip" if state in ("done", "running") else "submit"
            axes = " ".join(f"{k}={v}" for k, v in run.axes.items())
            print(f"{run.run_id}  {state:8s} {action:6s} {axes}")
        elif state in ("failed", "interrupted"):
            print(f"{state.upper()} {run.run_id} {run.axes}: {error}")
            tail = jobs.log_tail(run.run_id)
            if tail:
                print("  " + tail.replace("\n", "\n  "))
        elif state == "running" and error:
            print(f"running {run.run_id} {run.axes}: {error}")
    print(f"sweep {name} ({len(runs)} runs in {jobs.sweep_dir}): "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for message in unextracted([r for r in runs if states[r.run_id][0] != "done"]) if dry_run else []:
        print(f"warning: {message}")


def submit(name: str, todo: list[Run], profile: DictConfig, jobs: SweepJobs) -> None:
    """SLURM: job arrays, recorded in jobs.json, and return at once."""
    executor = make_executor(profile, jobs.folder, f"bacl-{name}")
    submitted = submit_slurm(executor, [list(run.overrides) for run in todo], profile.cpus_per_task,
                             profile.max_array_size)
    for run, job in zip(todo, submitted):
        jobs.add(run.run_id, job)
    jobs.save()
    arrays = sorted({job.job_id.split("_")[0] for job in submitted})
    print(f"submitted arrays {', '.join(arrays)}; follow with: squeue -j {','.join(arrays)}")
    print(f"check with: python experiments/sweep.py ablation={name} cluster=slurm --status")
    print(f"tables when done: python analysis/report.py {jobs.sweep_dir}")


def run_here(name: str, todo: list[Run], profile: DictConfig, jobs: SweepJobs) -> int:
    """Local or debug: run everything, wait, write the tables and figures; 1 if any run failed."""
    executor = make_executor(profile, jobs.folder, f"bacl-{name}")
    parallel = 1 if profile.executor == "debug" else local_parallelism(profile)
    finished = run_throttled(executor, [list(run.overrides) for run in todo], profile.cpus_per_task, parallel)
    run_of = {run.overrides: run.run_id for run in todo}
    failed = 0
    for args, job in finished:
        try:
            outcome = job.result()
        except Exception as err:  # the job process itself died
            outcome = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[-500:]}"}
        if outcome["status"] == "running":  # another process (another sweep) holds the run and finishes it
            print(f"skipped {run_of[tuple(args)]}: running in {describe_holder(outcome.get('holder'))}")
            continue  # jobs.json keeps the job that runs it
        jobs.add(run_of[tuple(args)], job)
        if outcome["status"] != "ok":
            failed += 1
            print(f"FAILED {outcome.get('run_id', args)}: {outcome.get('error')}", file=sys.stderr)
    jobs.save()
    sweep_dir = jobs.sweep_dir
    summary = write_tables(sweep_dir)
    if not summary.empty:
        print(summary.to_markdown(index=False, floatfmt=".2f"))
        draw(sweep_dir)
    print(f"tables: {sweep_dir}/summary.md, {sweep_dir}/runs.parquet; figures: {sweep_dir}/figures/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
