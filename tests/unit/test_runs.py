"""Run folders: atomic checkpoint writes, refusing corrupt checkpoints, resume rules, run names, the run-folder
lock (one training process per folder; a kill -9'd holder never blocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from r1v.core.config import default_run_name
from r1v.runtime.runs import (
    AtomicCheckpointIO,
    RunError,
    check_checkpoint,
    lock_run_folder,
    resolve_resume,
    unlock_run_folder,
)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1

    def dying_save(obj, f, *a, **k):  # the process dies half-way through writing
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact


def test_partial_checkpoint_is_named_not_loaded(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunError, match=r"last.ckpt is corrupt or partial"):
        check_checkpoint(bad)


def test_resume_rules(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(None, run) is None and resolve_resume("auto", run) is None
    AtomicCheckpointIO().save_checkpoint({"step": 3}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(RunError, match="already has checkpoints; continue it with resume=auto"):
        resolve_resume(None, run)
    assert resolve_resume("auto", run) == run / "checkpoints" / "last.ckpt"
    assert resolve_resume(str(run), tmp_path / "other") == run / "checkpoints" / "last.ckpt"
    with pytest.raises(RunError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope.ckpt"), run)


def test_run_name_is_shared_by_torchrun_ranks(monkeypatch):
    monkeypatch.delenv("R1V_RUN_NAME", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc123")
    assert default_run_name("sft") == "sft-abc123"
    monkeypatch.setenv("R1V_RUN_NAME", "mine")
    assert default_run_name("sft") == "mine"
    monkeypatch.delenv("R1V_RUN_NAME")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert default_run_name("align").startswith("align-20")


def test_a_run_name_with_a_time_stamp_is_the_same_whenever_it_is_resolved(monkeypatch):
    """Hydra resolves the name for the folder and again for the saved config.yaml (they differed by seconds)."""
    import time

    monkeypatch.delenv("R1V_RUN_NAME", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    first = default_run_name("align")
    time.sleep(1.1)
    assert default_run_name("align") == first and default_run_name("sft") == "sft" + first.removeprefix("align")


# -- the run-folder lock ---------------------------------------------------------------------------------------


def _holder(folder, *, then: str = "time.sleep(120)") -> subprocess.Popen:
    """A python process that takes ``folder``'s lock, says so on stdout, then runs ``then``."""
    code = (f"import time; from pathlib import Path; from r1v.runtime.runs import lock_run_folder; "
            f"lock_run_folder(Path({str(folder)!r})); print('locked', flush=True); {then}")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_run_folder_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = _holder(folder)
    try:
        with pytest.raises(RunError) as e:
            lock_run_folder(folder)
        msg = str(e.value)
        assert f"run folder {folder.resolve()} is in use by another training process (pid {holder.pid}," in msg
        assert "\n" not in msg and "run=<new name>" in msg
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no clean-up; the kernel drops the flock
        holder.wait()
    assert (folder / "run.lock").read_text().strip() == str(holder.pid)  # the stale file is still there ...
    try:
        assert lock_run_folder(folder) == folder.resolve() / "run.lock"  # ... and does not block
        assert (folder / "run.lock").read_text().strip() == str(os.getpid())
        assert lock_run_folder(folder)  # re-entrant within the process
        probe = subprocess.run([sys.executable, "-c", f"from r1v.runtime.runs import lock_run_folder; "
                                f"lock_run_folder({str(folder)!r})"], capture_output=True, text=True)  # fmt: skip
        assert probe.returncode != 0 and f"(pid {os.getpid()}," in probe.stderr
    finally:
        unlock_run_folder(folder)
    _holder(folder, then="").wait()  # released: another process takes it


def test_a_second_launch_on_a_locked_folder_is_one_error_line(tmp_path):
    from tests.conftest import run_cli

    folder = tmp_path / "runs" / "busy"
    folder.mkdir(parents=True)
    holder = _holder(folder)
    try:
        proc = run_cli(["run=busy", "logger=csv", "trainer.enable_progress_bar=false"], tmp_path, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("r1v: error:")]
    assert errors == [f"r1v: error: run folder {folder.resolve()} is in use by another training process (pid "
                      f"{holder.pid}, holding {folder.resolve() / 'run.lock'}); wait for it to finish, or train into "
                      "another folder with run=<new name>"]  # fmt: skip
    assert not (folder / "checkpoints").exists() and not (folder / "run.json").exists()  # nothing touched


def test_a_recipe_locks_its_folder_and_its_stages_lock_their_own(tmp_path, monkeypatch):
    import r1v.recipe
    import r1v.reports.recipe

    folder = (tmp_path / "rec").resolve()
    seen = []

    def stage(module, args, log_path):  # stands in for `python -m r1v.train` of a stage, in its own process
        name = next(a.split("=", 1)[1] for a in args if a.startswith("run="))
        code = ("import sys; from r1v.runtime.runs import RunError, lock_run_folder\n"
                f"lock_run_folder({str(folder / name)!r})\n"  # the stage's own folder: free
                f"try:\n    lock_run_folder({str(folder)!r})\nexcept RunError as e:\n    print(e)\n"
                "else:\n    sys.exit(3)")  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        seen.append(proc.stdout.strip())
        return proc.returncode

    monkeypatch.setattr(r1v.recipe, "_run", stage)
    monkeypatch.setattr(r1v.reports.recipe, "write_report", lambda *a: None)
    cfg = {"recipe": {"name": "t", "stages": [{"name": "a", "args": ["stage=sft"]}]}, "paths": {"runs": str(tmp_path)},
           "run": "rec", "seed": 0, "resume": None}  # fmt: skip
    assert r1v.recipe.run_recipe(cfg) == folder
    (line,) = seen  # the stage ran, holding its own folder, and found the recipe's held by the recipe process
    assert f"run folder {folder} is in use by another training process (pid {os.getpid()}," in line
    lock_run_folder(folder)  # released when the recipe ended
    unlock_run_folder(folder)


def test_only_rank_zero_removes_leftovers_of_interrupted_saves(tmp_path, monkeypatch):
    """Rank 0 holds the lock; the other ranks of a launch (maybe a refused second one) never delete a save in
    progress, but all of them put back a checkpoint folder an interrupted swap had moved aside."""
    from r1v.runtime.runs import latest_good_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, ckpts / "step000003.ckpt")
    (ckpts / ".last.ckpt.tmp-dir").mkdir()  # a DeepSpeed save in progress (or interrupted)
    (ckpts / ".last.ckpt.tmp-77").write_bytes(b"half")
    (ckpts / ".step000001.ckpt.old").mkdir()  # a swap died between its renames
    monkeypatch.setenv("RANK", "1")
    assert latest_good_checkpoint(tmp_path / "run") == ckpts / "step000003.ckpt"
    assert (ckpts / ".last.ckpt.tmp-dir").is_dir() and (ckpts / ".last.ckpt.tmp-77").exists()
    assert (ckpts / "step000001.ckpt").is_dir() and not (ckpts / ".step000001.ckpt.old").exists()
    monkeypatch.setenv("RANK", "0")
    latest_good_checkpoint(tmp_path / "run")
    left = sorted(p.name for p in ckpts.iterdir() if ".r1v_verified." not in p.name)  # less the CRC verdicts
    assert left == ["step000001.ckpt", "step000003.ckpt"]
