"""Runs: one folder per named run, provenance, atomic checkpoints, and resume.

The contract every stage follows: a run's folder is ``<paths.runs>/<run>`` (the same on every rank,
since the name comes from the config or the launcher, not from each process's clock); checkpoints
live in ``checkpoints/`` and are written to a temporary file and renamed, so a kill during a save
leaves the previous checkpoint intact; ``resume=auto`` continues from ``checkpoints/last.ckpt``.
Stages add their own state to the Lightning checkpoint (``on_save_checkpoint``) instead of writing
side files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
import zipfile
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from r1v.faults import maybe_die

LAST = "last.ckpt"
log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used as asked (one line)."""


class NonFiniteError(RunError):
    """Too many non-finite losses or gradients in a row: the run stops, its checkpoints kept."""


def default_run_name(stage: str) -> str:
    """``<stage>-<time>``; under torchrun every rank shares TORCHELASTIC_RUN_ID, so ranks agree."""
    if os.environ.get("R1V_RUN_NAME"):
        return os.environ["R1V_RUN_NAME"]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id not in ("", "none"):
        return f"{stage}-{run_id}"
    return f"{stage}-{datetime.now():%Y%m%d-%H%M%S}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to ``<path>.tmp``, fsync, then rename over ``<path>``: never a half-written file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        maybe_die("in_checkpoint_write", int(checkpoint.get("global_step", -1)))
        os.replace(tmp, path)

    def remove_checkpoint(self, path: Any) -> None:
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def trained_weights(run_dir: Path) -> Path:
    """A finished run's product: its trainable weights, which ``checkpoint=<run folder>`` starts from."""
    return run_dir / "final" / "trainable.safetensors"


def weights_of(checkpoint: str | Path) -> Path:
    """``checkpoint=`` as a weights path: a run folder means its trained weights, a file itself."""
    path = Path(checkpoint)
    return trained_weights(path) if path.is_dir() else path


def check_checkpoint(path: Path) -> Path:
    """Refuse a missing, truncated or corrupt checkpoint by name, before Lightning half-loads it: the file
    must be a complete zip archive whose every member passes its CRC (one read of the file)."""
    if not path.exists():
        raise RunError(f"checkpoint {path} does not exist")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise RunError(f"checkpoint {path} is corrupt or partial (not a complete torch zip archive)")
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise RunError(f"checkpoint {path} is corrupt ({e})") from None
        if bad is not None:
            raise RunError(f"checkpoint {path} is corrupt (member {bad} fails its CRC check)")
    return path


def latest_good_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt``, else the newest ``step*.ckpt`` that passes :func:`check_checkpoint` (each bad one is
    named in a warning); leftover temporary files of interrupted saves are removed."""
    folder = checkpoint_dir(run_dir)
    for tmp in folder.glob(".*.tmp-*"):
        log.warning("removing %s: a checkpoint save that was interrupted", tmp)
        tmp.unlink(missing_ok=True)
    steps = sorted(folder.glob("step*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = [p for p in [folder / LAST, *steps] if p.exists()]
    for path in candidates:
        try:
            return check_checkpoint(path)
        except RunError as e:
            log.warning("resume: skipping %s", e)
    if candidates:
        raise RunError(f"run folder {run_dir}: no usable checkpoint ({', '.join(p.name for p in candidates)} are "
                       "all corrupt); start a new run with run=<new name>")  # fmt: skip
    return None


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint file was saved at (None for a DeepSpeed checkpoint folder)."""
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", 0))  # no pickled code


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, or None to start fresh.

    resume=null refuses to write over a run that already has checkpoints; resume=auto continues it
    (or starts fresh if it has none); resume=<run folder | .ckpt file> continues from there.
    """
    last = checkpoint_dir(run_dir) / LAST
    if resume in (None, "", "never"):
        if last.exists():
            raise RunError(
                f"run folder {run_dir} already has checkpoints; continue it with resume=auto "
                "or start a new one with run=<new name>"
            )
        return None
    if resume == "auto":
        return latest_good_checkpoint(run_dir)
    target = Path(resume)
    if target.is_dir():
        target = checkpoint_dir(target) / LAST if (checkpoint_dir(target) / LAST).exists() else target / LAST
    return check_checkpoint(target)


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def provenance(registry: Any, choices: dict[str, str]) -> dict[str, Any]:
    """What produced a run: code version, libraries, plugin providers, command, host."""
    used = {}
    for key, name in choices.items():  # key: a kind, or "kind:slot" (rewards)
        used[key] = {"name": name, "provider": registry.get(key.split(":")[0], name).provider}
    return {
        "time": datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "versions": {
            d: _version(d)
            for d in (
                "r1v",
                "torch",
                "transformers",
                "lightning",
                "timm",
                "hydra-core",
                "deepspeed",
                "pluggy",
            )
        },
        "components": used,
        "plugins": sorted({e.provider for e in registry.entries()}),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def already_finished(run_dir: Path, marker: str, resume: Any, holds: str) -> bool:
    """For stages that run once: True when ``run_dir/marker`` says the stage finished and ``resume`` allows
    keeping it; a finished folder without ``resume`` is refused in one line (nothing is overwritten)."""
    if not (run_dir / marker).exists():
        return False
    if resume is None:
        raise RunError(
            f"run folder {run_dir} already holds {holds}; start a new one with run=<new name> (resume=auto keeps it)"
        )
    logging.getLogger(__name__).info("%s is finished (%s); nothing to do", run_dir, marker)
    return True
