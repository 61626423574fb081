"""Run outputs: durable atomic writes, the run lock, and the provenance every result carries.

Every file a run writes reaches its name complete or not at all: written to a temporary file
beside it, flushed and fsynced, given the mode a plain `open` would (0o666 less the umask;
`tempfile.mkstemp` makes 0600 files), renamed over the target, and the directory fsynced so
the rename survives a crash. Appends to `metrics.jsonl` are fsynced before the caller goes on.
A kill during a write leaves at most a `.<name>.*.tmp` orphan, removed by `remove_orphans`.

`RunLock` makes one process the only writer of a run directory: an exclusive `flock` on
`<run_dir>/run.lock`, whose content names the holder (host, pid, SLURM job). The kernel
releases it when the holder dies, however it dies, so a lock file left by a dead process is
simply locked again; the file itself is never deleted (a deleted lock file could be locked
by two processes at once, one through the old inode and one through the new).
"""
from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import json
import os
import platform
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bacl.errors import ConfigError

PACKAGES = ("torch", "open_clip_torch", "omegaconf", "numpy", "pandas", "submitit")
LOCK = "run.lock"
TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"  # temporary files are .<name>.<random>.tmp
SOURCE = Path(__file__).resolve()  # a file of this checkout, for its git state


def umask() -> int:
    """The process umask, read without changing it where Linux allows (the os.umask dance is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in `path` durable; a file system that cannot sync directories is left as is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


# Signals whose handlers may leave the process (submitit's USR2/TERM requeue handlers call sys.exit).
DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with DEFERRED_SIGNALS recorded, then hand them to the handlers they had, in order.

    submitit's pre-timeout handler requeues the job and exits from inside the handler. Arriving
    in the middle of torch.save, its SystemExit was replaced by the zip writer's own error, so
    a requeue became a failed job. Python runs handlers in the main thread only, so elsewhere
    (and for signals without a Python handler) nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: h for s in DEFERRED_SIGNALS if (h := signal.getsignal(s)) is not None}
    pending: list[int] = []
    for s in previous:
        signal.signal(s, lambda sig, frame: pending.append(sig))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            signal.raise_signal(s)


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """`write(f)` to a temporary file opened with `mode`, then fsync, chmod, rename over `path`, fsync the directory.

    Signals are handled after the rename (`signals_deferred`), so an interruption never cuts a write short.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX)
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    _atomic(path, lambda f: json.dump(data, f, indent=2, sort_keys=True, default=str), "w")


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def save_checkpoint(path: Path, state: dict) -> None:
    _atomic(path, lambda f: torch.save(state, f), "wb")


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON line, on disk (fsynced, and its directory entry too when the file is new) before returning."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:
        fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_result(path: Path) -> dict | None:
    """A run's `result.json`: None when missing or unreadable (the run is then resumed or re-evaluated,
    and the file rewritten); ConfigError when it is valid JSON but not an object, which no run
    writes: something else put it there, and it is not overwritten unasked."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:  # binary garbage: unreadable
        return None
    except OSError as err:  # a directory, no permission: not ours to replace
        raise ConfigError(f"{path}: cannot read the run's result ({err.strerror or err}); expected a JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object (a run's result record), got {type(data).__name__} "
                          f"{text.strip()[:60]!r}; move or delete it to run this run again")
    return data


def remove_orphans(directory: Path) -> list[Path]:
    """Delete the temporary files of writes a kill interrupted (call it holding the directory's lock)."""
    removed = []
    for path in Path(directory).glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def holder_record() -> dict[str, Any]:
    """Who holds a lock: written into the lock file for `--status` and for the skipping process's message."""
    record: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        record["slurm_job_id"] = f"{array}_{task}" if array and task else job
    return record


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another process (holder unknown)"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("slurm_job_id"):
        text += f", SLURM job {holder['slurm_job_id']}"
    return text + (f", since {holder['since']}" if holder.get("since") else "")


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """The exclusive writer lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self, attempts: int = 10, wait_s: float = 0.05) -> dict | None:
        """None once held; else the holder's record. A few short retries, so that a `--status` probe,
        which holds the lock for microseconds, is never mistaken for a running run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == attempts - 1:
                    holder = _read_holder(fd)
                    os.close(fd)
                    return holder
                time.sleep(wait_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_record(), sort_keys=True).encode(), 0)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_holder(run_dir: Path) -> dict | None:
    """Without blocking: the holder's record while some process holds the run's lock, else None."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _git(*args: str, cwd: Path) -> str | None:
    """git's stdout, or None where git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(source: Path = SOURCE) -> dict[str, Any] | None:
    """`{commit, dirty}` of the checkout this code runs from, so a result names the code that made it;
    dirty: `git status --porcelain` lists something (edits or untracked files), i.e. the commit alone
    does not reproduce it. None outside a checkout, and for an installed copy that merely sits inside
    some other repository (`source` is not tracked there)."""
    if _git("ls-files", "--error-unmatch", source.name, cwd=source.parent) is None:
        return None
    commit, status = _git("rev-parse", "HEAD", cwd=source.parent), _git("status", "--porcelain", cwd=source.parent)
    if not commit:
        return None
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:  # the module's own version: faiss-cpu and faiss-gpu-cu12 are different distributions of one module
        import faiss
        versions["faiss"] = faiss.__version__
    except ImportError:
        pass
    import torch
    if torch.version.cuda:  # the CUDA torch was built for, and what this machine runs (None on a CPU build)
        versions["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            versions["cudnn"] = str(torch.backends.cudnn.version())
            versions["gpu"] = torch.cuda.get_device_name(0)
    return versions
