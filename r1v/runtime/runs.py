"""Runs: one folder per named run, provenance, atomic checkpoints, and resume.

The contract every stage follows: a run's folder is ``<paths.runs>/<run>`` (the same on every rank,
since the name comes from the config or the launcher, not from each process's clock); checkpoints
live in ``checkpoints/`` and are written to a temporary file and renamed, so a kill during a save
leaves the previous checkpoint intact; ``resume=auto`` continues from ``checkpoints/last.ckpt``.
Under DeepSpeed a checkpoint is a folder (every rank writes its shards): it is written under a hidden
temporary name, sealed with :data:`SEAL` (its files and their sizes) and renamed into place
(:func:`seal_checkpoint_dir`), so a folder without a valid seal is never loaded. Stages add their own
state to the Lightning checkpoint (``on_save_checkpoint``) instead of writing side files. A training
process holds ``run.lock`` in its run folder (:func:`lock_run_folder`): a second one is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import platform
import shutil
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

from r1v.core.errors import NonFiniteError, RunError  # noqa: F401  (importable from here too)
from r1v.runtime.faults import maybe_die

LAST = "last.ckpt"
SEAL = "r1v_complete.json"  # inside a DeepSpeed checkpoint folder: its files and sizes, written last
# next to a DeepSpeed checkpoint folder ``<name>``: one rank's CRC verdicts on its .pt files ({file: size, mtime_ns,
# error}). Not inside it: a write there would change the folder's mtime, which orders the checkpoints for resume.
VERIFIED = ".{name}.r1v_verified.{rank}.json"
LOCK = "run.lock"
DIR_TMP = ".tmp-dir"  # suffix of a DeepSpeed checkpoint folder being written: ``.<name>.tmp-dir``
log = logging.getLogger(__name__)


def launch_rank_is_zero() -> bool:
    """Whether this process is global rank 0 of its launch, from the launcher's environment (torchrun: RANK;
    Lightning's own launcher: LOCAL_RANK and NODE_RANK; SLURM: SLURM_PROCID), before any process group."""
    env = os.environ
    if env.get("RANK") is not None:
        return int(env["RANK"]) == 0
    if env.get("LOCAL_RANK") is not None:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK") or env.get("GROUP_RANK") or 0) == 0
    return int(env.get("SLURM_PROCID") or 0) == 0


_HELD: dict[Path, int] = {}  # run folder -> open descriptor of its run.lock (the lock lives as long as it does)


def lock_run_folder(run_dir: Path) -> Path:
    """Take ``run_dir/run.lock`` (``flock``, exclusive) for this process and write its pid into it; another
    process holding it is refused in one line naming the folder and that pid. The kernel drops the lock when
    the holder dies (``kill -9`` included), so a stale file never blocks. Re-entrant within a process."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return run_dir / LOCK
    path = run_dir / LOCK
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunError(
            f"run folder {run_dir} is in use by another training process (pid {holder}, holding "
            f"{path}); wait for it to finish, or train into another folder with run=<new name>"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[run_dir] = fd
    return path


def unlock_run_folder(run_dir: Path) -> None:
    """Release :func:`lock_run_folder`'s lock (a no-op when this process does not hold it)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


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


def _check_zip(path: Path, name: Path, what: str = "") -> None:
    """``path`` (named ``name``) is a complete zip archive whose every member passes its CRC."""
    if not zipfile.is_zipfile(path):
        raise RunError(f"checkpoint {name} is corrupt or partial ({what}not a complete torch zip archive)")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise RunError(f"checkpoint {name} is corrupt ({what}{e})") from None
    if bad is not None:
        raise RunError(f"checkpoint {name} is corrupt ({what}member {bad} fails its CRC check)")


def _check_dir(path: Path, rank_world: tuple[int, int] | None = None) -> dict[str, Any]:
    """A DeepSpeed checkpoint folder: its seal must list every file with its size (checked on every rank:
    cheap), and each ``.pt`` must pass its zip CRCs (read once in all: :func:`_crc_verdicts`). Returns the
    seal."""
    try:
        seal = json.loads((path / SEAL).read_text())
        files = {str(k): int(v) for k, v in seal["files"].items()}
    except FileNotFoundError:
        raise RunError(f"checkpoint {path} is partial (no {SEAL}: its save did not finish)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunError(f"checkpoint {path} is corrupt (unreadable {SEAL}: {e})") from None
    for rel, size in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise RunError(f"checkpoint {path} is partial ({rel} is missing)")
        if f.stat().st_size != size:
            raise RunError(f"checkpoint {path} is corrupt ({rel} is {f.stat().st_size} bytes, {size} expected)")
    verdicts = _crc_verdicts(path, sorted(rel for rel in files if rel.endswith(".pt")), rank_world)
    for rel in sorted(verdicts):
        if verdicts[rel]["error"]:
            raise RunError(f"checkpoint {path} {verdicts[rel]['error']}")
    return seal


def _rank_world() -> tuple[int, int]:
    """This process's global rank and the launch's size, from the launcher's environment before any process
    group (torchrun: RANK and WORLD_SIZE; SLURM: SLURM_PROCID and SLURM_NTASKS); (0, 1) when not known, so
    such a process checks everything itself (Lightning's own launcher resolves the resume in its parent,
    before the other ranks exist: they find its verdicts)."""
    env = os.environ
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        try:
            rank, world = int(env[r]), int(env[w])
        except (KeyError, ValueError):
            continue
        if 0 <= rank < world:
            return rank, world
    return 0, 1


def _fresh_verdicts(path: Path, pts: list[str]) -> dict[str, dict[str, Any]]:
    """The verdicts any rank left in ``path`` that still describe the file as it is (same size and mtime: a
    shard written again after its check is checked again)."""
    stamps = {}
    for rel in pts:
        try:
            st = (path / rel).stat()
            stamps[rel] = (st.st_size, st.st_mtime_ns)
        except OSError:
            continue
    fresh: dict[str, dict[str, Any]] = {}
    # several files may judge one shard (earlier launches of other sizes): any fresh one counts
    for vf in path.parent.glob(VERIFIED.format(name=glob.escape(path.name), rank="*")):
        try:
            verdicts = json.loads(vf.read_text())
        except (OSError, ValueError):  # written atomically, so only a file removed under us
            continue
        for rel, v in verdicts.items() if isinstance(verdicts, dict) else ():
            if isinstance(v, dict) and rel in stamps and (v.get("size"), v.get("mtime_ns")) == stamps[rel]:
                fresh[rel] = v
    return fresh


def _crc(path: Path, rel: str) -> dict[str, Any]:
    st = (path / rel).stat()  # before the read: a write during it changes the mtime, and the verdict goes stale
    try:
        _check_zip(path / rel, path, f"{rel}: " if rel else "")
        error = None
    except RunError as e:  # kept without the folder's path, which a moved run folder changes
        error = str(e).removeprefix(f"checkpoint {path} ")
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "error": error}


def _crc_verdicts(path: Path, pts: list[str], rank_world: tuple[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """The CRC verdict of each ``.pt`` in ``pts``, reading each shard once over all ranks and all resumes.

    This runs before the ranks are connected, so they share through files in the run folder: rank r
    of w checks the shards ``r::w`` that have no fresh verdict and writes them to its own
    :data:`VERIFIED` file (after each shard, atomically: no two ranks write one file), then waits for the
    others' verdicts. Spreading the reads gives every rank's disk bandwidth to the check; a verdict that
    stops coming (a rank that died or never checks) is read by the waiting rank itself after
    ``R1V_VERIFY_STALL_S`` seconds (default 600) without any new verdict. A folder this process cannot
    write next to is checked whole on every rank, as nothing can be shared."""
    rank, world = rank_world or _rank_world()
    if not os.access(path.parent, os.W_OK):
        rank, world = 0, 1
    mine_file = path.parent / VERIFIED.format(name=path.name, rank=rank)
    known = _fresh_verdicts(path, pts)
    try:  # keep what this rank's file already holds that still holds: other ranks may be waiting on it
        mine = {rel: v for rel, v in json.loads(mine_file.read_text()).items() if known.get(rel) == v}
    except (OSError, ValueError, AttributeError):
        mine = {}

    def record(rel: str) -> None:
        mine[rel] = known[rel] = _crc(path, rel)
        try:
            part = mine_file.with_name(f"{mine_file.name}.part-{os.getpid()}")  # not .tmp-*: rank 0 removes those
            part.write_text(json.dumps(mine))
            os.replace(part, mine_file)
        except OSError as e:
            log.warning("checkpoint %s: cannot record its CRC verdicts (%s); other ranks read it again", path, e)

    for rel in pts[rank::world]:
        if rel not in known:
            record(rel)
    stall = float(os.environ.get("R1V_VERIFY_STALL_S", 600))
    last, seen, poll = time.monotonic(), len(known), 0.02
    while len(known := _fresh_verdicts(path, pts) | known) < len(pts):
        if len(known) > seen:
            last, seen = time.monotonic(), len(known)
        elif time.monotonic() - last > stall:
            todo = [rel for rel in pts if rel not in known]
            log.warning("checkpoint %s: no CRC verdict on %d shard(s) for %.0f s; checking them here", path,
                        len(todo), stall)  # fmt: skip
            for rel in todo:
                record(rel)
            break
        time.sleep(poll)
        poll = min(poll * 2, 1.0)
    return {rel: known[rel] for rel in pts}


def check_checkpoint(path: Path) -> Path:
    """Refuse a missing, truncated or corrupt checkpoint by name, before Lightning half-loads it: a file
    must be a complete zip archive whose every member passes its CRC (one read of the file); a DeepSpeed
    folder must carry its seal, match it, and hold zip-valid ``.pt`` files (each read once over all ranks
    and resumes, its verdict kept next to the folder: :func:`_crc_verdicts`)."""
    if not path.exists():
        raise RunError(f"checkpoint {path} does not exist")
    if path.is_file():  # rel "" names the file itself: one verdict, rank 0 reads it, a resume of it reads none
        error = _crc_verdicts(path, [""])[""]["error"]
        if error:
            raise RunError(f"checkpoint {path} {error}")
    elif path.is_dir():
        _check_dir(path)
    return path


def seal_checkpoint_dir(tmp: Path, final: Path, step: int) -> None:
    """Commit a DeepSpeed checkpoint folder written completely under ``tmp``: record its files and sizes in
    ``tmp/SEAL``, then rename ``tmp`` to ``final`` (an older ``final`` is first moved aside to
    ``.<name>.old`` and removed after; :func:`latest_good_checkpoint` puts it back if the process dies in
    between). Rank 0 only, after every rank finished writing (shared file system)."""
    files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
    write_json_atomic(tmp / SEAL, {"step": step, "files": files})
    old = final.with_name(f".{final.name}.old")
    _remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    forget_verdicts(final)  # they judged the files it replaced
    _remove(old)


def forget_verdicts(path: Path) -> None:
    """Remove the CRC verdicts kept next to checkpoint folder ``path`` (it was replaced or deleted)."""
    for vf in path.parent.glob(VERIFIED.format(name=glob.escape(path.name), rank="*")):
        _remove(vf)


def _remove(path: Path) -> None:
    """Delete a file or folder if it is there (tolerating another rank deleting it at the same time)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean_interrupted(folder: Path) -> None:
    """Put back a checkpoint folder that an interrupted :func:`seal_checkpoint_dir` had moved aside (every rank:
    it only restores), and on rank 0, which holds the run-folder lock, remove leftovers of interrupted saves
    (``.<name>.tmp-*`` files and folders). Other ranks never delete: a refused second launch's ranks must not
    touch a running job's saves."""
    owner = launch_rank_is_zero()
    for old in folder.glob(".*.old"):
        final = old.with_name(old.name[1 : -len(".old")])
        if final.exists():
            if owner:
                _remove(old)
            continue
        try:
            os.replace(old, final)
            log.warning("restored %s: its replacement was interrupted", final)
        except OSError:  # another rank of this launch did it first
            pass
    if owner:
        for tmp in folder.glob(".*.tmp-*"):
            log.warning("removing %s: a checkpoint save that was interrupted", tmp)
            _remove(tmp)
        for vf in folder.glob(VERIFIED.format(name="*", rank="*")):  # verdicts on a checkpoint deleted by a kill
            if not (folder / vf.name[1:].split(".r1v_verified.")[0]).exists():
                _remove(vf)
        # a verdict's part file lives for milliseconds; an old one was left by a kill between write and rename
        for part in folder.glob(VERIFIED.format(name="*", rank="*") + ".part-*"):
            with contextlib.suppress(OSError):
                if time.time() - part.stat().st_mtime > 60:
                    _remove(part)


def latest_good_checkpoint(run_dir: Path) -> Path | None:
    """The newest of ``last.ckpt`` and ``step*.ckpt`` (file or DeepSpeed folder) that passes
    :func:`check_checkpoint` (each bad one is named in a warning); leftovers of interrupted saves are
    removed."""
    folder = checkpoint_dir(run_dir)
    _clean_interrupted(folder)
    # the newest first: a stop on a signal writes step<N>.ckpt after the last periodic last.ckpt
    found = [p for p in [folder / LAST, *folder.glob("step*.ckpt")] if p.exists()]
    candidates = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
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
    """The global step a checkpoint was saved at (a DeepSpeed folder: from its seal; None without one)."""
    if path.is_dir():
        try:
            return int(json.loads((path / SEAL).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
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
        if last.exists() or any(checkpoint_dir(run_dir).glob("step*.ckpt")):
            raise RunError(
                f"run folder {run_dir} already has checkpoints; continue it with resume=auto "
                "or start a new one with run=<new name>"
            )
        return None
    if resume == "auto":
        return latest_good_checkpoint(run_dir)
    target = Path(resume)
    if target.is_dir() and target.suffix != ".ckpt":  # a run folder (a DeepSpeed checkpoint is a .ckpt folder)
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
