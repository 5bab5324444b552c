"""Supervised stages (``align``, ``sft``): next-token loss on the completion only.

``align`` is R1V's adapter initialisation with a substitute LM (default target: the direct answer,
trainable: the adapter); ``sft`` trains on R1-format reasoning chains. Both share this module; the
stage config chooses target, trainable parts and optimisation. The model is built in
``configure_model`` (idempotent) so DeepSpeed ZeRO-3 can shard it at construction.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from r1v.core.config import ConfigError
from r1v.core.interfaces import RewardInput, Sample
from r1v.core.registry import get_registry
from r1v.data.processor import Processor
from r1v.data.sampler import ResumableSampler, WindowLoader
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.generation.choose import choose_engine
from r1v.model import varlen
from r1v.model.build import PARTS, apply_freeze, build
from r1v.model.load import load_trainable
from r1v.rl.grpo import chunked_logprobs
from r1v.runtime.faults import abort_run, maybe_die, poisoned
from r1v.runtime.perf import FlopCounter, peak_flops
from r1v.runtime.runs import NonFiniteError
from r1v.runtime.weights import decode_ready, full_state, gather_mode

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def grads_finite(model: torch.nn.Module) -> bool | None:
    """Whether every gradient is finite (one host sync); None when no parameter holds one (e.g. DeepSpeed keeps
    them in its own buffers)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else None


class Collator:
    """Encodes samples in the loader workers; a sample that cannot be encoded is skipped and counted. A lock-step
    pad of the sampler (:func:`r1v.data.sampler.is_pad`) is dropped uncounted: it carries no loss."""

    def __init__(self, processor: Processor, target: str | None, padding_side: str = "right",
                 pack_max_tokens: int | None = None, attn: str = "sdpa") -> None:  # fmt: skip
        self.processor, self.target, self.padding_side = processor, target, padding_side
        self.pack_max_tokens, self.attn = pack_max_tokens, attn  # packing: rows of up to this many tokens

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        from r1v.data.sampler import is_pad

        encoded, skipped = [], 0
        for s in samples:
            if is_pad(s):  # a repeat that only keeps the ranks in step (not a skipped sample)
                continue
            if s.meta.get("_error"):  # the dataset could not decode it
                skipped += 1
                log.warning("skipping sample %s: %s", s.id, s.meta["_error"])
                continue
            try:
                encoded.append(self.processor.encode(s, self.target))
            except (ValueError, OSError) as e:
                skipped += 1
                log.warning("skipping sample %s: %s", getattr(s, "id", "?"), e)
        if not encoded:
            return {"skipped": skipped, "empty": True}
        if self.pack_max_tokens:
            batch = self.processor.pack(encoded, self.pack_max_tokens, self.attn)
        else:
            batch = self.processor.collate(encoded, self.padding_side)
        batch["skipped"] = skipped
        if torch.is_tensor(batch.get("labels")):  # the tokens the loss averages over (SFTStage.token_weight)
            batch["loss_tokens"] = int((batch["labels"][:, 1:] != -100).sum())
        return batch


class SFTStage(L.LightningModule):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.stage = dict(cfg["stage"])
        self.save_hyperparameters({"config": self.cfg})
        self.model: torch.nn.Module | None = None
        self.processor: Processor | None = None
        self.trainable: list[str] = []
        self.strict_loading = False  # checkpoints hold trainable weights only
        self.datasets: dict[str, Dataset | None] = {"train": None, "val": None}
        self.batches_done = 0  # batches trained in the current epoch (for exact mid-epoch resume)
        self._resume_pos: tuple[int, int] | None = None
        self.skipped = 0
        self.nonfinite_total, self.nonfinite_streak = 0, 0  # steps skipped for a non-finite loss or gradient
        self._engines: dict[str, Any] = {}  # generation engine per ZeRO-3 gather mode (generation_engine)
        chunk = self.stage["loss_chunk_tokens"]
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
            raise ConfigError(f"stage.loss_chunk_tokens={chunk!r}: expected a whole number ≥ 0 (0: transformers' "
                              "loss over the full logits)")  # fmt: skip
        acc = self.stage["accumulate_grad_batches"]
        if isinstance(acc, bool) or not isinstance(acc, int) or acc < 1:
            raise ConfigError(f"stage.accumulate_grad_batches={acc!r}: expected a whole number ≥ 1 (batches per "
                              "optimizer step)")  # fmt: skip
        # throughput accounting (count_work / log_throughput): built on the first batch, when the model exists
        self._flops: FlopCounter | None = None
        self._peak: float | None = None
        self._clock: float | None = None
        self._work: tuple[int, int, float, int, int] | None = None  # real, padded, FLOPs, tiles, answer tokens
        self._window_total = 1.0  # loss tokens of the current accumulation window, all ranks (token_weight)

    # -- model ---------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model, self.processor = build(self.cfg["model"], get_registry())
        self.trainable = apply_freeze(self.model, list(self.stage["trainable"]))
        if self.cfg.get("checkpoint"):
            load_trainable(self.model, self.cfg["checkpoint"])
        enable_checkpointing(self.model, self.stage["activation_checkpointing"] or [])
        config = getattr(self.model.backbone, "config", None)
        if self.stage["packing"] and getattr(config, "_attn_implementation", None) == "sdpa":
            varlen.register()  # padding-free packing: SDPA everywhere else, the flash varlen kernel when packed
            config._attn_implementation = varlen.NAME

    def train(self, mode: bool = True) -> SFTStage:
        super().train(mode)
        if self.model is not None:  # frozen parts stay in eval mode (no dropout, fixed norms)
            for part in PARTS:
                module = getattr(self.model, part)
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    # -- data ----------------------------------------------------------------------------------
    def attach_data(self, train: Dataset, val: Dataset | None) -> None:
        self.datasets = {"train": train, "val": val}

    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.datasets["train"], self.train_collator(), window=self.accumulate)

    @property
    def accumulate(self) -> int:
        """Batches per optimizer step (``stage.accumulate_grad_batches``)."""
        return int(self.stage["accumulate_grad_batches"])

    def resumable_loader(self, ds: Dataset, collate_fn: Any, window: int = 1) -> DataLoader:
        """Batches of ``stage.batch_size`` in a seeded order sharded by rank, continuing mid-epoch on resume;
        ``window`` > 1: read ahead a window at a time (:class:`~r1v.data.sampler.WindowLoader`)."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        sampler = ResumableSampler(len(ds), seed=int(self.cfg["seed"]), rank=rank, world_size=world)
        if self._resume_pos:
            sampler.resume_at(*self._resume_pos)
        kind, extra = (WindowLoader, {"window": window}) if window > 1 else (DataLoader, {})
        return kind(ds, batch_size=int(self.stage["batch_size"]), sampler=sampler, drop_last=False,
                    collate_fn=collate_fn, num_workers=int(self.cfg["data"].get("loader", {}).get("num_workers", 0)),
                    **extra)  # fmt: skip

    def train_collator(self) -> Collator:
        """Padded batches, or packed rows with ``stage.packing=true`` (no cross-sample attention)."""
        pack = int(self.stage["pack_max_tokens"]) if self.stage["packing"] else None
        attn = getattr(self.model.backbone.config, "_attn_implementation", "sdpa") or "sdpa"
        return Collator(self.processor, self.stage["target"], pack_max_tokens=pack, attn=attn)

    def val_dataloader(self) -> DataLoader | list:
        ds = self.datasets["val"]
        if ds is None:
            return []
        return DataLoader(ds, batch_size=int(self.stage["batch_size"]), shuffle=False,
                          collate_fn=lambda s: s)  # fmt: skip

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.batches_done += 1
        self.skipped += batch["skipped"]
        weight = self.token_weight(batch)  # every rank, every batch: it may all-reduce
        if batch.get("empty"):  # every sample skipped, or only a lock-step pad
            return self.empty_loss()
        loss = self.loss(batch)
        self.count_work(batch)
        if poisoned("nan_loss", self.global_step):
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            self.nonfinite("loss")
            return None  # Lightning skips backward and the optimizer step
        n_tokens = int((batch["labels"] != -100).sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        self.log("train/answer_tokens", float(n_tokens), reduce_fx="sum", batch_size=len(batch["ids"]))
        self.log("train/skipped_samples", float(self.skipped), batch_size=1)
        self.log("train/nonfinite_skipped", float(self.nonfinite_total), batch_size=1)  # cumulative, every step
        return loss if weight is None else loss * weight

    def token_weight(self, batch: dict[str, Any]) -> float | None:
        """Scale of this batch's mean loss so that one optimizer step averages over every loss token of its
        window on every rank: ``n / T · accumulate · world``, where ``n`` is this batch's loss tokens and ``T``
        the window's total over all ranks (all-reduced when the window opens). Lightning divides by
        ``accumulate`` and DDP/DeepSpeed average over ranks, which cancels the last two factors. None when one
        batch on one device makes a step (the mean is already that average)."""
        world = self.trainer.world_size if self._trainer else 1
        if self.accumulate == 1 and world == 1:
            return None
        n = int(batch.get("loss_tokens", 0))  # 0 for an empty batch, which still joins the all-reduce
        if batch.get("window_first", True):
            local = float(batch.get("window_tokens", n))
            total = self.trainer.strategy.reduce(torch.tensor(local, device=self.device), reduce_op="sum")
            self._window_total = max(float(total), 1.0)
        return n / self._window_total * self.accumulate * world

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (labels ≠ -100). ``stage.loss_chunk_tokens=N`` runs the LM
        head on N answer tokens at a time, each chunk recomputed in the backward, so the ``[tokens, vocab]``
        fp32 logits (16k tokens × 152k × 4 B ≈ 10 GB, twice with their gradient) never exist (default 4,096: a
        padded batch of 4 × 8k tokens ran out of memory on an H200 in transformers' loss); 0: transformers' loss
        over the full logits. The two are equal (tests/unit/test_model.py)."""
        kw = {"position_ids": batch.get("position_ids"), **batch.get("attn_kwargs", {})}
        chunk = int(self.stage["loss_chunk_tokens"])
        if not chunk:
            return self.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                              **kw).loss  # fmt: skip
        hidden = self.model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], **kw)
        labels = batch["labels"][:, 1:]  # (B, L-1): position t predicts token t+1
        keep = labels != -100
        h, targets = hidden[:, :-1][keep][None], labels[keep][None]  # (1, N, D), (1, N): answer tokens only
        logp, _ = chunked_logprobs(self.model.backbone.get_output_embeddings(), h, targets, chunk)
        return -logp.mean()

    def empty_loss(self) -> torch.Tensor | None:
        """The loss of a batch with nothing to train on. Alone, None skips the step; with several ranks the
        others still all-reduce gradients, so this rank takes part with a zero loss over its trainable weights
        (zero gradients; AdamW's momentum still moves, as for any step of this rank's peers)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        return torch.stack([p.sum() for p in self.model.parameters() if p.requires_grad]).sum() * 0.0

    def validation_step(self, samples: list[Sample], batch_idx: int) -> None:
        batch = Collator(self.processor, self.stage["target"])(samples)
        if batch.get("empty"):
            return
        batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
        self.log("val/loss", out.loss, prog_bar=True, batch_size=len(samples))
        if batch_idx * len(samples) < int(self.stage["val_generate"]):
            gather, engine = self.generation_engine()
            with self.decode_ready(gather):
                texts = self.run_engine("generation", engine, partial(engine.generate, self.model, self.processor,
                                        samples, int(self.stage["max_new_tokens"]), greedy=True))  # fmt: skip
            acc = sum(equivalent(extract_answer(t), s.answer) for t, s in zip(texts, samples, strict=True))
            self.log("val/accuracy", acc / len(samples), prog_bar=True, batch_size=len(samples))
            for key, parts in score_rewards(self.rewards(), samples, texts).items():
                self.log(f"val/reward/{key}", parts, batch_size=len(samples))

    def decode_ready(self, gather: str = "whole") -> Any:
        """Context for generation inside the fit loop: under ZeRO-3 the parameters are gathered once and
        the engine's per-module hooks lifted, or fetched layer by layer with ``gather="layer"``
        (:func:`r1v.runtime.weights.decode_ready`); elsewhere a no-op."""
        return decode_ready(self.model, self.ds_engine(), gather)

    def generation_engine(self) -> tuple[str, Any]:
        """(gather mode, engine) for greedy generation inside the fit (validation, the eval callback), chosen by
        :func:`r1v.generation.choose.choose_engine`: the fastest engine that runs the backbone, or ``hf`` when a
        ZeRO-3 model too big to gather whole is fetched layer by layer. Collective under ZeRO-3: call on every rank."""
        mode = gather_mode(self.model, self.ds_engine(), "auto")
        if mode not in self._engines:  # built once per mode; the backbone is checked with its weights whole
            with self.decode_ready() if mode == "whole" else contextlib.nullcontext():
                self._engines[mode] = choose_engine(self.model, "auto", mode)[0]
        return mode, self._engines[mode]

    def run_engine(self, kind: str, engine: Any, call: Callable[[], _T]) -> _T:
        """``call()`` — one call of a generation engine — where any failure ends the run in one line, exit 1, with
        no further device call (:func:`r1v.runtime.faults.abort_run`): after a CUDA device-side assert the context is
        dead, and Lightning's teardown would only bury the cause. ``R1V_POISON=engine_error:<n>`` fails it at step n."""
        try:
            if poisoned("engine_error", self.global_step):
                raise RuntimeError("CUDA error: device-side assert triggered (injected: R1V_POISON=engine_error)")
            return call()
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            name = getattr(engine, "name", type(engine).__name__)
            hint = "; try stage.rollout.name=hf" if name != "hf" else ""
            abort_run(f"{kind} engine '{name}' failed at step {self.global_step}: {type(e).__name__}: {first}{hint} "
                      "(log: {log})", e, self.trainer.default_root_dir, self.trainer.loggers, self.release)  # fmt: skip

    def release(self) -> None:
        """Free this stage's host-side resources before the process ends abruptly (:meth:`run_engine`)."""

    def ds_engine(self) -> Any:
        """The DeepSpeed engine of this fit (None without DeepSpeed or outside a fit)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return getattr(strategy, "deepspeed_engine", None)

    def rewards(self) -> dict[str, tuple[float, Any]]:
        """The configured rewards (``reward=[...]``), built once: key -> (weight, callable)."""
        if not hasattr(self, "_rewards"):
            self._rewards = build_rewards(self.cfg)
        return self._rewards

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        maybe_die("before_step", self.global_step)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """A non-finite gradient (finite loss, e.g. an overflow in backward) skips the step: every gradient is
        dropped, so AdamW leaves weights and moments alone. (Under DeepSpeed the gradients live in the engine;
        there only the loss guard applies.)"""
        finite = grads_finite(self.model)
        if finite is False:
            for p in self.model.parameters():
                p.grad = None
            self.nonfinite("gradient")
        elif finite:
            self.nonfinite_streak = 0

    def nonfinite(self, what: str) -> None:
        """Count one skipped step; ``stage.max_nonfinite`` in a row stop the run, the last checkpoint intact."""
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        self.log("train/nonfinite_skipped", float(self.nonfinite_total), batch_size=1)
        log.warning("step %d: non-finite %s, step skipped (%d in a row)", self.global_step, what, self.nonfinite_streak)
        limit = int(self.stage["max_nonfinite"])
        if self.nonfinite_streak >= limit:
            raise NonFiniteError(
                f"{self.nonfinite_streak} steps in a row with a non-finite {what}, at step {self.global_step} "
                f"(stage.max_nonfinite="
                f"{limit}); checkpoints up to the last good step are kept: lower stage.lr or check the data, "
                "then continue with resume=auto"
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log_throughput()
        maybe_die("after_step", self.global_step)  # after the checkpoint callbacks of this batch

    # -- throughput: real tokens, model FLOPs, MFU (benchmarks/sft_throughput.py reads these) ----------------
    def count_work(self, batch: dict[str, Any]) -> None:
        """Remember this batch's real (unpadded) tokens, padded tokens and model FLOPs for :meth:`log_throughput`."""
        if self._flops is None:
            self._flops, self._peak = FlopCounter(self.model), peak_flops(self.device)
        lengths = batch.get("lengths") or [int(batch["input_ids"].shape[1])] * int(batch["input_ids"].shape[0])
        tiles = 0 if batch["pixel_values"] is None else int(batch["pixel_values"].shape[0])
        # the chunked loss runs the LM head on answer tokens only: count the head's FLOPs where it ran
        answer = batch["loss_tokens"]  # counted by the collator, on the CPU
        head = answer if self.stage["loss_chunk_tokens"] else None
        flops = self._flops.step(lengths, tiles, head)
        self._work = (sum(lengths), int(batch["input_ids"].numel()), flops, tiles, answer)

    def log_throughput(self) -> None:
        """Per batch (one GPU): seconds since the previous batch ended, tokens/s and model TFLOP/s on real tokens,
        MFU against the GPU's dense bf16 peak. One device sync per batch, so the clock sees finished work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now, last = time.perf_counter(), self._clock
        self._clock = now
        stats: dict[str, float] = {}
        if self.device.type == "cuda":  # high-water marks since the run started (the planner's prediction)
            stats["perf/peak_alloc_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            stats["perf/peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        work = self._work
        if work is not None:  # the first batch too (no rate: its clock starts here): its shape may set the peak
            stats.update({"perf/real_tokens": float(work[0]), "perf/padded_tokens": float(work[1]),
                          "perf/tiles": float(work[3]), "perf/answer_tokens": float(work[4])})  # fmt: skip
        if last is not None and work is not None:
            dt = now - last
            real, _, flops = work[:3]
            stats.update({"perf/batch_s": dt, "perf/tokens_per_s": real / dt, "perf/tflops": flops / dt / 1e12})
            if self._peak:
                stats["perf/mfu"] = flops / dt / self._peak
        if stats:
            self.log_dict(stats, batch_size=1)

    def on_train_epoch_start(self) -> None:
        if self._resume_pos and self._resume_pos[0] == self.current_epoch:
            self.batches_done = self._resume_pos[1] // int(self.stage["batch_size"])
        else:
            self.batches_done = 0

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.stage["lr"]), weight_decay=float(self.stage["weight_decay"]),
                                betas=tuple(self.stage["betas"]))  # fmt: skip
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(float(self.stage["warmup_ratio"]) * total)
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: trainable weights, data position (RNG streams: the r1v.runtime.rng.RNGStates callback) ------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{n}" for n in self.trainable}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        consumed = self.batches_done * int(self.stage["batch_size"])
        checkpoint["r1v"] = {
            "trainable": self.trainable,
            "data_position": {"epoch": self.current_epoch, "consumed": consumed},
            "skipped": self.skipped,
            "nonfinite": self.nonfinite_total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("r1v", {})
        self.configure_model()
        unknown = sorted(set(checkpoint["state_dict"]) - {f"model.{n}" for n, _ in self.model.named_parameters()})
        if unknown:
            raise RuntimeError(f"checkpoint holds weights this model does not have, e.g. {unknown[0]}")
        pos = state.get("data_position")
        if pos:
            self._resume_pos = (int(pos["epoch"]), int(pos["consumed"]))
        self.skipped = int(state.get("skipped", 0))
        self.nonfinite_total = int(state.get("nonfinite", 0))

    def export_trainable(self, path: Path) -> None:
        """Trainable weights as safetensors (the stage's product; load with ``checkpoint=``).

        Collective under ZeRO-3 (the parameters are gathered): call on every rank; rank 0 writes.
        """
        with full_state(self.model, set(self.trainable)) as state:
            if self.trainer.is_global_zero if self._trainer else True:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                save_file(state, str(tmp))
                tmp.replace(path)


def enable_checkpointing(model: torch.nn.Module, parts: Any) -> None:
    """``stage.activation_checkpointing=[backbone]``: recompute each layer's activations in backward (keeps only
    layer inputs; ~1/3 more compute, not counted in the logged MFU). Parts without support are refused."""

    def switch(module: Any) -> Any:  # transformers ≥ 5.20 renamed it; older ones only have the first name
        return getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None
        )

    for part in [parts] if isinstance(parts, str) else list(parts):
        enable = switch(getattr(model, part)) if part in PARTS else None
        if enable is None:
            can = [p for p in PARTS if switch(getattr(model, p))]
            raise ConfigError(f"stage.activation_checkpointing: '{part}' cannot checkpoint; allowed: {', '.join(can)}")
        key = "activation" if enable.__name__.startswith("activation") else "gradient"
        enable(**{f"{key}_checkpointing_kwargs": {"use_reentrant": False}})


def build_rewards(cfg: Mapping[str, Any]) -> dict[str, tuple[float, Any]]:
    """The ``reward=[...]`` composition of a config: key -> (weight, reward callable)."""
    from r1v.core.config import build_plugin

    reg = get_registry()
    return {key: (float(node.get("weight", 1.0)),
                  build_plugin(reg, "reward", {"name": key, **node}, f"rewards.{key}", ("name", "weight")))
            for key, node in (cfg.get("rewards") or {}).items()}  # fmt: skip


def score_rewards(
    rewards: Mapping[str, tuple[float, Any]], samples: list[Sample], texts: list[str]
) -> dict[str, float]:
    """Mean of every reward part over the samples, plus the weighted ``total``.

    A reward that raises on a sample counts as 0 for it and is logged, never a dead run.
    """
    sums: dict[str, float] = {"total": 0.0}
    for s, text in zip(samples, texts, strict=True):
        x = RewardInput(prompt=s.question, completion=text, answer=s.answer, images=s.images, extra=s.meta)
        for key, (weight, fn) in rewards.items():
            try:
                parts = fn(x)
            except Exception as e:  # a broken reward must not kill training
                log.warning("reward %s failed on sample %s: %s", key, s.id, e)
                parts = {key: 0.0}
            for part, value in parts.items():
                sums[part] = sums.get(part, 0.0) + float(value)
            sums["total"] += weight * float(parts.get(key, sum(parts.values())))
    return {k: v / max(len(samples), 1) for k, v in sums.items()}
