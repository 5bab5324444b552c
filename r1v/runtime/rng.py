"""Every rank's random-number streams in the checkpoint, each rank's own restored on resume.

Lightning's checkpoints hold no RNG state. :class:`RNGStates` (a callback on every Lightning stage, see
:func:`r1v.train.build_trainer`) gathers the torch (CPU and every CUDA device), numpy and python states of all
ranks when a checkpoint is saved (rank 0 writes it) and gives each rank its own back in the resumed run, at the
point that matches the uninterrupted one:

- saved mid-epoch: at ``on_train_start``, after Lightning has created the data loader's iterator (which draws
  its base seed) and fetched the next batch, as the uninterrupted run had before its save;
- saved at the last batch of an epoch: as soon as the checkpoint is loaded, since the uninterrupted run drew
  the next epoch's iterator seed after its save too.

Everything is stored as tensors, ints, floats, lists and dicts, so the checkpoint still loads with
``torch.load(weights_only=True)``. What an uninterrupted run draws between a save and its next step besides
(validation that runs at the same step) a resumed one does not; a stage whose sampling must match exactly from
any checkpoint reseeds per step as well (GRPO: :func:`r1v.stages.grpo.step_seed`).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def capture() -> dict[str, Any]:
    """This process's RNG states as plain data (tensors, ints, floats, None)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss is None else float(gauss)},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def restore(state: dict[str, Any]) -> None:
    """Set this process's RNG streams to ``state`` (from :func:`capture`)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))  # fmt: skip
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("RNG: the checkpoint holds %d CUDA generators, this process sees %d; CUDA streams not "
                        "restored", len(cuda), torch.cuda.device_count())  # fmt: skip


def _gather(mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``mine``, in rank order (collective when a process group of several ranks is up)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


class RNGStates(Callback):
    """Saves every rank's RNG states in the checkpoint (``callbacks["RNGStates"]``); on resume each rank
    gets its own back (when: see the module docstring)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank while a checkpoint is assembled: gathers all ranks' states."""
        ranks = _gather(capture())
        loop = getattr(getattr(self._trainer, "fit_loop", None), "epoch_loop", None)
        epoch_end = bool(loop is not None and loop.batch_progress.is_last_batch)
        return {"world_size": len(ranks), "ranks": ranks, "epoch_end": epoch_end}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict
        if state_dict.get("epoch_end"):
            self._restore(self._trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._restore(trainer)

    def _restore(self, trainer: Any) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        ranks = state["ranks"]
        if len(ranks) != world:
            log.warning("RNG: the checkpoint was saved by %d ranks and resumes on %d; random streams of ranks "
                        "beyond %d start from the seed", len(ranks), world, len(ranks))  # fmt: skip
        if rank < len(ranks):
            restore(ranks[rank])
