"""Every rank's RNG streams are saved in the checkpoint and each rank's own restored on resume
(:class:`r1v.runtime.rng.RNGStates`): the draws after a resume are the draws an uninterrupted run makes, and the
checkpoint still loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from r1v.runtime.rng import RNGStates


def draws(k: int = 4) -> list[float]:
    """What a training step might draw: torch (uniform and normal), numpy (legacy global), python."""
    out = torch.rand(k).tolist() + torch.randn(k).tolist()
    out += np.random.rand(k).tolist() + np.random.randn(k).tolist()
    return out + [random.random() for _ in range(k)] + [random.gauss(0, 1) for _ in range(k)]


def _seed(s: int) -> None:
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def test_draws_after_a_restore_equal_the_uninterrupted_ones_and_load_weights_only(tmp_path):
    _seed(1)
    draws(3)  # odd counts leave a cached gaussian in numpy and python: part of the state
    saved = RNGStates().state_dict()
    assert saved["world_size"] == 1
    uninterrupted = draws()
    torch.save({"callbacks": {"RNGStates": saved}}, tmp_path / "c.ckpt")
    _seed(99)  # a new process: whatever state it starts with
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"]["RNGStates"]  # no pickled code
    cb = RNGStates()
    cb.load_state_dict(loaded)
    assert draws() != uninterrupted  # nothing restored before the resumed run starts training ...
    _seed(99)
    cb.on_train_start(SimpleNamespace(global_rank=0, world_size=1), None)
    assert draws() == uninterrupted  # ... and then exactly the uninterrupted streams
    cb.on_train_start(SimpleNamespace(global_rank=0, world_size=1), None)  # once only: a no-op now


class _Noisy(L.LightningModule):
    """Every training step draws from all three streams and records the draws."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.seen: dict[int, list[float]] = {}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen[self.global_step] = draws(2)
        return (self.w * batch).sum() ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.ones(self.rows, 2), batch_size=2)


def _fit(tmp_path: Path, seed: int, ckpt: Path | None = None, rows: int = 12) -> dict[int, list[float]]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from r1v.runtime.runs import AtomicCheckpointIO

    _seed(seed)
    module = _Noisy(rows)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", filename="step{step}", save_top_k=-1,
                                                   every_n_train_steps=3, auto_insert_metric_name=False),
                                   RNGStates()])  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt)
    return module.seen


@pytest.mark.parametrize("rows", [12, 6])  # the step-3 checkpoint mid-epoch (6 steps an epoch), at an epoch's end
def test_a_resumed_lightning_run_draws_what_the_uninterrupted_one_draws(tmp_path, rows):
    straight = _fit(tmp_path / "a", seed=0, rows=rows)
    ckpt = tmp_path / "a" / "ck" / "step3.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["RNGStates"]
    assert state["world_size"] == 1 and set(state["ranks"][0]) >= {"torch", "numpy", "python"}
    assert state["epoch_end"] == (rows == 6)
    resumed = _fit(tmp_path / "b", seed=123, ckpt=ckpt, rows=rows)  # another seed: only the restore lines them up
    assert sorted(resumed) == [3, 4, 5]
    for step in resumed:
        assert resumed[step] == straight[step], f"step {step}"


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    _seed(10 + rank)  # every rank its own streams
    draws(1)
    state = RNGStates().state_dict()  # collective: every rank takes part while rank 0 assembles the checkpoint
    if rank == 0:
        torch.save({"callbacks": {"RNGStates": state}}, Path(folder) / "c.ckpt")
    uninterrupted = draws()
    torch.distributed.barrier()
    _seed(1000)  # the resumed processes start alike
    cb = RNGStates()
    cb.load_state_dict(torch.load(Path(folder) / "c.ckpt", weights_only=True)["callbacks"]["RNGStates"])
    cb.on_train_start(SimpleNamespace(global_rank=rank, world_size=world), None)
    torch.save({"uninterrupted": uninterrupted, "resumed": draws()}, Path(folder) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_each_rank_gets_its_own_streams_back(tmp_path):
    port = random.Random(os.getpid()).randint(20000, 40000)
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"]["RNGStates"]
    assert state["world_size"] == 2 and not torch.equal(state["ranks"][0]["torch"], state["ranks"][1]["torch"])
    for r in (0, 1):
        assert out[r]["resumed"] == out[r]["uninterrupted"], f"rank {r}"
    assert out[0]["resumed"] != out[1]["resumed"]  # not rank 0's streams everywhere


@pytest.mark.parametrize("saved,running", [(2, 1)])
def test_a_different_world_size_restores_what_exists(saved, running, caplog):
    _seed(5)
    one = RNGStates().state_dict()["ranks"][0]
    expected = draws()
    cb = RNGStates()
    cb.load_state_dict({"world_size": saved, "ranks": [one] * saved})
    cb.on_train_start(SimpleNamespace(global_rank=0, world_size=running), None)
    assert draws() == expected and "saved by 2 ranks and resumes on 1" in caplog.text
