"""What every Lightning stage (align, sft, grpo, mpo, reward_model) shares, assembled from parts it holds.

:class:`LightningStage` is the one base the training stages subclass; none inherits another stage. It owns the
model's life (built in ``configure_model``, idempotent, so DeepSpeed ZeRO-3 can shard it at construction; frozen
parts in eval mode), the optimiser, the checkpoint hooks and the Lightning hooks that every stage needs, and hands
the work to objects it composes:

- :class:`~r1v.runtime.steps.DataPosition` — exact mid-epoch resume and skipped-sample counts;
- :class:`~r1v.runtime.steps.StepGuard` — non-finite steps skipped, counted, and a stop after too many in a row;
- :class:`~r1v.runtime.perf.Throughput` — tokens/s, TFLOP/s and MFU per batch;
- the generation engines for greedy answers inside the fit (:meth:`generation_engine`), run so that an engine
  failure ends the run in one line (:meth:`run_engine`), and the time-bounded
  :class:`~r1v.rl.rewards.RewardRunner` that scores those answers (:meth:`validate_answers`).

A stage adds its own ``training_step`` / ``validation_step`` and, where it keeps more state, extends the
checkpoint hooks under its own key of ``checkpoint["r1v"]``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from r1v.core.config import ConfigError, build_plugin
from r1v.core.interfaces import RewardInput, Sample
from r1v.core.registry import get_registry
from r1v.data.audio import audio_inputs
from r1v.data.collate import Collator, Limits
from r1v.data.processor import Processor
from r1v.data.video import with_data_knobs
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.generation.choose import choose_engine
from r1v.model import varlen
from r1v.model.build import AUDIO_PARTS, PARTS, apply_freeze, build, cast_frozen_parts
from r1v.model.load import checkpoint_lora, load_trainable
from r1v.model.lora import METADATA_KEY, LoraSpec, apply_lora, base_name, lora_layers, lora_names
from r1v.model.sources import RANDOM_INIT, random_frozen
from r1v.rl.rewards import RewardRunner
from r1v.runtime.faults import abort_run, maybe_die, poisoned
from r1v.runtime.kernels import apply_kernels, check_kernels
from r1v.runtime.optim import adamw, uses_deepspeed
from r1v.runtime.perf import Throughput
from r1v.runtime.steps import DataPosition, StepGuard, grads_finite
from r1v.runtime.weights import decode_ready, full_state, gather_mode

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def build_rewards(cfg: Mapping[str, Any]) -> dict[str, tuple[float, Any]]:
    """The ``reward=[...]`` composition of a config: key -> (weight, reward callable)."""
    reg = get_registry()
    return {key: (float(node.get("weight", 1.0)),
                  build_plugin(reg, "reward", {"name": key, **node}, f"rewards.{key}", ("name", "weight")))
            for key, node in (cfg.get("rewards") or {}).items()}  # fmt: skip


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


class LightningStage(L.LightningModule):
    """The shared base of the Lightning stages (see the module docstring); ``cfg`` is the composed run config."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.stage = dict(cfg["stage"])
        self.save_hyperparameters({"config": self.cfg})
        self.model: torch.nn.Module | None = None
        self.processor: Processor | None = None
        self.trainable: list[str] = []
        self.lora = LoraSpec.from_node(self.stage.get("lora"))  # stage.lora checked before anything is built
        self.kernels = check_kernels(self.stage.get("kernels", "none"))  # opt-in Liger kernels, checked early
        self.lora_fresh = True  # LoRA weights start at B = 0 (not continued from checkpoint=): base = start
        self.strict_loading = False  # checkpoints hold trainable weights only
        self.datasets: dict[str, Dataset | None] = {"train": None, "val": None}
        self.position = DataPosition(int(self.stage["batch_size"]), int(self.cfg["seed"]))
        self.guard = StepGuard(int(self.stage["max_nonfinite"]))
        self.throughput = Throughput(chunked_head=bool(self.stage["loss_chunk_tokens"]))
        self._engines: dict[str, Any] = {}  # generation engine per ZeRO-3 gather mode (generation_engine)
        self._rewards: dict[str, tuple[float, Any]] | None = None
        self._val_runner: RewardRunner | None = None

    # -- model -----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the composition, load ``checkpoint=`` on top, add ``stage.lora``'s LoRA layers, freeze what
        ``stage.trainable`` and the LoRA leave out. LoRA layers are injected here, before a ZeRO-3 engine exists
        (``zero.Init`` partitions them as they are made)."""
        if self.model is not None:
            return
        self.model, self.processor = build(self.cfg["model"], get_registry())
        self.processor = with_data_knobs(self.processor, self.cfg.get("data"))  # data.video, data.max_visual_tokens
        ckpt = self.cfg.get("checkpoint")
        if ckpt:  # a LoRA checkpoint's LoRA is merged, or kept when this stage continues it
            kept = load_trainable(self.model, ckpt, keep_lora=self.lora)
            self.lora_fresh = kept is None
            earlier = checkpoint_lora(ckpt) if kept is None else None
            if earlier is not None and self._trainer is not None and self.trainer.is_global_zero:
                log.warning("checkpoint=%s holds LoRA (%s), merged into the base weights for this run (its stage.lora "
                            "is %s); this run's weights do not hold that merge: load them on top of that checkpoint's "
                            "merged model, or continue the same LoRA (same stage.lora) to keep one product", ckpt,
                            earlier.to_json(), self.lora.to_json() if self.lora else "null")  # fmt: skip
        if self.lora is not None and not lora_layers(self.model):
            apply_lora(self.model, self.lora)
        self.trainable = apply_freeze(self.model, list(self.stage["trainable"]))
        if self.lora is not None:
            for n, p in self.model.named_parameters():
                p.requires_grad_(p.requires_grad or ".lora_" in n)
            self.trainable = sorted({*self.trainable, *lora_names(self.model)})
        enable_checkpointing(self.model, self.stage["activation_checkpointing"] or [])
        apply_kernels(self.model, self.kernels)  # per instance, never Liger's global class patches
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and str(trainer.precision) == "bf16-mixed" and not uses_deepspeed(trainer):
            cast = cast_frozen_parts(self.model, torch.bfloat16)  # DeepSpeed's bf16 casts the whole model itself
            if cast:
                log.info("bf16-mixed: frozen part(s) %s held in bf16", ", ".join(cast))
        config = getattr(self.model.backbone, "config", None)
        if self.stage["packing"] and getattr(config, "_attn_implementation", None) == "sdpa":
            varlen.register()  # padding-free packing: SDPA everywhere else, the flash varlen kernel when packed
            config._attn_implementation = varlen.NAME

    def train(self, mode: bool = True) -> LightningStage:
        super().train(mode)
        if self.model is not None:  # frozen parts stay in eval mode (no dropout, fixed norms)
            for part in self.model_parts():
                module = getattr(self.model, part)
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            log.info("model: %s", self.summary())
        self.save_random_init()

    def model_parts(self) -> list[str]:
        """The model's parts: vision, adapter, backbone, and the audio ones when composed."""
        return [*PARTS, *(p for p in AUDIO_PARTS if getattr(self.model, p, None) is not None)]

    def summary(self) -> str:
        """Parameters per part and whether each trains, in one line (Lightning's own summary is switched off)."""

        def count(params: list[Any]) -> int:
            return sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in params)  # ZeRO-3: the whole tensor

        parts, total, trained = [], 0, 0
        for part in self.model_parts():
            params = list(getattr(self.model, part).parameters())
            n, t = count(params), count([p for p in params if p.requires_grad])
            total, trained = total + n, trained + t
            name = "internvl" if self.cfg["model"].get("internvl") else self.cfg["model"][part].get("name")
            state = "trainable" if t == n else "frozen" if t == 0 else f"{t / 1e6:.2f}M trainable"
            parts.append(f"{part} {name} {n / 1e6:.2f}M ({state})")
        return f"{'; '.join(parts)}; {trained / 1e6:.2f}M of {total / 1e6:.2f}M parameters train"

    def save_random_init(self) -> None:
        """Frozen weights that no file rebuilds (a part with ``pretrained=null``) are saved with the run, once, as
        ``<run>/random_init.safetensors``: evaluation, export and later stages then load exactly these
        (:func:`r1v.model.load.load_trainable`). Collective under ZeRO-3; rank 0 writes."""
        names = random_frozen(self.model, self.cfg["model"], set(self.trainable))
        path = Path(self.trainer.default_root_dir) / RANDOM_INIT
        if not names or path.exists():  # a resumed run has it already
            return
        with full_state(self.model, set(names)) as state:
            state = {base_name(k): v for k, v in state.items()}  # loaded before any LoRA layer exists
            if self.trainer.is_global_zero:
                tmp = path.with_name(f".{path.name}.tmp")
                save_file(state, str(tmp))
                tmp.replace(path)
                parts = sorted({n.split(".")[0] for n in names})
                log.warning("%s: no pretrained weights (pretrained=null), so the random initialisation (seed %s) is "
                            "saved with the run as %s (%.1f MB): evaluation, export and later stages load exactly "
                            "these weights", ", ".join(f"model.{p}" for p in parts), self.cfg.get("seed"), path.name,
                            sum(t.nbytes for t in state.values()) / 1e6)  # fmt: skip

    # -- data ------------------------------------------------------------------------------------
    def attach_data(self, train: Dataset, val: Dataset | None) -> None:
        self.datasets = {"train": train, "val": val}

    def resumable_loader(self, ds: Dataset, collate_fn: Any, window: int = 1) -> DataLoader:
        """Batches of ``stage.batch_size`` in a seeded order sharded by rank, continuing mid-epoch on resume."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        workers = int(self.cfg["data"].get("loader", {}).get("num_workers", 0))
        return self.position.loader(ds, collate_fn, world, rank, workers, window)

    def data_limits(self) -> Limits:
        """The training collators' limits: ``data.max_tokens`` (:meth:`max_tokens`), ``data.on_bad_sample`` and the
        training data's way of naming a sample (``file:line`` for JSONL)."""
        where = getattr(self.datasets.get("train"), "where", None)
        return Limits(self.max_tokens(), str(self.cfg["data"].get("on_bad_sample", "skip")),
                      *([where] if callable(where) else []))  # fmt: skip

    def max_tokens(self) -> int | None:
        """The longest training sample after image-token expansion: ``data.max_tokens``, else the backbone's
        context (``max_position_embeddings``); longer ones are skipped and counted, or stop the run."""
        limit = self.cfg["data"].get("max_tokens")
        if limit is None:
            limit = getattr(getattr(self.model.backbone, "config", None), "max_position_embeddings", None)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"data.max_tokens: {limit!r} is not allowed (a positive whole number of tokens, or "
                              "null for the backbone's context)")  # fmt: skip
        return limit or None

    def val_dataloader(self) -> DataLoader | list:
        ds = self.datasets["val"]
        if ds is None:
            return []
        return DataLoader(ds, batch_size=int(self.stage["batch_size"]), shuffle=False,
                          collate_fn=lambda s: s)  # fmt: skip

    def on_train_epoch_start(self) -> None:
        self.position.start_epoch(self.current_epoch)

    # -- steps -----------------------------------------------------------------------------------
    def begin_batch(self, batch: Mapping[str, Any]) -> None:
        """Count a collated batch as consumed (for exact resume) and the samples the collator skipped."""
        self.position.batches_done += 1
        self.position.skipped += int(batch.get("skipped", 0))
        self.position.skipped_rows.update(batch.get("skipped_rows") or {})

    def empty_loss(self) -> torch.Tensor | None:
        """The loss of a batch with nothing to train on. Alone, None skips the step; with several ranks the
        others still all-reduce gradients, so this rank takes part with a zero loss over its trainable weights
        (zero gradients; AdamW's momentum still moves, as for any step of this rank's peers)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        return torch.stack([p.sum() for p in self.model.parameters() if p.requires_grad]).sum() * 0.0

    def nonfinite(self, what: str) -> None:
        """Count one skipped step; ``stage.max_nonfinite`` in a row stop the run, the last checkpoint intact."""
        self.guard.record()
        self.log("train/nonfinite_skipped", float(self.guard.total), batch_size=1)
        self.guard.check(what, self.global_step)

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
            self.guard.ok()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        stats = self.throughput.stats(self.device)
        if stats:
            self.log_dict(stats, batch_size=1)
        # data=mixture: draws per source so far, all ranks together
        mixture = self.position.sources(self.current_epoch, remember=True)
        if mixture:
            self.log_dict({f"data/source_{name}_{what}": float(n) for what in ("samples", "epochs")
                           for name, n in mixture[what].items()}, batch_size=1)  # fmt: skip
        maybe_die("after_step", self.global_step)  # after the checkpoint callbacks of this batch

    # -- validation answers: greedy generation, accuracy and rewards ----------------------------------
    def validate_answers(self, samples: list[Sample], batch_idx: int) -> None:
        """``val/loss`` on the target completion, and for the first ``stage.val_generate`` samples greedy answers:
        ``val/accuracy`` and every reward part (``val/reward/<part>``, scored with a time limit per call)."""
        batch = Collator(self.processor, self.stage["target"])(samples)
        if batch.get("empty"):
            return
        batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                         **audio_inputs(batch))  # fmt: skip
        self.log("val/loss", out.loss, prog_bar=True, batch_size=len(samples))
        if batch_idx * len(samples) >= int(self.stage["val_generate"]):
            return
        gather, engine = self.generation_engine()
        with self.decode_ready(gather):
            texts = self.run_engine("generation", engine, partial(engine.generate, self.model, self.processor,
                                    samples, int(self.stage["max_new_tokens"]), greedy=True))  # fmt: skip
        acc = sum(equivalent(extract_answer(t), s.answer) for t, s in zip(texts, samples, strict=True))
        self.log("val/accuracy", acc / len(samples), prog_bar=True, batch_size=len(samples))
        for key, value in self.score_answers(samples, texts).items():
            self.log(f"val/reward/{key}", value, batch_size=len(samples))

    def score_answers(self, samples: list[Sample], texts: list[str]) -> dict[str, float]:
        """Mean of every reward part over the samples, plus the weighted ``total``, through the one
        :class:`~r1v.rl.rewards.RewardRunner` (inline, ``stage.reward_timeout_s`` per call; a failure counts 0)."""
        if self._val_runner is None:
            self._val_runner = RewardRunner(self.rewards(), float(self.stage["reward_timeout_s"]), "inline",
                                            max_failure_share=None)  # fmt: skip
        inputs = [RewardInput.of(s, t) for s, t in zip(samples, texts, strict=True)]
        parts, totals = self._val_runner.score(inputs)
        sums: dict[str, float] = {"total": 0.0}
        for row, total in zip(parts, totals, strict=True):
            sums["total"] += total
            for part, value in row.items():
                sums[part] = sums.get(part, 0.0) + value
        return {k: v / max(len(samples), 1) for k, v in sums.items()}

    def rewards(self) -> dict[str, tuple[float, Any]]:
        """The configured rewards (``reward=[...]``), built once: key -> (weight, callable)."""
        if self._rewards is None:
            self._rewards = build_rewards(self.cfg)
        return self._rewards

    # -- generation inside the fit ---------------------------------------------------------------
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

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = adamw(params, float(self.stage["lr"]), self.stage["betas"], float(self.stage["weight_decay"]),
                    deepspeed=uses_deepspeed(self._trainer))  # fmt: skip
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(float(self.stage["warmup_ratio"]) * total)
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: trainable weights, data position (RNG streams: the r1v.runtime.rng.RNGStates callback) ------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{n}" for n in self.trainable}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["r1v"] = {"trainable": self.trainable, **self.position.state_dict(self.current_epoch),
                             **self.guard.state_dict(), "lora": self.lora.to_node() if self.lora else None}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("r1v", {})
        self.configure_model()
        unknown = sorted(set(checkpoint["state_dict"]) - {f"model.{n}" for n, _ in self.model.named_parameters()})
        if unknown:
            raise RuntimeError(f"checkpoint holds weights this model does not have, e.g. {unknown[0]}")
        self.position.load_state_dict(state)
        self.guard.load_state_dict(state)

    def export_trainable(self, path: Path) -> None:
        """Trainable weights as safetensors (the stage's product; load with ``checkpoint=``).

        Collective under ZeRO-3 (the parameters are gathered): call on every rank; rank 0 writes.
        """
        with full_state(self.model, set(self.trainable)) as state:
            if self.trainer.is_global_zero if self._trainer else True:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                save_file(state, str(tmp), metadata={METADATA_KEY: self.lora.to_json()} if self.lora else None)
                tmp.replace(path)
