"""``python -m r1v.eval checkpoint=<run or weights> benchmark=<name> [path=…] [n_samples=5] [k=[1,5]]``:
evaluate a model on a benchmark with R1V's prompts; writes ``samples.jsonl`` and ``summary.json`` and
prints a table. See conf/eval.yaml for every option."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import r1v.train  # noqa: F401  (registers the run-name resolver the composed config uses)
from r1v.config import ConfigError, conf_dir, hydra_entry
from r1v.registry import get_registry

log = logging.getLogger("r1v.eval")
PART_GROUPS = ("model", "vision", "adapter", "backbone")


def run_folder_of(checkpoint: str) -> Path | None:
    """The run folder a checkpoint belongs to (itself, or a parent of ``final/…`` / ``checkpoints/…``)."""
    p = Path(str(checkpoint))
    for cand in [p, *p.parents][:3]:
        if (cand / "config.yaml").is_file() and (cand / "run.json").is_file():
            return cand
    return None


def trained_model(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The model node to evaluate: the checkpoint run's own composition, or the configured one when model
    overrides are given — refused in one line when it names other parts than the checkpoint was trained with."""
    ckpt = cfg.get("checkpoint")
    folder = run_folder_of(ckpt) if ckpt else None
    if folder is None:  # bare weights: the configured composition (a shape mismatch is one line when loading)
        return cfg["model"]
    run_cfg = folder / "config.yaml"
    trained = OmegaConf.to_container(OmegaConf.load(run_cfg), resolve=True)["model"]
    if not any(o.lstrip("+~").split("=")[0].split(".")[0] in PART_GROUPS for o in overrides):
        return trained

    def parts(m: dict[str, Any]) -> dict[str, Any]:
        return {"internvl": m["internvl"]} if m.get("internvl") else {p: m[p]["name"] for p in PART_GROUPS[1:]}

    if parts(trained) != parts(cfg["model"]):
        diff = [f"{k}: {v} (checkpoint) vs {parts(cfg['model']).get(k)} (config)" for k, v in parts(trained).items()
                if parts(cfg["model"]).get(k) != v]  # fmt: skip
        raise ConfigError(f"checkpoint {ckpt} was trained with another composition ({'; '.join(diff)}); drop the "
                          "model overrides to use the checkpoint's own, or evaluate a matching checkpoint")  # fmt: skip
    return cfg["model"]


def run_eval(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    from r1v.config import build_plugin
    from r1v.evaluation.harness import evaluate, table
    from r1v.stages.common import autocast, inference_model, stage_device

    registry = get_registry()
    knobs = {"path": cfg.get("path"), "limit": cfg.get("limit"), **(cfg.get("benchmark_knobs") or {})}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    items = build_plugin(registry, "benchmark", {"name": cfg["benchmark"], **knobs}, f"benchmark={cfg['benchmark']}")
    if not items:
        raise ConfigError(f"benchmark={cfg['benchmark']}: no questions (limit={cfg.get('limit')})")
    n = int(cfg["n_samples"])
    ks = [int(k) for k in (cfg["k"] if isinstance(cfg["k"], list | tuple) else [cfg["k"]])]
    from r1v.evaluation.scoring import PROMPT_STYLES

    if cfg["prompt"] not in PROMPT_STYLES:
        raise ConfigError(f"prompt={cfg['prompt']}: not a prompt style (use {', '.join(PROMPT_STYLES)})")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ConfigError(f"k={ks}: pass@{bad[0]} needs 1 ≤ k ≤ n_samples={n}; raise n_samples or drop it")
    from r1v.evaluation.judge import build_judge

    judge = build_judge(cfg.get("judge"))  # an unreachable endpoint stops here, before any generation
    cfg = {**cfg, "model": trained_model(cfg, overrides)}
    model, processor = inference_model(cfg)
    greedy = n == 1
    engine = registry.build("rollout", "hf", **({} if greedy else {"temperature": float(cfg["temperature"]),
                                                                   "top_p": float(cfg["top_p"])}))  # fmt: skip
    ckpt = cfg.get("checkpoint")
    base = (run_folder_of(ckpt) if ckpt else None) or Path(".")
    out = Path(cfg["out"]) if cfg.get("out") else base / "eval" / str(cfg["benchmark"])
    with autocast(cfg, stage_device(cfg)):
        summary = evaluate(model, processor, engine, items, out, n_samples=n, ks=ks,
                           max_new_tokens=int(cfg["max_new_tokens"]), batch_size=int(cfg["batch_size"]),
                           greedy=greedy, name=str(cfg["benchmark"]), prompt=str(cfg["prompt"]),
                           judge=judge)  # fmt: skip
    print(table(summary))
    print(f"\nsamples: {out / 'samples.jsonl'}\nsummary: {out / 'summary.json'}")
    return summary


@hydra.main(config_path=conf_dir(), config_name="eval", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from r1v.train import exit_on_user_error

    exit_on_user_error(run_eval, OmegaConf.to_container(cfg, resolve=True), list(HydraConfig.get().overrides.task))


def main(argv: list[str] | None = None) -> None:
    hydra_entry(_hydra_main, "eval", argv)


if __name__ == "__main__":
    main()
