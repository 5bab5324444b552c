"""``python -m r1v.eval checkpoint=<run or weights> benchmark=<name> [path=…] [n_samples=5] [k=[1,5]]``:
evaluate a model on a benchmark with R1V's prompts; writes ``samples.jsonl`` and ``summary.json`` and
prints a table. See conf/eval.yaml for every option."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from r1v.core.config import ConfigError, conf_dir, hydra_entry, register_resolvers
from r1v.core.registry import get_registry

log = logging.getLogger("r1v.eval")


def eval_out(checkpoint: str | None, out: str | None, benchmark: str) -> str:
    """Where an evaluation writes its results and its log (``eval.log``, Hydra's job log: conf/eval.yaml sets
    ``hydra.run.dir`` to this): ``out``, else ``<the checkpoint's run folder>/eval/<benchmark>``, else
    ``eval/<benchmark>``."""
    if out:
        return str(out)
    from r1v.model.load import run_folder_of

    base = (run_folder_of(checkpoint) if checkpoint else None) or Path(".")
    return str(base / "eval" / str(benchmark))


register_resolvers()  # the composed config names the run by ${r1v_run_name:…}
if not OmegaConf.has_resolver("r1v_eval_out"):
    OmegaConf.register_new_resolver("r1v_eval_out", eval_out)


def run_eval(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    from r1v.core.config import build_plugin
    from r1v.evaluation.harness import evaluate, table
    from r1v.generation.choose import choose_engine
    from r1v.model.load import autocast, load_for_inference, stage_device

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
    model, processor, cfg = load_for_inference(cfg, overrides)
    greedy = n == 1
    knobs = {} if greedy else {"temperature": float(cfg["temperature"]), "top_p": float(cfg["top_p"])}
    engine, _ = choose_engine(model, "hf", **knobs)  # transformers' generate: the reference decoding for scores
    out = Path(eval_out(cfg.get("checkpoint"), cfg.get("out"), str(cfg["benchmark"])))
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

    from r1v.core.errors import exit_on_user_error

    exit_on_user_error(run_eval, OmegaConf.to_container(cfg, resolve=True), list(HydraConfig.get().overrides.task))


def main(argv: list[str] | None = None) -> None:
    hydra_entry(_hydra_main, "eval", argv)


if __name__ == "__main__":
    main()
