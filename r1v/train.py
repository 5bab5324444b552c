"""``python -m r1v.train [GROUP=OPTION] [KEY=VALUE] [-m]``: train one stage of an R1V-style VLM.

With no arguments: adapter alignment of the tiny model on the bundled synthetic data, on CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from r1v.core.config import conf_dir, hydra_entry, register_resolvers, validate
from r1v.core.errors import ConfigError, exit_on_user_error
from r1v.core.interfaces import RunOnceStage, TrainingStage
from r1v.core.registry import get_registry
from r1v.data.build import build_datasets
from r1v.runtime.steps import skips_over_ranks
from r1v.stages.setup import build_device, build_trainer, next_steps, preflight, untrained_note, untrained_parts

log = logging.getLogger("r1v.train")
register_resolvers()


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Validate, build data and model, train; returns the run folder.

    Rank 0 of the launch holds ``run_dir/run.lock`` from before the checkpoints are looked at until the run
    ends (or dies): a second training process on the same folder is refused (:func:`r1v.runtime.runs.lock_run_folder`).
    """
    from r1v.runtime.runs import launch_rank_is_zero, lock_run_folder, unlock_run_folder

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
    from r1v.model.sources import part_sources
    from r1v.runtime.history import append_history, resume_changes
    from r1v.runtime.runs import (
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
    # resume is exact mid-epoch: the sampler continues at the checkpoint's sample (r1v.runtime.steps.DataPosition)
    warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "💡 Tip" not in r.getMessage())
    ckpt = resolve_resume(container.get("resume"), run_dir)
    first = run_dir / "config.yaml"
    resuming = ckpt is not None and first.is_file() and Path(ckpt).resolve().is_relative_to(run_dir.resolve())
    if resuming:  # before anything is built: a resume may change the run's length and logging only
        started_with: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(first))  # type: ignore[assignment]
        changes = resume_changes(started_with, container, bool(container.get("allow_changes")), run_dir)
    untrained = untrained_parts(container)
    if untrained:
        log.warning(untrained_note(container, untrained))
    L.seed_everything(int(container["seed"]), workers=True, verbose=False)
    stage = registry.get("stage", container["stage"]["name"]).factory(container)
    data_summary: dict[str, Any] = {}
    once = isinstance(stage, RunOnceStage)  # the two stage contracts (r1v.core.interfaces)
    if not once and not isinstance(stage, TrainingStage):
        raise ConfigError(f"stage '{container['stage']['name']}' ({type(stage).__name__}) is neither a RunOnceStage "
                          "(run_stage(run_dir)) nor a TrainingStage (a LightningModule with attach_data, "
                          "configure_model and export_trainable); see docs/plugins.md")  # fmt: skip
    if not once:  # a Lightning stage: data first (bad rows surface before the model)
        train, val = build_datasets(container, registry)
        datasets = (PadAware(train), val)  # the sampler's lock-step pads arrive marked (no loss)
        stage.attach_data(*datasets)
        for split, ds in zip(("train", "val"), datasets, strict=True):
            if ds is not None:
                data_summary[split] = {"rows": len(ds), "skipped": dict(getattr(ds, "skipped", {}) or {})}
                if split == "train" and callable(getattr(ds, "summary", None)):  # data=mixture: rows and weights
                    data_summary[split]["sources"] = ds.summary()
        strategy = container["trainer"].get("strategy")  # a DeepSpeed config, or a name like "ddp"
        # build now (width mismatches surface before any training), except under ZeRO-3 (built partitioned)
        if not isinstance(strategy, dict) or int(strategy.get("stage", 0)) != 3:
            with build_device(container["trainer"]):
                stage.configure_model()
    owner = launch_rank_is_zero()  # rank 0 (holding the lock) writes the folder's files; the others only read
    if resuming:  # the run's first config stays; what this resume changes goes to its history
        if owner:
            append_history(run_dir, "resume", checkpoint=str(ckpt), changes=changes)
    elif owner:
        OmegaConf.save(cfg, first, resolve=True)
        append_history(run_dir, "start", resumed_from=str(ckpt) if ckpt else None)
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
    prov["untrained_parts"] = untrained  # parts the stage expects trained that started untrained
    prov["parts"] = part_sources(model, int(container["seed"]))  # where each part's starting weights come from
    if owner and not resuming:  # the first start's provenance stays (resumes: history.jsonl)
        write_json_atomic(run_dir / "run.json", prov)
    if once:  # a stage that runs once, outside Lightning (e.g. reassemble)
        stage.run_stage(run_dir)
        log.info("run %s finished: %s", container["run"], run_dir)
        print("next:\n" + "\n".join(f"  {line}" for line in next_steps(container, run_dir)), flush=True)
        if untrained:
            log.warning("note: %s", untrained_note(container, untrained))
        return run_dir
    trainer = build_trainer(container, run_dir, resume_step=checkpoint_step(ckpt) if ckpt else None)
    t0 = time.perf_counter()
    trainer.fit(stage, ckpt_path=str(ckpt) if ckpt else None)
    t1 = time.perf_counter()
    stopped(trainer, container, run_dir)  # Ctrl-C / SIGTERM: checkpoint saved, no final weights, exit 128 + signal
    stage.export_trainable(trained_weights(run_dir))  # every rank: gathers under ZeRO-3
    position = getattr(stage, "position", None)
    if position is not None:  # every rank: the rows each skipped are gathered
        rows = skips_over_ranks(position.skipped, position.skipped_rows)[1]
        if owner and rows:
            record_training_skips(run_dir, data_summary, Counter(rows.values()))
        if owner and getattr(position, "last_sources", None):
            record_source_counts(run_dir, position.last_sources)
    log.info("set-up before fit %.1f s, fit %.1f s (checkpoints included), weights export %.1f s",
             t0 - started, t1 - t0, time.perf_counter() - t1)  # fmt: skip
    if trainer.is_global_zero:
        log.info("run %s finished: %s", container["run"], run_dir)
        print("next:\n" + "\n".join(f"  {line}" for line in next_steps(container, run_dir)), flush=True)
        if untrained:  # said again where the run's result is read
            log.warning("note: %s", untrained_note(container, untrained))
    return run_dir


def record_training_skips(run_dir: Path, data_summary: dict[str, Any], kinds: Mapping[str, int]) -> None:
    """Add the rows the training loader skipped on any rank (too long, undecodable; each once) to
    run.json's ``data.train.skipped``, beside the bad rows found when the data was read."""
    import json

    from r1v.runtime.runs import write_json_atomic

    path = run_dir / "run.json"
    if "train" not in data_summary or not path.is_file():
        return
    run = json.loads(path.read_text())
    run.setdefault("data", {}).setdefault("train", {})["skipped"] = dict(Counter(data_summary["train"]["skipped"])
                                                                         + Counter(kinds))  # fmt: skip
    write_json_atomic(path, run)


def record_source_counts(run_dir: Path, counts: Mapping[str, Any]) -> None:
    """data=mixture: each source's draws and passes over the whole run (resumes included) into run.json's
    ``data.train.sources``, beside its rows and weight."""
    import json

    from r1v.runtime.runs import write_json_atomic

    path = run_dir / "run.json"
    if not path.is_file():
        return
    run = json.loads(path.read_text())
    sources = run.setdefault("data", {}).setdefault("train", {}).setdefault("sources", {})
    for name, n in counts["samples"].items():
        sources.setdefault(name, {}).update(samples=int(n), epochs=int(counts["epochs"][name]))
    write_json_atomic(path, run)


def stopped(trainer: Any, cfg: dict[str, Any], run_dir: Path) -> None:
    """When a signal stopped the fit (:class:`r1v.runtime.stop.GracefulStop`): say where it stopped and how to go
    on, then exit with 128 + the signal number (the run is not finished: no final weights)."""
    import signal
    import sys

    from r1v.runtime.stop import GracefulStop

    stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
    if stop is None or stop.saved is None:
        return
    if trainer.is_global_zero:
        args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "run="))]
        command = " ".join([*args, f"run={cfg['run']}", "resume=auto"])
        sys.stdout.flush()
        name, saved = signal.Signals(stop.requested).name, os.path.relpath(stop.saved)
        sys.stderr.write(f"r1v: stopped by {name} at step {stop.step}; checkpoint {saved} saved. Continue with: "
                         f"python -m r1v.train {command}\n")  # fmt: skip
        sys.stderr.flush()
    for logger in trainer.loggers:
        logger.save()
    raise SystemExit(128 + int(stop.requested))


@hydra.main(config_path=conf_dir(), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        exit_on_user_error(run, cfg, run_dir)
    except SystemExit as e:
        if e.code:
            remove_if_empty(run_dir)
        raise


def remove_if_empty(run_dir: Path) -> None:
    """A run refused before it wrote anything leaves no folder behind (Hydra made it, with its log and
    ``.hydra/``, before the checks ran); a folder with anything else in it is left alone."""
    import shutil

    if run_dir.is_dir() and not {p.name for p in run_dir.iterdir()} - {".hydra", "train.log", "run.lock"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Register plugin configs, pre-check overrides (one-line errors), then hand over to Hydra."""
    # Varying batch shapes (packed lengths, rollouts, ZeRO-3 gathers) fragment the caching allocator: on the
    # H200 it held 28–33 GiB more than it had allocated. Expandable segments grow one mapping instead; the user's
    # own setting wins. Read when CUDA first allocates, so setting it here reaches every rank Lightning starts.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    hydra_entry(_hydra_main, "config", argv)


if __name__ == "__main__":
    main()
