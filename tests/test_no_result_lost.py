"""No result lost, no run done twice: kills at every checkpoint boundary, non-finite updates,
concurrent processes on one run directory, corrupt files, interruptions, clear input errors.

A kill is simulated in-process by `Killed`, raised at the chosen moment, after which the
trainer's own writes are no-ops (a killed process writes nothing more, and the kernel drops
its lock); `test_a_real_sigkill_during_the_final_evaluation` checks the same with SIGKILL.
"""
from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_resume import equal

import bacl.results as results
import bacl.trainer as trainer_module
from bacl.config import load_config, run_id
from bacl.errors import ConfigError
from bacl.launch import TrainJob
from bacl.results import LOCK, RunLock, lock_holder, save_checkpoint
from bacl.trainer import Trainer
from helpers import REPO, TINY, load_cli

# 6 steps per epoch, 2 epochs, checkpoints at steps 3, 6, 9 and 12: one at each epoch's end
OVERRIDES = [*TINY, "method=bacl", "train.checkpoint_every=3"]
CHECKPOINT_STEPS = (3, 6, 9, 12)


def config(out: Path, *extra: str):
    return load_config([*OVERRIDES, f"output_dir={out}", *extra])


def snapshot(run_dir: Path) -> dict:
    """What must be bitwise equal between an interrupted-and-resumed run and an uninterrupted one."""
    attention = run_dir / "attention_example.json"
    return {
        "metrics": json.loads((run_dir / "result.json").read_text())["metrics"],
        "log": (run_dir / "metrics.jsonl").read_text(),
        "method": torch.load(run_dir / "last.pt", weights_only=False)["method"],
        "attention": attention.read_text() if attention.exists() else None,
    }


def assert_same_run(run_dir: Path, expected: dict) -> None:
    got = snapshot(run_dir)
    assert got["metrics"] and got["metrics"] == expected["metrics"]  # bitwise equal floats
    assert [json.loads(line)["epoch"] for line in got["log"].splitlines()] == [1, 2]  # one record per epoch
    assert got["log"] == expected["log"]
    assert got["attention"] == expected["attention"]
    a, b = got["method"], expected["method"]
    assert a.keys() == b.keys()
    for key in a:  # tensors, and the extra states of the generators and the bank (dicts of tensors and numbers)
        assert equal(a[key], b[key]), key
    assert not list(run_dir.glob(".*.tmp"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    cfg = config(tmp_path_factory.mktemp("straight"))
    result = Trainer(cfg).run()
    assert result["status"] == "ok", result.get("error")
    return snapshot(Trainer(cfg).run_dir)


# ---- kills ------------------------------------------------------------------------------------
class Killed(BaseException):
    """SIGKILL, in-process: not an Exception, and nothing is written after it."""


def kill_at(monkeypatch, where: str, at: int) -> None:
    """Raise Killed at `where` (`checkpoint`: right after last.pt at step `at` is on disk;
    `evaluate`, `attention`: during epoch `at`'s evaluation or attention example; `torn`: half
    way through epoch `at`'s metrics.jsonl line; `appended`: right after it; `result`: while
    writing the final result.json). From then on the trainer writes nothing, as a dead process."""
    dead = []

    def die():
        dead.append(True)
        raise Killed(f"{where} {at}")

    real_save, real_append, real_write_json = (trainer_module.save_checkpoint, trainer_module.append_jsonl,
                                               trainer_module.write_json)
    real_evaluate, real_attention = trainer_module.evaluate, trainer_module.write_attention_example
    evaluations = []

    def save_checkpoint(path, state):
        real_save(path, state)
        if where == "checkpoint" and state["step"] == at:
            die()

    def evaluate(*args, **kwargs):
        evaluations.append(1)
        if where == "evaluate" and len(evaluations) == at:
            die()
        return real_evaluate(*args, **kwargs)

    def write_attention_example(*args, **kwargs):
        if where == "attention":
            die()
        return real_attention(*args, **kwargs)

    def append_jsonl(path, record):
        if where == "torn" and record["epoch"] == at:
            line = json.dumps(record, sort_keys=True)
            with open(path, "a") as f:
                f.write(line[: len(line) // 2])
            die()
        real_append(path, record)
        if where == "appended" and record["epoch"] == at:
            die()

    def write_json(path, data):
        if dead:
            return
        if where == "result" and Path(path).name == "result.json" and data.get("status") == "ok":
            die()
        real_write_json(path, data)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    monkeypatch.setattr(trainer_module, "write_attention_example", write_attention_example)
    monkeypatch.setattr(trainer_module, "append_jsonl", append_jsonl)
    monkeypatch.setattr(trainer_module, "write_json", write_json)


KILLS = ([("checkpoint", s) for s in CHECKPOINT_STEPS]
         + [("evaluate", 1), ("evaluate", 2), ("attention", 2), ("torn", 1), ("torn", 2),
            ("appended", 1), ("appended", 2), ("result", 2)])


@pytest.mark.parametrize("where,at", KILLS, ids=[f"{w}-{a}" for w, a in KILLS])
def test_a_kill_at_any_boundary_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, capfd, straight, where, at):
    cfg = config(tmp_path)
    with monkeypatch.context() as m:
        kill_at(m, where, at)
        with pytest.raises(Killed):
            Trainer(cfg).run()
    run_dir = Trainer(cfg).run_dir
    assert not (run_dir / "result.json").exists()  # a killed run wrote no result
    capfd.readouterr()
    resumed = Trainer(cfg).run()
    assert resumed["status"] == "ok", resumed.get("error")
    assert_same_run(run_dir, straight)
    if where == "torn":
        err = capfd.readouterr().err
        assert f"{run_dir / 'metrics.jsonl'}: its last line" in err and "not valid JSON: dropped" in err
    if (where, at) in (("checkpoint", 12), ("evaluate", 2), ("attention", 2), ("appended", 2), ("result", 2)):
        assert resumed["resumed_from_step"] == 12  # only the final evaluation was redone


def test_a_real_sigkill_during_the_final_evaluation(tmp_path, straight):
    """A SIGKILL (no Python cleanup at all) inside the final evaluation, then `train.py` again."""
    cfg_args = [*OVERRIDES, f"output_dir={tmp_path}"]
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import bacl.trainer as t
        from helpers import load_cli
        real, calls = t.evaluate, []
        def evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        t.evaluate = evaluate
        sys.exit(load_cli("train")({cfg_args!r}))
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = Trainer(load_config(cfg_args)).run_dir
    assert not (run_dir / "result.json").exists()
    assert load_cli("train")(cfg_args) == 0
    assert_same_run(run_dir, straight)


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "truncated", "failed"])
def test_a_finished_run_without_a_readable_ok_result_is_re_evaluated_not_retrained(tmp_path, monkeypatch, straight,
                                                                                   damage):
    cfg = config(tmp_path)
    assert Trainer(cfg).run()["status"] == "ok"
    path = Trainer(cfg).run_dir / "result.json"
    text = path.read_text()
    if damage == "deleted":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(os.urandom(64))
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    else:  # an ok run whose result says otherwise (e.g. written by an older version)
        path.write_text(json.dumps({**json.loads(text), "status": "failed"}))

    def no_training(self, batch):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(Trainer, "train_step", no_training)
    again = Trainer(cfg).run()
    assert again["status"] == "ok" and again["resumed_from_step"] == 12
    assert_same_run(path.parent, straight)


# ---- non-finite updates -----------------------------------------------------------------------
def all_finite(state: dict) -> bool:
    tensors = [v for v in state["method"].values() if torch.is_tensor(v) and v.is_floating_point()]
    tensors += [v for s in state["optimizer"]["state"].values() for v in s.values()
                if torch.is_tensor(v) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("poison", ["weight", "adam_second_moment"])
def test_a_non_finite_update_never_reaches_the_checkpoint(tmp_path, monkeypatch, poison):
    """NaN written into a weight (inf into Adam's second moment) by the update of step 6, a
    checkpoint step: last.pt stays the step-3 one, finite, and result.json says so."""
    real = Trainer.train_step

    def poisoned(self, batch):
        stats = real(self, batch)
        if self.step == 6:
            weight = self.method.model.proj["vision"].weight
            if poison == "weight":
                weight.data[0, 0] = float("nan")
            else:
                self.optimizer.state[weight]["exp_avg_sq"][0, 0] = float("inf")
        return stats
    monkeypatch.setattr(Trainer, "train_step", poisoned)
    trainer = Trainer(config(tmp_path))
    result = trainer.run()
    assert result["status"] == "failed"
    assert "non-finite parameters or optimizer state after step 6" in result["error"]
    assert "model.proj.vision.weight" in result["error"]
    assert result["checkpoint_step"] == 3 and result["checkpoint"] == str(trainer.run_dir / "last.pt")
    assert json.loads((trainer.run_dir / "result.json").read_text())["checkpoint_step"] == 3
    kept = torch.load(trainer.run_dir / "last.pt", weights_only=False)
    assert kept["step"] == 3 and all_finite(kept)


def test_a_diverging_run_keeps_a_finite_checkpoint(tmp_path, monkeypatch):
    """The update of step 3 makes the weights non-finite while the loss of step 3 was finite (what a
    far too high lr does; the old trainer saved exactly that state as the 'last good' one). The update
    is poisoned directly: which lr diverges that way, and at which step, depends on the optimizer's
    details (weight-decay groups changed it) and on the thread count."""
    build = Trainer.build

    def build_with_a_poisoned_third_update(self: Trainer) -> None:
        build(self)
        update = self.optimizer.step

        def step(*args, **kwargs):
            out = update(*args, **kwargs)
            if self.step == 2:  # the third update: self.step counts the updates before it
                self.params[0].data.fill_(float("nan"))
            return out
        self.optimizer.step = step

    monkeypatch.setattr(Trainer, "build", build_with_a_poisoned_third_update)
    trainer = Trainer(load_config([*TINY, "method=clip", "train.checkpoint_every=1", f"output_dir={tmp_path}"]))
    result = trainer.run()
    assert result["status"] == "failed" and "non-finite" in result["error"]
    kept = torch.load(trainer.run_dir / "last.pt", weights_only=False)
    assert all_finite(kept) and kept["step"] == result["checkpoint_step"] == 2 < result["step"]


def test_a_requeue_signal_during_a_checkpoint_write_is_handled_after_the_write(tmp_path, monkeypatch):
    """submitit's pre-timeout USR2 handler requeues and exits from inside the handler. Arriving in the
    middle of torch.save it left a torn zip whose error hid the exit: the requeue became a failed job."""
    def requeue_and_exit(sig, frame):
        raise SystemExit(-1)

    real_save = torch.save

    class SignalAtFirstWrite:  # the file torch.save writes to: USR2 arrives once bytes start going out
        def __init__(self, f):
            self.f, self.sent = f, False

        def write(self, data):
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGUSR2)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save_interrupted_halfway(obj, f):
        real_save(obj, SignalAtFirstWrite(f))

    previous = signal.signal(signal.SIGUSR2, requeue_and_exit)
    try:
        monkeypatch.setattr(torch, "save", save_interrupted_halfway)
        with pytest.raises(SystemExit):
            save_checkpoint(tmp_path / "last.pt", {"step": 7})
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGUSR2) is requeue_and_exit  # restored after the write
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert torch.load(tmp_path / "last.pt") == {"step": 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # written whole, no temporary file left


# ---- one writer per run directory ------------------------------------------------------------
def test_a_held_lock_makes_a_second_process_skip_the_run(tmp_path, capsys):
    cfg = config(tmp_path)
    run_dir = Trainer(cfg).run_dir
    lock = RunLock(run_dir)
    assert lock.acquire() is None  # another open file description: conflicts like another process
    try:
        skipped = Trainer(cfg).run()
        assert skipped["status"] == "running" and skipped["holder"]["pid"] == os.getpid()
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]  # nothing written
        assert lock_holder(run_dir)["pid"] == os.getpid()
        assert load_cli("train")([*OVERRIDES, f"output_dir={tmp_path}"]) == 0
        out, err = capsys.readouterr()
        assert f"run {run_dir.name}: running in pid {os.getpid()} on " in err and "is locked); skipped" in err
        assert json.loads(out.splitlines()[-1])["status"] == "running"
    finally:
        lock.release()
    assert lock_holder(run_dir) is None
    assert Trainer(cfg).run()["status"] == "ok"


def test_a_stale_lock_file_of_a_dead_process_is_simply_locked_again(tmp_path):
    cfg = config(tmp_path, "train.epochs=1")
    run_dir = Trainer(cfg).run_dir
    run_dir.mkdir(parents=True)
    (run_dir / LOCK).write_text(json.dumps({"host": "gone", "pid": 999999}))
    assert lock_holder(run_dir) is None
    assert Trainer(cfg).run()["status"] == "ok"


def test_two_processes_started_together_train_the_run_once(tmp_path):
    args = [sys.executable, str(REPO / "experiments" / "train.py"), *OVERRIDES, "method=clip", "train.epochs=4",
            f"output_dir={tmp_path}"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    errs = "".join(err for _, err in outs)
    assert errs.count(": starting (") == 1 and "resuming" not in errs
    run_dir = Trainer(load_config(args[2:])).run_dir
    log = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"


def test_sweep_status_and_dry_run_show_a_held_lock_as_running(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0, 1]\n")
    main = load_cli("sweep")
    args = ["ablation=tiny", f"output_dir={tmp_path}", *TINY]
    import bacl.sweep as sweep
    held = sweep.expand("tiny", args[1:])[0]
    lock = RunLock(Path(held.cfg.output_dir) / held.run_id)
    assert lock.acquire() is None
    try:
        assert main([*args, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"{held.run_id}  running  skip" in out and " missing  submit " in out
        assert main([*args, "--status"]) == 0
        out = capsys.readouterr().out
        assert "1 missing, 1 running" in out and f"running {held.run_id}" in out and f"pid {os.getpid()}" in out
    finally:
        lock.release()


@pytest.mark.slow  # about 50 s on 2 cores: two drivers, four job processes, tables and figures twice
def test_two_sweeps_started_together_train_each_run_once(conf, tmp_path):
    """Two local sweep drivers on one output directory: each run is trained by exactly one job."""
    conf("pair", "grid:\n  - method: [clip]\nseeds: [0, 1]\n")
    out = tmp_path / "sweep"
    driver = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import bacl.sweep
        bacl.sweep.CONF_DIR = Path({str(tmp_path / 'conf')!r})
        from helpers import load_cli
        sys.exit(load_cli("sweep")(sys.argv[1:]))
    """)
    args = [sys.executable, "-c", driver, "ablation=pair", f"output_dir={out}", *TINY, "train.epochs=8"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
    logs = "".join(p.read_text(errors="replace") for p in (out / ".submitit").rglob("*_log.err"))
    run_dirs = sorted(p.parent for p in out.glob(f"*/{LOCK}"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        assert logs.count(f"run {run_dir.name}: starting (") == 1, logs[-3000:]  # trained once
        assert f"run {run_dir.name}: resuming" not in logs
        epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 9))
        assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"


# ---- corrupt files ---------------------------------------------------------------------------
def corrupt_bytes(kind: str, good: bytes) -> bytes:
    if kind == "random":
        return os.urandom(4096)
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buf)  # loads, but is no checkpoint
    return buf.getvalue()


def killed_after_checkpoint(tmp_path: Path, monkeypatch, step: int = 9) -> Path:
    """The run directory of a default run killed right after its checkpoint at `step`."""
    cfg = config(tmp_path)
    with monkeypatch.context() as m:
        kill_at(m, "checkpoint", step)
        with pytest.raises(Killed):
            Trainer(cfg).run()
    return Trainer(cfg).run_dir


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "not_a_checkpoint"])
def test_a_corrupt_checkpoint_is_moved_aside_and_the_run_starts_over(tmp_path, capfd, monkeypatch, straight, kind):
    run_dir = killed_after_checkpoint(tmp_path, monkeypatch)
    bad = corrupt_bytes(kind, (run_dir / "last.pt").read_bytes())
    (run_dir / "last.pt").write_bytes(bad)
    capfd.readouterr()
    assert load_cli("train")([*OVERRIDES, f"output_dir={tmp_path}"]) == 0
    err = capfd.readouterr().err
    assert f"warning: {run_dir / 'last.pt'} cannot be resumed from" in err and "moved aside to last.pt.corrupt-" in err
    assert f"run {run_dir.name}: starting (" in err  # from scratch
    (aside,) = run_dir.glob("last.pt.corrupt-*")
    assert aside.read_bytes() == bad  # kept, not deleted
    assert_same_run(run_dir, straight)


@pytest.mark.parametrize("damage", ["deleted", "torn_last_line", "corrupt_middle_line", "checkpoint_without_records"])
def test_a_damaged_metrics_log_is_restored_from_the_checkpoint(tmp_path, capfd, monkeypatch, straight, damage):
    path = killed_after_checkpoint(tmp_path, monkeypatch) / "metrics.jsonl"
    if damage == "checkpoint_without_records":  # as written before checkpoints held records: read metrics.jsonl
        state = torch.load(path.parent / "last.pt", weights_only=False)
        del state["records"]
        torch.save(state, path.parent / "last.pt")
        assert Trainer(config(tmp_path)).run()["status"] == "ok"
        assert_same_run(path.parent, straight)
        return
    if damage == "deleted":
        path.unlink()
    elif damage == "torn_last_line":
        with open(path, "a") as f:
            f.write('{"epoch": 2, "eval": {"ael": 0.1')
    else:
        path.write_text("garbage\n" + path.read_text())
    capfd.readouterr()
    assert Trainer(config(tmp_path)).run()["status"] == "ok"
    err = capfd.readouterr().err
    assert f"warning: {path}" in err
    assert_same_run(path.parent, straight)


def test_orphan_temporary_files_are_removed_at_start(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    with monkeypatch.context() as m:
        kill_at(m, "checkpoint", 3)
        with pytest.raises(Killed):
            Trainer(cfg).run()
    run_dir = Trainer(cfg).run_dir
    orphans = [run_dir / ".last.pt.k2j3_x.tmp", run_dir / ".result.json.abc.tmp", run_dir / ".metrics.jsonl.q.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"partial")
    (run_dir / "notes.tmp").write_text("not ours")
    assert Trainer(cfg).run()["status"] == "ok"
    assert not any(o.exists() for o in orphans) and (run_dir / "notes.tmp").exists()


# ---- modes and durability ----------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o002, 0o027])
def test_run_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        cfg = config(tmp_path, "method=clip", "train.epochs=1")
        assert Trainer(cfg).run()["status"] == "ok"
    finally:
        os.umask(old)
    run_dir = Trainer(cfg).run_dir
    for name in ("result.json", "last.pt", "metrics.jsonl", "config.yaml"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~mask, name


def test_atomic_writes_and_appends_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(results.os, "fsync", fsync)
    monkeypatch.setattr(results.os, "replace", replace)
    for write in (lambda p: results.save_checkpoint(p, {"x": torch.ones(2)}), lambda p: results.write_json(p, {"a": 1}),
                  lambda p: results.write_text(p, "t")):
        events.clear()
        target = tmp_path / "out"
        write(target)
        (_, tmp, dst), = [e for e in events if e[0] == "replace"]
        i = events.index(("replace", tmp, dst))
        assert ("fsync", tmp) in events[:i] and dst == str(target)
        assert ("fsync", str(tmp_path)) in events[i:]  # the directory, after the rename
    events.clear()
    results.append_jsonl(tmp_path / "log.jsonl", {"epoch": 1})
    assert ("fsync", str(tmp_path / "log.jsonl")) in events and ("fsync", str(tmp_path)) in events


# ---- interruptions -------------------------------------------------------------------------------
def stop_at(monkeypatch, step: int, stop) -> None:
    real = Trainer.train_step

    def step_then_stop(self, batch):
        if self.step == step:
            stop()
        return real(self, batch)
    monkeypatch.setattr(Trainer, "train_step", step_then_stop)


def ctrl_c():
    raise KeyboardInterrupt


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises in the main thread before this returns


@pytest.mark.parametrize("stop,raised,says", [
    (ctrl_c, KeyboardInterrupt, "by Ctrl-C (KeyboardInterrupt)"),
    (sigterm, KeyboardInterrupt, "by SIGTERM"),
])
def test_an_interrupted_run_says_so_and_resumes(tmp_path, monkeypatch, straight, stop, raised, says):
    cfg = config(tmp_path)
    with monkeypatch.context() as m:
        stop_at(m, 5, stop)
        with pytest.raises(raised):
            Trainer(cfg).run()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the trainer's handler is gone
    run_dir = Trainer(cfg).run_dir
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and says in result["error"]
    assert result["step"] == 5 and result["checkpoint_step"] == 3
    assert lock_holder(run_dir) is None
    assert Trainer(cfg).run()["status"] == "ok"
    assert_same_run(run_dir, straight)


def test_submitit_requeue_path_is_recorded_and_resumes(tmp_path, monkeypatch, straight):
    """submitit leaves a requeued job by SystemExit from its USR2 handler: the trainer records
    `interrupted` and lets it through; the checkpointed callable then resumes from last.pt.
    Under submitit (a SIGTERM handler already set) the trainer does not touch SIGTERM."""
    overrides = [*OVERRIDES, f"output_dir={tmp_path}"]
    monkeypatch.setenv("SUBMITIT_DEBUG_JOB_ID", "requeue-test")  # TrainJob asks submitit about its tasks
    submitit_handler = lambda signum, frame: None  # stands for submitit's `bypass`
    previous = signal.signal(signal.SIGTERM, submitit_handler)
    seen = []
    try:
        with monkeypatch.context() as m:
            def requeued():
                seen.append(signal.getsignal(signal.SIGTERM))
                sys.exit(3)  # LocalJobEnvironment._requeue's exit code
            stop_at(m, 5, requeued)
            with pytest.raises(SystemExit) as exit_info:
                TrainJob()(overrides, 1)
        assert exit_info.value.code == 3 and seen == [submitit_handler]
        run_dir = Trainer(load_config(overrides)).run_dir
        result = json.loads((run_dir / "result.json").read_text())
        assert result["status"] == "interrupted" and "SystemExit(3)" in result["error"] and "requeue" in result["error"]
        delayed = TrainJob().checkpoint(overrides, 1)  # what submitit pickles for the requeued job
        outcome = delayed.function(*delayed.args, **delayed.kwargs)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert outcome["status"] == "ok"
    assert json.loads((run_dir / "result.json").read_text())["resumed_from_step"] == 3
    assert_same_run(run_dir, straight)


# ---- clear errors for bad input (exit 2, naming it) ------------------------------------------------
def test_bad_train_inputs_exit_2_naming_them(tmp_path, monkeypatch, capsys):
    main = load_cli("train")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")

    class NoData:
        def entry(self, name):
            raise AssertionError("data was built before the device was checked")
    monkeypatch.setattr(trainer_module, "DATASETS", NoData())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (["train.device=gpu"], "train.device='gpu' is not a device: expected cpu, cuda or cuda:N"),
        (["train.device=cuda"], "train.device='cuda': no CUDA GPU is visible"),
        (["train.device=cuda:1"], "train.device='cuda:1': no CUDA GPU is visible"),
        ([f"output_dir={a_file}"], f"output_dir='{a_file}': {a_file} is a file; expected a directory"),
        ([f"output_dir={a_file}/runs"], f"{a_file} is a file; expected a directory"),
    ]
    for extra, message in cases:
        args = [*OVERRIDES, f"output_dir={tmp_path / 'runs'}", *extra]
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "runs").exists()


def test_a_result_that_is_not_an_object_exits_2_naming_the_file(tmp_path, conf, capsys):
    cfg = config(tmp_path)
    path = Path(cfg.output_dir) / run_id(cfg) / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Trainer(cfg).run()
    assert load_cli("train")([*OVERRIDES, f"output_dir={tmp_path}"]) == 2
    assert f"error: {path}: expected a JSON object (a run's result record), got list" in capsys.readouterr().err
    assert path.read_text() == "[1, 2]"  # not overwritten

    conf("one", "grid:\n  - method: [bacl]\nseeds: [0]\n")
    assert load_cli("sweep")(["ablation=one", f"output_dir={tmp_path}", *OVERRIDES, "--status"]) == 2
    assert f"{path}: expected a JSON object" in capsys.readouterr().err


def test_an_empty_sweep_axis_exits_2_naming_it(conf, tmp_path, capsys):
    conf("tiny", "grid:\n  - method: [clip]\nseeds: [0]\n")
    main = load_cli("sweep")
    for axis in ("pool.k=[]", "seed=[]"):
        assert main(["ablation=tiny", f"output_dir={tmp_path / 'out'}", axis]) == 2
        err = capsys.readouterr().err
        assert f"axis {axis} has no values: expected a non-empty list" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
