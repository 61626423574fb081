"""Where each run of a sweep stands: its run directory, and on SLURM the scheduler's word.

A run directory says running (a process holds its `run.lock`, checked without blocking),
done (result.json ok), failed (result.json failed), interrupted (result.json interrupted:
Ctrl-C, SIGTERM, or a preempted job that submitit requeued), started (config.yaml only) or
missing. It cannot tell a queued SLURM job from one the scheduler ended without a result
(cancelled, out of memory, past its requeues): neither holds the lock or wrote result.json.
So a sweep records each job it submits in <sweep_dir>/jobs.json and, for runs with no
result yet (or an interrupted one), asks SLURM about the job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import submitit

from bacl.results import describe_holder, lock_holder, read_json, read_result, write_json
from bacl.sweep import Run

# SLURM states of a job that may still write its result.
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN"})

# (done | failed | interrupted | started | missing | running, the error or, when running, who runs it)
State = tuple[str, Optional[str]]


def run_state(run: Run) -> State:
    """The state from what the run directory holds: `running` while a process holds its lock.
    Raises ConfigError for a result.json that is valid JSON but not an object."""
    run_dir = Path(run.cfg.output_dir) / run.run_id
    holder = lock_holder(run_dir)
    if holder is not None:
        return "running", describe_holder(holder)
    result = read_result(run_dir / "result.json")
    if result is not None:
        status = result.get("status")
        if status == "ok":
            return "done", None
        return ("interrupted" if status == "interrupted" else "failed"), result.get("error")
    return ("started", None) if (run_dir / "config.yaml").exists() else ("missing", None)


def slurm_state(job_id: str, folder: Path) -> Optional[str]:
    """SLURM's state of a job, or None when no scheduler answers (the caller counts it as running)."""
    try:
        return submitit.SlurmJob(folder=folder / "%j", job_id=job_id).state
    except Exception:  # no scheduler reachable: unknown
        return None


def log_tail(path: Optional[str], lines: int = 8) -> str:
    """The last lines of a job's log: where a failure that wrote no error message shows."""
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


@dataclass
class SweepJobs:
    """jobs.json of a sweep directory: run_id -> {"job_id", "stdout", "stderr"} of the job that last ran it."""
    sweep_dir: Path
    records: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepJobs:
        return cls(sweep_dir, read_json(sweep_dir / "jobs.json") or {})

    @property
    def folder(self) -> Path:
        """submitit's folder: pickles and logs, one sub-folder per job id."""
        return self.sweep_dir / ".submitit"

    def add(self, run_id: str, job: submitit.Job) -> None:
        self.records[run_id] = {"job_id": str(job.job_id), "stdout": str(job.paths.stdout),
                                "stderr": str(job.paths.stderr)}

    def save(self) -> None:
        write_json(self.sweep_dir / "jobs.json", self.records)

    def state(self, run: Run, slurm: bool) -> State:
        """The run directory's state; on SLURM a run without a result (or interrupted, perhaps
        requeued) is running while its job is active."""
        state, error = run_state(run)
        record = self.records.get(run.run_id)
        if state in ("started", "missing", "interrupted") and slurm and record is not None:
            scheduler = slurm_state(record["job_id"], self.folder)
            if scheduler is None or scheduler in ACTIVE:
                return "running", None
            if state == "interrupted":
                return state, error
            return "failed", f"slurm job {record['job_id']} ended {scheduler} without a result"
        return state, error

    def log_tail(self, run_id: str, lines: int = 8) -> str:
        record = self.records.get(run_id)
        return log_tail(record["stderr"] if record else None, lines)
