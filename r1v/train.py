"""``python -m r1v.train [GROUP=OPTION] [KEY=VALUE] [-m]``: train one stage of an R1V-style VLM.

With no arguments: adapter alignment of the tiny model on the bundled synthetic data, on CPU.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from r1v.config import ConfigError, conf_dir, hydra_entry, validate
from r1v.registry import RegistryError, get_registry
from r1v.runs import default_run_name

log = logging.getLogger("r1v.train")
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, RegistryError, FileNotFoundError)

if not OmegaConf.has_resolver("r1v_run_name"):
    OmegaConf.register_new_resolver("r1v_run_name", default_run_name)


def _user_errors() -> tuple[type[BaseException], ...]:
    from r1v.data.datasets import DataError
    from r1v.evaluation.readers import BenchmarkError
    from r1v.judge import JudgeError
    from r1v.model.build import ModelConfigError
    from r1v.reward_runner import RewardFailureError
    from r1v.runs import RunError
    from r1v.scoring import ScoringError
    from r1v.weights import WeightsError

    return (
        *USER_ERRORS,
        DataError,
        ModelConfigError,
        RunError,
        WeightsError,
        ScoringError,
        JudgeError,
        BenchmarkError,
        RewardFailureError,
    )


def exit_on_user_error(fn: Any, *args: Any) -> Any:
    """``fn(*args)``; a user error (bad config, data, weights, benchmark copy …) is one line and exit 2."""
    try:
        return fn(*args)
    except _user_errors() as e:
        print(f"r1v: error: {e}", file=sys.stderr)
        sys.exit(2)


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
    from r1v.inspect import build_on_meta, count

    vlm = build_on_meta(cfg)
    n = sum(count(getattr(vlm, p))[0] for p in missing)
    if n > RANDOM_WEIGHTS_LIMIT:
        paths = " ".join(f"model.{p}.pretrained=<local folder>" for p in missing)
        raise ConfigError(
            f"model={model.get('preset', '?')}: {', '.join(missing)} ({n / 1e9:.1f}B parameters) would start from "
            f"random weights; give {paths}, or for a shape-only run cut the depth (model.backbone.num_hidden_layers=2 "
            "model.vision.num_hidden_layers=2) or set allow_random_weights=true"
        )


def build_datasets(cfg: dict[str, Any], registry: Any) -> tuple[Any, Any]:
    data = cfg["data"]
    knobs = {k: v for k, v in data.items() if k not in ("name", "loader")}
    if cfg["stage"].get("target") == "reasoning" and data["name"] == "jsonl":
        knobs["require_reasoning"] = True
    entry = registry.get("dataset", data["name"])
    return entry.factory(split="train", **knobs), entry.factory(split="val", **knobs)


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

    from r1v.rng import RNGStates
    from r1v.runs import AtomicCheckpointIO, checkpoint_dir

    stage = cfg["stage"]
    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        extra = {"resume_step": resume_step} if spec["_target_"].endswith("RunCSVLogger") else {}
        loggers.append(instantiate(spec, save_dir=str(run_dir), **extra))
    every = int(stage["ckpt_every"])
    callbacks = [
        LearningRateMonitor(logging_interval="step"),
        RNGStates(),  # every rank's torch/CUDA/numpy/python streams in the checkpoint, each rank's own restored
    ]
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
        gradient_clip_val=stage.get("gradient_clip_val"), logger=loggers or False, callbacks=callbacks,
        plugins=plugins, num_sanity_val_steps=0, enable_checkpointing=every > 0,
        use_distributed_sampler=False,  # ResumableSampler shards by rank itself; Lightning's wrapper would reshuffle
    )  # fmt: skip


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Validate, build data and model, train; returns the run folder.

    Rank 0 of the launch holds ``run_dir/run.lock`` from before the checkpoints are looked at until the run
    ends (or dies): a second training process on the same folder is refused (:func:`r1v.runs.lock_run_folder`).
    """
    from r1v.runs import launch_rank_is_zero, lock_run_folder, unlock_run_folder

    registry = get_registry()
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    validate(container, registry)
    preflight(container)
    run_dir.mkdir(parents=True, exist_ok=True)
    locked = launch_rank_is_zero()  # the other ranks of this launch share rank 0's folder and lock
    if locked:
        lock_run_folder(run_dir)
    try:
        return _train(cfg, container, registry, run_dir)
    finally:
        if locked:
            unlock_run_folder(run_dir)


def _train(cfg: DictConfig, container: dict[str, Any], registry: Any, run_dir: Path) -> Path:
    started = time.perf_counter()
    import warnings

    import lightning as L

    from r1v.data.sampler import PadAware
    from r1v.runs import (
        checkpoint_step,
        launch_rank_is_zero,
        provenance,
        resolve_resume,
        trained_weights,
        write_json_atomic,
    )

    # Lightning's notes about our own files in the run folder and a torch deprecation: noise here.
    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # frozen parts: on purpose
    warnings.filterwarnings("ignore", message=r".*no pre-optimization state was saved.*")  # GRPO: post-step is right
    ckpt = resolve_resume(container.get("resume"), run_dir)
    L.seed_everything(int(container["seed"]), workers=True, verbose=False)
    stage = registry.get("stage", container["stage"]["name"]).factory(container)
    data_summary: dict[str, Any] = {}
    if not hasattr(stage, "run_stage"):  # a Lightning stage: data first (bad rows surface before the model)
        train, val = build_datasets(container, registry)
        datasets = (PadAware(train), val)  # the sampler's lock-step pads arrive marked (no loss)
        stage.attach_data(*datasets)
        for split, ds in zip(("train", "val"), datasets, strict=True):
            if ds is not None:
                data_summary[split] = {"rows": len(ds), "skipped": dict(getattr(ds, "skipped", {}) or {})}
        strategy = container["trainer"].get("strategy")  # a DeepSpeed config, or a name like "ddp"
        # build now (width mismatches surface before any training), except under ZeRO-3 (built partitioned)
        if not isinstance(strategy, dict) or int(strategy.get("stage", 0)) != 3:
            with build_device(container["trainer"]):
                stage.configure_model()
    owner = launch_rank_is_zero()  # rank 0 (holding the lock) writes the folder's files; the others only read
    if owner:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    model = container["model"]
    parts = {} if model.get("internvl") else {p: model[p]["name"] for p in ("vision", "adapter", "backbone")}
    choices = {**parts, "dataset": container["data"]["name"], "stage": container["stage"]["name"]}
    for key, node in (container.get("rewards") or {}).items():
        choices[f"reward:{key}"] = node.get("name", key)
    prov = provenance(registry, choices)
    prov["resumed_from"] = str(ckpt) if ckpt else None
    prov["data"] = data_summary  # rows used and bad rows skipped, per kind (training adds unreadable ones as it goes)
    if model.get("internvl"):  # the parts come from this folder (model.vision/adapter/backbone were ignored)
        prov["internvl"] = str(model["internvl"])
    if owner:
        write_json_atomic(run_dir / "run.json", prov)
    if hasattr(stage, "run_stage"):  # a stage that runs once, outside Lightning (e.g. reassemble)
        stage.run_stage(run_dir)
        log.info("run %s finished: %s", container["run"], run_dir)
        return run_dir
    trainer = build_trainer(container, run_dir, resume_step=checkpoint_step(ckpt) if ckpt else None)
    t0 = time.perf_counter()
    trainer.fit(stage, ckpt_path=str(ckpt) if ckpt else None)
    t1 = time.perf_counter()
    stage.export_trainable(trained_weights(run_dir))  # every rank: gathers under ZeRO-3
    log.info("set-up before fit %.1f s, fit %.1f s (checkpoints included), weights export %.1f s",
             t0 - started, t1 - t0, time.perf_counter() - t1)  # fmt: skip
    if trainer.is_global_zero:
        log.info("run %s finished: %s", container["run"], run_dir)
    return run_dir


@hydra.main(config_path=conf_dir(), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    exit_on_user_error(run, cfg, Path(HydraConfig.get().runtime.output_dir))


def main(argv: list[str] | None = None) -> None:
    """Register plugin configs, pre-check overrides (one-line errors), then hand over to Hydra."""
    # Varying batch shapes (packed lengths, rollouts, ZeRO-3 gathers) fragment the caching allocator: on the
    # H200 it held 28–33 GiB more than it had allocated. Expandable segments grow one mapping instead; the user's
    # own setting wins. Read when CUDA first allocates, so setting it here reaches every rank Lightning starts.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    hydra_entry(_hydra_main, "config", argv)


if __name__ == "__main__":
    main()
