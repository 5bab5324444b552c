"""DeepSpeed checkpoint folders are written atomically and validated: every rank writes into
``.<name>.tmp-dir``, rank 0 seals it (files and sizes) and renames it into place; an unsealed or mismatching
folder is named in one line and ``resume=auto`` falls back to the newest good one.

The seal / check / fall-back logic is tested with a stand-in for DeepSpeed's writer; then a real DeepSpeed
ZeRO-2 run through Lightning on the CPU (one gloo rank, in subprocesses) is killed inside a checkpoint write
(``R1V_FAULT_INJECT=in_checkpoint_write``), its newest checkpoint corrupted, and resumed from the fallback:
it ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from r1v.runtime.runs import (
    SEAL,
    RunError,
    _check_dir,
    check_checkpoint,
    checkpoint_step,
    latest_good_checkpoint,
    resolve_resume,
    seal_checkpoint_dir,
)


class FakeEngine:
    """Writes what ``deepspeed_engine.save_checkpoint`` writes (``latest``, ``<tag>/*.pt``); ``die_after`` files
    into the save it raises, like a process killed half-way."""

    def __init__(self, die_after: int | None = None) -> None:
        self.die_after = die_after

    def save_checkpoint(self, save_dir: str, client_state: dict, tag: str, **kw: object) -> None:
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        files = [("mp_rank_00_model_states.pt", client_state), ("zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                               {"m": torch.arange(2000.0)})]  # fmt: skip
        for k, (name, obj) in enumerate(files):
            if self.die_after is not None and k >= self.die_after:
                raise KeyboardInterrupt
            torch.save(obj, folder / name)
        (Path(save_dir) / "latest").write_text(tag)


def _strategy(engine: FakeEngine):
    from r1v.runtime.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}})
    strategy.model = engine  # ``deepspeed_engine`` is the wrapped model
    return strategy


needs_deepspeed = pytest.mark.skipif(not importlib.util.find_spec("deepspeed"), reason="needs deepspeed")


@needs_deepspeed
def test_the_strategy_seals_and_renames_and_an_interrupted_save_leaves_the_old_folder(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    _strategy(FakeEngine()).save_checkpoint({"global_step": 2}, ckpts / "last.ckpt")
    seal = json.loads((ckpts / "last.ckpt" / SEAL).read_text())
    written = {"latest", *(f"checkpoint/{n}" for n in ("mp_rank_00_model_states.pt",
                                                        "zero_pp_rank_0_mp_rank_00_optim_states.pt"))}  # fmt: skip
    assert seal["step"] == 2 and set(seal["files"]) == written
    assert check_checkpoint(ckpts / "last.ckpt") and checkpoint_step(ckpts / "last.ckpt") == 2
    with pytest.raises(KeyboardInterrupt):  # dies after the first file of the step-4 save
        _strategy(FakeEngine(die_after=1)).save_checkpoint({"global_step": 4}, ckpts / "last.ckpt")
    assert checkpoint_step(ckpts / "last.ckpt") == 2 and (ckpts / ".last.ckpt.tmp-dir").is_dir()
    assert latest_good_checkpoint(tmp_path / "run") == ckpts / "last.ckpt"
    assert not (ckpts / ".last.ckpt.tmp-dir").exists()  # the leftover is cleaned up
    _strategy(FakeEngine()).save_checkpoint({"global_step": 6}, ckpts / "last.ckpt")  # replaces a folder
    assert checkpoint_step(ckpts / "last.ckpt") == 6 and sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    _strategy(FakeEngine()).remove_checkpoint(ckpts / "last.ckpt")
    assert not list(ckpts.iterdir())


def _sealed(folder: Path, step: int) -> Path:
    tmp = folder.with_name(f".{folder.name}.tmp-dir")
    FakeEngine().save_checkpoint(str(tmp), {"global_step": step}, "checkpoint")
    seal_checkpoint_dir(tmp, folder, step)
    os.utime(folder, (step, step))  # mtime orders the step checkpoints
    return folder


def _listing(ckpts: Path) -> list[str]:
    """The checkpoints folder's entries, less the CRC verdicts kept next to each checkpoint."""
    return sorted(p.name for p in ckpts.iterdir() if ".r1v_verified." not in p.name)


def _flip(pt: Path) -> None:
    """Flip bytes inside a stored member of ``pt``: same size, only the CRC can catch it."""
    data = bytearray(pt.read_bytes())
    with zipfile.ZipFile(pt) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    local = info.header_offset  # the member's data follows its local header (name and padding of its own)
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little") + int.from_bytes(
        data[local + 28 : local + 30], "little")  # fmt: skip
    data[start + 100 : start + 104] = bytes(255 - b for b in data[start + 100 : start + 104])
    pt.write_bytes(bytes(data))


def test_unsealed_or_mismatching_folders_are_named_and_resume_falls_back(tmp_path, caplog):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    good = _sealed(ckpts / "step000002.ckpt", 2)
    bad = _sealed(ckpts / "step000004.ckpt", 4)
    _flip(bad / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(RunError, match=r"step000004.ckpt is corrupt \(checkpoint/zero_pp_rank_0_mp_rank_00_optim_"
                                       r"states.pt: member .* fails its CRC check\)"):  # fmt: skip
        check_checkpoint(bad)
    last = _sealed(ckpts / "last.ckpt", 6)
    (last / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"PK\x03\x04 cut")  # truncated
    with pytest.raises(RunError, match=r"last.ckpt is corrupt \(checkpoint/zero_pp_rank_0_mp_rank_00_optim_states.pt "
                                       r"is 8 bytes, \d+ expected\)"):  # fmt: skip
        check_checkpoint(last)
    unsealed = ckpts / "step000008.ckpt"
    FakeEngine().save_checkpoint(str(unsealed), {"global_step": 8}, "checkpoint")  # written in place: no seal
    with pytest.raises(RunError, match=rf"checkpoint {unsealed} is partial \(no {SEAL}: its save did not finish\)"):
        check_checkpoint(unsealed)
    (ckpts / ".step000010.ckpt.tmp-dir" / "checkpoint").mkdir(parents=True)  # an interrupted save
    assert latest_good_checkpoint(tmp_path / "run") == good
    for name in ("last.ckpt", "step000004.ckpt", "step000008.ckpt"):
        assert f"resume: skipping checkpoint {ckpts / name} is" in caplog.text
    assert not (ckpts / ".step000010.ckpt.tmp-dir").exists()
    assert _listing(ckpts) == [
        "last.ckpt",
        "step000002.ckpt",
        "step000004.ckpt",
        "step000008.ckpt",
    ]  # named, never loaded, never deleted
    with pytest.raises(RunError, match="already has checkpoints"):  # resume=null still refuses the folder
        resolve_resume(None, tmp_path / "run")
    assert resolve_resume(str(good), tmp_path / "other") == good  # a DeepSpeed folder given directly
    (good / "checkpoint" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(RunError, match=r"step000002.ckpt is partial \(checkpoint/mp_rank_00_model_states.pt is "):
        check_checkpoint(good)


def test_a_swap_interrupted_between_its_renames_puts_the_old_folder_back(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _sealed(ckpts / "last.ckpt", 2)
    os.replace(ckpts / "last.ckpt", ckpts / ".last.ckpt.old")  # died after moving the old one aside
    assert latest_good_checkpoint(tmp_path / "run") == ckpts / "last.ckpt"
    assert checkpoint_step(ckpts / "last.ckpt") == 2 and not (ckpts / ".last.ckpt.old").exists()


SCRIPT = textwrap.dedent("""
    import sys, torch, lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeed
    from r1v.runtime.rng import RNGStates
    from r1v.runtime.strategies import DeepSpeedStrategy

    class CPUDeepSpeed(DeepSpeedStrategy):  # Lightning allows DeepSpeed on CUDA only; DeepSpeed itself runs on CPU
        def setup_environment(self):
            super(LightningDeepSpeed, self).setup_environment()  # skip its CUDA check
        def setup_distributed(self):
            self.set_world_ranks()
            self._init_deepspeed_distributed()
        @property
        def root_device(self):
            return torch.device("cpu", 0)

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.l = torch.nn.Linear(4, 3)
        def training_step(self, x, i):  # noise: the weights depend on the RNG streams too
            return (self.l(x + 0.5 * torch.randn_like(x)) - 1).pow(2).mean()
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.05)
        def train_dataloader(self):  # every batch alike: the data position cannot matter
            return torch.utils.data.DataLoader(torch.ones(16, 4), batch_size=4)

    root, ckpt = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    L.seed_everything(1 if ckpt is None else 7, verbose=False)  # the resumed run relies on the restored streams
    net = Net()
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=CPUDeepSpeed(stage=2, process_group_backend="gloo"),
                        max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root,
                        callbacks=[ModelCheckpoint(dirpath=root + "/checkpoints", filename="step{step:06d}",
                                                   auto_insert_metric_name=False, every_n_train_steps=2, save_top_k=1,
                                                   save_last=True), RNGStates()])
    trainer.fit(net, ckpt_path=ckpt)
    torch.save({k: v.detach().cpu() for k, v in net.l.state_dict().items()}, root + "/final.pt")
""")


def _deepspeed(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "R1V_FAULT_INJECT": fault or ""}
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600)


@needs_deepspeed
def test_deepspeed_killed_inside_a_checkpoint_write_resumes_exactly_from_the_newest_good_folder(tmp_path):
    straight = _deepspeed(str(tmp_path / "s"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed_dir = tmp_path / "k"
    killed = _deepspeed(str(killed_dir), fault="in_checkpoint_write:6")
    assert killed.returncode == 137, killed.stderr[-3000:]
    ckpts = killed_dir / "checkpoints"
    assert _listing(ckpts) == [".step000006.ckpt.tmp-dir", "last.ckpt", "step000004.ckpt"]
    assert not (ckpts / ".step000006.ckpt.tmp-dir" / SEAL).exists()  # written by every rank, never sealed
    assert checkpoint_step(ckpts / "last.ckpt") == 4 and check_checkpoint(ckpts / "step000004.ckpt")
    states = ckpts / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:-100])  # and the newest one is damaged afterwards
    with pytest.raises(RunError, match=r"last.ckpt is corrupt \(checkpoint/mp_rank_00_model_states.pt is \d+ bytes"):
        check_checkpoint(ckpts / "last.ckpt")
    fallback = latest_good_checkpoint(killed_dir)
    assert fallback == ckpts / "step000004.ckpt" and not (ckpts / ".step000006.ckpt.tmp-dir").exists()
    resumed = _deepspeed(str(killed_dir), str(fallback))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the damaged last.ckpt was replaced whole by the resumed run's; Lightning keeps the one it resumed from
    assert _listing(ckpts) == ["last.ckpt", "step000004.ckpt", "step000008.ckpt"]
    for name in ("last.ckpt", "step000008.ckpt"):
        assert checkpoint_step(ckpts / name) == 8 and check_checkpoint(ckpts / name)
    want = torch.load(tmp_path / "s" / "final.pt", weights_only=True)
    got = torch.load(killed_dir / "final.pt", weights_only=True)
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bit for bit: optimizer, schedule and RNG streams restored


@pytest.fixture
def zip_reads(monkeypatch) -> list[str]:
    """The names of the files whose zip CRCs are read (each ``ZipFile.testzip`` call), in order."""
    reads: list[str] = []
    testzip = zipfile.ZipFile.testzip

    def counted(self):
        reads.append(Path(self.filename).name)
        return testzip(self)

    monkeypatch.setattr(zipfile.ZipFile, "testzip", counted)
    return reads


def test_each_shard_is_crc_read_once_over_all_ranks_and_resumes(tmp_path, monkeypatch, caplog, zip_reads):
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tmp = folder.with_name(".last.ckpt.tmp-dir")
    (tmp / "checkpoint").mkdir(parents=True)
    names = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(5)]
    for r, name in enumerate(names):
        torch.save({"m": torch.arange(500.0) + r}, tmp / "checkpoint" / name)
    seal_checkpoint_dir(tmp, folder, 6)
    reads = zip_reads
    monkeypatch.setenv("R1V_VERIFY_STALL_S", "30")  # a waiting rank never needs it here

    def ranks(world: int) -> list[object]:  # the ranks of one launch, checking at the same time
        with ThreadPoolExecutor(world) as pool:
            futures = [pool.submit(_check_dir, folder, (r, world)) for r in range(world)]
        return [f.exception() or f.result()["step"] for f in futures]

    assert ranks(3) == [6, 6, 6]
    assert sorted(reads) == sorted(names)  # each shard once in all, not once per rank
    reads.clear()
    for rank, world in ((0, 1), (1, 2)):  # a later resume, any launch size: the verdicts are kept
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        assert check_checkpoint(folder) == folder
    assert reads == []
    again = folder / "checkpoint" / names[2]  # written again after its verdict: same size, new mtime
    torch.save({"m": torch.arange(500.0) + 2}, again)
    os.utime(again, ns=(again.stat().st_atime_ns, again.stat().st_mtime_ns + 10**9))
    assert ranks(2) == [6, 6] and reads == [names[2]]
    reads.clear()
    _flip(again)
    os.utime(again, ns=(again.stat().st_atime_ns, again.stat().st_mtime_ns + 2 * 10**9))
    errors = ranks(4)
    assert reads == [names[2]]
    assert all(isinstance(e, RunError) for e in errors) and {str(e) for e in errors} == {
        f"checkpoint {folder} is corrupt (checkpoint/{names[2]}: member {_member(again)} fails its CRC check)"
    }
    older = _sealed(folder.with_name("step000004.ckpt"), 4)
    os.utime(folder, (10, 10))
    reads.clear()
    monkeypatch.setenv("R1V_VERIFY_STALL_S", "0.2")  # rank 1 of 2 never comes: rank 0 checks its share too
    assert _check_dir(older, (0, 2))["step"] == 4 and len(reads) == 2
    assert "no CRC verdict on 1 shard(s)" in caplog.text
    reads.clear()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert latest_good_checkpoint(tmp_path / "run") == older  # the corrupt one is named and skipped, as before
    assert f"resume: skipping checkpoint {folder} is corrupt (checkpoint/{names[2]}" in caplog.text
    assert reads == []  # both verdicts, the bad one too, came from the folders


def _member(pt: Path) -> str:
    with zipfile.ZipFile(pt) as z:
        return max(z.infolist(), key=lambda i: i.file_size).filename


def test_a_single_file_checkpoint_is_crc_read_once_and_a_kills_leftovers_go(tmp_path, zip_reads):
    """A ``.ckpt`` file is CRC-read at its first resume only (the verdict, kept beside it, holds while the file
    is unchanged); a rewrite is read again and a flipped byte still refused. A verdict's part file that a kill
    left between write and rename is removed by the next resume (a fresh one may belong to a live rank)."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    ckpt = folder / "last.ckpt"
    torch.save({"state": torch.arange(2000.0)}, ckpt)
    reads = zip_reads
    assert check_checkpoint(ckpt) == ckpt and check_checkpoint(ckpt) == ckpt
    assert reads == ["last.ckpt"]
    _flip(ckpt)
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    with pytest.raises(RunError, match=rf"checkpoint {ckpt} is corrupt \(member .* fails its CRC check\)"):
        check_checkpoint(ckpt)
    assert reads == ["last.ckpt"] * 2
    old, fresh = (folder / f".last.ckpt.r1v_verified.0.json.part-{pid}" for pid in (11, 12))
    old.write_text("{")
    fresh.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(RunError, match="no usable checkpoint"):  # the flipped one was the only one
        latest_good_checkpoint(tmp_path / "run")
    assert not old.exists() and fresh.exists()
