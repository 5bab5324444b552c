"""Run folders: atomic checkpoint writes, refusing corrupt checkpoints, resume rules, run names."""

from __future__ import annotations

import pytest
import torch

from r1v.runs import AtomicCheckpointIO, RunError, check_checkpoint, default_run_name, resolve_resume


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
