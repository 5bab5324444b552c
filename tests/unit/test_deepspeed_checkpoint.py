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
import zipfile
from pathlib import Path

import pytest
import torch

from r1v.runtime.runs import (
    SEAL,
    RunError,
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


def test_unsealed_or_mismatching_folders_are_named_and_resume_falls_back(tmp_path, caplog):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    good = _sealed(ckpts / "step000002.ckpt", 2)
    bad = _sealed(ckpts / "step000004.ckpt", 4)
    pt = bad / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(pt.read_bytes())
    with zipfile.ZipFile(pt) as z:  # flip bytes inside a stored member: same size, the CRC must catch it
        info = max(z.infolist(), key=lambda i: i.file_size)
    local = info.header_offset  # the member's data follows its local header (name and padding of its own)
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little") + int.from_bytes(
        data[local + 28 : local + 30], "little")  # fmt: skip
    data[start + 100 : start + 104] = bytes(255 - b for b in data[start + 100 : start + 104])
    pt.write_bytes(bytes(data))
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
    assert sorted(p.name for p in ckpts.iterdir()) == [
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
    assert sorted(p.name for p in ckpts.iterdir()) == [".step000006.ckpt.tmp-dir", "last.ckpt", "step000004.ckpt"]
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
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step000004.ckpt", "step000008.ckpt"]
    for name in ("last.ckpt", "step000008.ckpt"):
        assert checkpoint_step(ckpts / name) == 8 and check_checkpoint(ckpts / name)
    want = torch.load(tmp_path / "s" / "final.pt", weights_only=True)
    got = torch.load(killed_dir / "final.pt", weights_only=True)
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bit for bit: optimizer, schedule and RNG streams restored
