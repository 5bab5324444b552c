"""Setting up a training stage: the checks before anything heavy starts, the device the model is built on, and the
Lightning Trainer of a run (loggers, checkpoints, RNG states, the strategy). Used by ``r1v.train`` and by the
stages that run Lightning fits of their own (iterative SFT's rounds)."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from r1v.core.errors import ConfigError
from r1v.model.meta import build_on_meta, count

log = logging.getLogger("r1v.train")


RANDOM_WEIGHTS_LIMIT = 3_000_000_000  # parameters without weights above which a run needs allow_random_weights


def preflight(cfg: dict[str, Any]) -> None:
    """What a run lacks before anything heavy starts: a GPU the trainer asks for, and weights for a
    large composition (random weights for billions of parameters are almost always a missing path)."""
    import torch

    accel = str(cfg["trainer"].get("accelerator", "cpu"))
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accel}: no GPU is visible here; use trainer=cpu, or run on a GPU "
                          "machine (trainer=gpu / deepspeed_z2 / deepspeed_z3)")  # fmt: skip
    model = cfg["model"]
    if model.get("internvl") or cfg.get("allow_random_weights") or cfg["stage"]["name"] == "reassemble":
        return
    missing = [p for p in ("vision", "backbone") if isinstance(model.get(p), dict) and "pretrained" in model[p]
               and not model[p]["pretrained"]]  # fmt: skip
    if not missing:
        return
    vlm = build_on_meta(cfg)
    n = sum(count(getattr(vlm, p))[0] for p in missing)
    if n > RANDOM_WEIGHTS_LIMIT:
        paths = " ".join(f"model.{p}.pretrained=<local folder>" for p in missing)
        raise ConfigError(
            f"model={model.get('preset', '?')}: {', '.join(missing)} ({n / 1e9:.1f}B parameters) would start from "
            f"random weights; give {paths}, or for a shape-only run cut the depth (model.backbone.num_hidden_layers=2 "
            "model.vision.num_hidden_layers=2) or set allow_random_weights=true"
        )


def untrained_parts(cfg: dict[str, Any]) -> list[str]:
    """The parts a stage expects trained (``stage.expects_trained``: GRPO, MPO, SFT … refine a model that already
    answers) that start untrained here: no ``checkpoint=``, no ``model.internvl`` folder, no ``pretrained=``."""
    model = cfg["model"]
    if cfg.get("checkpoint") or model.get("internvl"):
        return []
    expected = cfg["stage"].get("expects_trained") or []
    return [p for p in expected if isinstance(model.get(p), dict) and not model[p].get("pretrained")]


def untrained_note(cfg: dict[str, Any], parts: list[str]) -> str:
    """The one line said at the start and again at the end of a run that starts from untrained parts."""
    stage = cfg["stage"]["name"]
    return (f"stage={stage} starts from an untrained {' and '.join(parts)} (no checkpoint=, model.{parts[0]}.pretrained"
            f"=null): {stage} refines a model that already answers, so expect little to learn; train stage=align "
            "(then reassemble and sft) first and pass checkpoint=<that run>")  # fmt: skip


REASONER_OF = {"tiny": "tiny_reasoner", "r1v38b_substitute": "r1v38b"}  # align preset -> its re-assembly preset
NEXT_STAGE = {"reassemble": "sft", "sft": "grpo", "iterative_sft": "grpo", "mpo": "grpo"}


def next_steps(cfg: dict[str, Any], run_dir: Path) -> list[str]:
    """The commands a newcomer runs next with a finished run: talk to it, evaluate it, and the R1V chain's next
    stage from it."""
    here = Path.cwd()
    run = os.path.relpath(run_dir, here) if Path(run_dir).resolve().is_relative_to(here) else str(run_dir)
    stage, preset = cfg["stage"]["name"], cfg["model"].get("preset")
    lines = [f"python -m r1v chat --checkpoint {run} --question 'How many shapes are there?' --image <a picture>",
             f"python -m r1v.eval checkpoint={run}"]  # fmt: skip
    if stage == "align":
        model = f"model={REASONER_OF[preset]}" if preset in REASONER_OF else "model=<the reasoning preset>"
        lines.append(f"python -m r1v.train stage=reassemble {model} checkpoint={run} run=re   # R1V's next stage")
    elif stage in NEXT_STAGE:
        lines.append(f"python -m r1v.train stage={NEXT_STAGE[stage]} model={preset} checkpoint={run}   # R1V's next "
                     "stage")  # fmt: skip
    return lines


def build_device(trainer: dict[str, Any]) -> Any:
    """Where the model is built before the Trainer exists: on this rank's GPU when the run trains on one, so
    random-weight parts initialise there (r1v_small with Qwen2.5-1.5B on the H200: the run's set-up took 2.7 s,
    against 67 s when built on the CPU; ZeRO-3 builds partitioned on the GPU anyway), else on the CPU."""
    import torch

    if str(trainer.get("accelerator", "auto")) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return nullcontext()


def build_trainer(cfg: dict[str, Any], run_dir: Path, resume_step: int | None = None) -> Any:
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from r1v.runtime.progress import StepProgressBar
    from r1v.runtime.rng import RNGStates
    from r1v.runtime.runs import AtomicCheckpointIO, checkpoint_dir
    from r1v.runtime.stop import GracefulStop

    stage = cfg["stage"]
    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        extra = {"resume_step": resume_step} if spec["_target_"].endswith("RunCSVLogger") else {}
        loggers.append(instantiate(spec, save_dir=str(run_dir), **extra))
    every = int(stage["ckpt_every"])
    callbacks = [
        LearningRateMonitor(logging_interval="step"),
        RNGStates(),  # every rank's torch/CUDA/numpy/python streams in the checkpoint, each rank's own restored
        GracefulStop(checkpoint_dir(run_dir)),  # Ctrl-C / SIGTERM: a checkpoint at the step boundary, then stop
    ]
    if cfg["trainer"].get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    if every > 0:
        callbacks.insert(0, ModelCheckpoint(dirpath=checkpoint_dir(run_dir), filename="step{step:06d}",
                                            auto_insert_metric_name=False, every_n_train_steps=every, save_top_k=1,
                                            save_last=True))  # fmt: skip
    else:  # benchmarks: a full-model checkpoint (tens of GB with optimizer states) is most of a short run's time
        log.warning("stage.ckpt_every=%d: no checkpoints are written; a stopped run cannot resume", every)
    ev = cfg.get("evaluation") or {}
    if ev.get("enabled"):  # held-out evaluation every N steps, with the harness of python -m r1v.eval
        from r1v.evaluation.callback import EvalCallback

        try:
            callbacks.append(EvalCallback(**{k: v for k, v in ev.items() if k != "enabled"}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"evaluation: {e}") from None
    trainer_cfg = dict(cfg["trainer"])
    if stage.get("log_every"):  # a stage that must log every step (GRPO) overrides the trainer preset
        trainer_cfg["log_every_n_steps"] = int(stage["log_every"])
    strategy = trainer_cfg.get("strategy")
    deepspeed = isinstance(strategy, dict) and "DeepSpeed" in str(strategy.get("_target_", ""))
    plugins = [] if deepspeed else [AtomicCheckpointIO()]  # DeepSpeed writes checkpoint folders itself
    return instantiate(
        trainer_cfg, _convert_="all", default_root_dir=str(run_dir), max_steps=int(stage["max_steps"]),
        val_check_interval=int(stage["val_every"]), check_val_every_n_epoch=None,
        accumulate_grad_batches=int(stage["accumulate_grad_batches"]),
        gradient_clip_val=stage["gradient_clip_val"], logger=loggers or False, callbacks=callbacks,
        plugins=plugins, num_sanity_val_steps=0, enable_checkpointing=every > 0,
        use_distributed_sampler=False,  # ResumableSampler shards by rank itself; Lightning's wrapper would reshuffle
    )  # fmt: skip
