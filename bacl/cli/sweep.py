"""Run an ablation grid: `bacl-sweep ablation=schedule [cluster=local|slurm|slurm-gpu|debug]`
(or `python experiments/sweep.py ...`).

Extra `key=value` arguments override every run; `key=[a,b]` (or hydra's `key=a,b`) adds a grid
axis; `cluster.<key>=value` overrides a key of the cluster profile (cluster.mem_gb=32).
  --dry-run       print the runs and what would be skipped, submit nothing
  --status [DIR]  summarise done / running / failed (with the log tail) / interrupted / missing;
                  with a sweep directory (results/<ablation>), the runs its sweep.json records
  --rerun-stale   train again the finished runs that another git commit made (moved to <dir>.stale/)
  --cfg           print the ablation, the cluster profile and the overrides (YAML), and exit
  --help          the groups and their choices; `--help cluster=slurm`, `--help ablation=k`: their keys
Finished runs (result.json status ok) and running ones (their run.lock is held) are skipped,
so running a sweep again submits only what failed, was interrupted or is missing; a run that
another sweep started meanwhile is skipped by its job, which finds the lock held. A profile whose
GPUs do not match the runs' train.device (gpus_per_node=0 with cuda, or GPUs for cpu runs) is
refused before anything is submitted. `cluster=local` waits and then writes the aggregated
tables; `cluster=slurm` submits job arrays and returns at once.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from analysis.aggregate import write_tables
from analysis.report import draw
from bacl.cli.args import Command, as_axes, parse
from bacl.cli.help import render
from bacl.errors import ConfigError
from bacl.launch import describe_request, local_parallelism, make_executor, run_throttled, submit_slurm
from bacl.profiles import check_devices
from bacl.results import describe_holder, git_state
from bacl.sweep import Run, expand, load_ablation, load_group_file, unextracted
from bacl.sweep_record import RECORD, record, recorded, set_aside, stale
from bacl.sweep_state import State, SweepJobs

FLAGS = ("--dry-run", "--status", "--rerun-stale", "--cfg")
GROUPS = ("ablation", "cluster", "method", "dataset")
RESOURCES = ("executor", "partition", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb",  # --dry-run shows
             "timeout_min")


def select(cmd: Command) -> tuple[str, str, list[str], list[Run], Path]:
    """(ablation, cluster, cluster overrides, runs, sweep directory) from the command line, or from the
    sweep.json of a directory given to --status / --dry-run; `--status` alone with ablation=<name> also
    counts the runs recorded in its directory."""
    args = as_axes(cmd.overrides)
    groups = {k: v for k, _, v in (a.partition("=") for a in args) if k in ("ablation", "cluster")}
    cluster_args = [a.partition(".")[2] for a in args if a.startswith("cluster.")]
    rest = [a for a in args if a.partition("=")[0] not in ("ablation", "cluster") and not a.startswith("cluster.")]
    if cmd.paths:
        if len(cmd.paths) > 1 or not cmd.flags & {"--status", "--dry-run"} or rest or "ablation" in groups:
            raise ConfigError(f"{' '.join(cmd.paths)}: a sweep directory is read alone, with --status or --dry-run "
                              f"(bacl-sweep --status results/<ablation>); otherwise give ablation=<name> and overrides")
        sweep_dir = Path(cmd.paths[0])
        data, runs = recorded(sweep_dir)
        cluster = groups.get("cluster", data["cluster"])
        return data["ablation"], cluster, cluster_args or data["cluster_overrides"], runs, sweep_dir
    if "ablation" not in groups:
        raise ConfigError("missing ablation=<name> (or, with --status, a sweep directory); --help lists the ablations")
    runs = expand(groups["ablation"], rest)
    sweep_dir = Path(runs[0].cfg.output_dir)
    if "--status" in cmd.flags and not rest and (sweep_dir / RECORD).exists():
        known = {run.run_id for run in runs}
        runs += [run for run in recorded(sweep_dir)[1] if run.run_id not in known]
    return groups["ablation"], groups.get("cluster", "local"), cluster_args, runs, sweep_dir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd = parse(argv, flags=FLAGS, paths=True)
        if cmd.help is not None:
            print(render(__doc__, cmd.help, groups=GROUPS))
            return 0
        name, cluster, cluster_args, runs, sweep_dir = select(cmd)
        profile = load_group_file("cluster", cluster, tuple(cluster_args))
        if "--cfg" in cmd.flags:
            print(OmegaConf.to_yaml({"ablation": load_ablation(name), "cluster": profile, "runs": len(runs),
                                     "overrides": [a for a in as_axes(cmd.overrides) if not a.startswith("ablation=")]}), end="")
            return 0
        if "--status" not in cmd.flags:
            check_devices(profile, {run.cfg.train.device for run in runs},
                          f"cluster={cluster}" + "".join(f" cluster.{a}" for a in cluster_args))
        jobs = SweepJobs.load(sweep_dir)
        states = {run.run_id: jobs.state(run, slurm=profile.executor == "slurm") for run in runs}
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    commit = (git_state() or {}).get("commit")
    old = stale([run for run in runs if states[run.run_id][0] == "done"], commit)
    rerun = "--rerun-stale" in cmd.flags
    if old and not rerun:
        print(f"warning: skipping {len(old)} ok run(s) made by another commit than {commit[:12]}; "
              f"--rerun-stale trains them again", file=sys.stderr)
    if "--dry-run" in cmd.flags:
        print(f"cluster {cluster}: " + " ".join(f"{k}={profile[k]}" for k in RESOURCES))
        print(f"  {describe_request(profile)}")
    if "--dry-run" in cmd.flags or "--status" in cmd.flags:
        show(name, runs, states, jobs, dry_run="--dry-run" in cmd.flags,
             redo=frozenset(run.run_id for run in old) if rerun else frozenset())
        return 0
    for run in old if rerun else []:
        print(f"stale {run.run_id}: moved to {set_aside(run)}; training it again")
        states[run.run_id] = ("missing", None)

    todo = [run for run in runs if states[run.run_id][0] not in ("done", "running")]
    missing_features = unextracted(todo)
    if missing_features:
        print("error: extract the features before training on them:\n  " + "\n  ".join(missing_features), file=sys.stderr)
        return 2
    print(f"sweep {name}: {len(runs)} runs, {len(runs) - len(todo)} done or running, "
          f"submitting {len(todo)} to {profile.executor}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record(sweep_dir, name, cluster, cluster_args, runs)
    if not todo:
        if profile.executor != "slurm":
            write_tables(sweep_dir)
        return 0
    if profile.executor == "slurm":
        submit(name, todo, profile, jobs)
        return 0
    return run_here(name, todo, profile, jobs)


def show(name: str, runs: list[Run], states: dict[str, State], jobs: SweepJobs, dry_run: bool,
         redo: frozenset[str] = frozenset()) -> None:
    """--dry-run: one line per run with what a real call would do (`redo`: stale runs --rerun-stale trains
    again); --status: the failures with their log tail."""
    counts: dict[str, int] = {}
    for run in runs:
        state, error = states[run.run_id]
        counts[state] = counts.get(state, 0) + 1
        if dry_run:
            action = "skip" if state in ("done", "running") and run.run_id not in redo else "submit"
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
    print(f"check with: bacl-sweep --status {jobs.sweep_dir}")
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
            outcome = job.results()[0]  # rank 0's record; result() refuses a job of several tasks
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
    sys.exit(main())
