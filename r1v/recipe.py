"""``python -m r1v.recipe recipe=r1v``: a whole pipeline as one declarative composition.

A recipe (``conf/recipe/*.yaml``) lists stages; each is one ``python -m r1v.train`` run with the stage's
``args``, started from an earlier stage's output (``from:`` → ``checkpoint=``); ``{name}`` in an argument
is that earlier stage's run folder (e.g. ``data.train={distill}/distilled.jsonl``). Every stage runs in
its own process, in ``<recipe folder>/<stage name>/``, and is evaluated afterwards when it produced weights
(``python -m r1v.eval``, the recipe's ``eval`` node) unless the stage says ``eval: false`` (weights that are
not a policy, such as a reward model's). ``recipe.json`` records the lineage (the resolved
arguments, checkpoint and data of every stage, its status, times and scores) and makes the recipe
resumable at stage granularity: ``resume=auto`` skips finished stages and resumes an interrupted one
from its own checkpoint. ``report.md`` (+ ``plots/``) is the per-stage table and the curves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from r1v.core.config import ConfigError, conf_dir, hydra_entry
from r1v.core.registry import did_you_mean, get_registry
from r1v.runtime.history import changed_keys
from r1v.runtime.runs import RunError, lock_run_folder, unlock_run_folder, write_json_atomic
from r1v.runtime.workers import die_with_parent

log = logging.getLogger("r1v.recipe")
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


def check_stages(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage list, validated before anything runs: unique names, ``from`` and ``{name}`` naming earlier
    stages, and a known ``stage=`` plugin in each (one line each, with "did you mean")."""
    stages = recipe.get("stages") or []
    if not stages:
        raise ConfigError(f"recipe {recipe.get('name')}: the stage list is empty")
    known = get_registry().names("stage")
    seen: list[str] = []
    for i, st in enumerate(stages):
        where = f"recipe {recipe['name']}: stage {i} ({st.get('name')})"
        name = st.get("name")
        if not name or name in seen:
            raise ConfigError(f"{where}: every stage needs a unique name")
        plugin = next((a.split("=", 1)[1] for a in st.get("args", []) if a.startswith("stage=")), None)
        if plugin is None:
            raise ConfigError(f"{where}: its args name no stage=<plugin> (known: {', '.join(known)})")
        if plugin not in known:
            raise ConfigError(
                f"{where}: unknown stage '{plugin}' (known: {', '.join(known)}){did_you_mean(plugin, known)}"
            )
        if not isinstance(st.get("eval", True), bool):
            raise ConfigError(f"{where}: eval is true or false (false: the stage's weights are not evaluated)")
        refs = [st["from"]] if st.get("from") else []
        refs += [m for a in st.get("args", []) for m in _PLACEHOLDER.findall(a)]
        for ref in refs:
            if ref not in seen:
                raise ConfigError(f"{where}: refers to '{ref}', which is not an earlier stage "
                                  f"(earlier: {', '.join(seen) or 'none'})")  # fmt: skip
        seen.append(name)
    return stages


def _stage_args(st: dict[str, Any], recipe: dict[str, Any], folder: Path, seed: int) -> list[str]:
    args = [_PLACEHOLDER.sub(lambda m: str(folder / m.group(1)), a) for a in st.get("args", [])]
    args += list((recipe.get("overrides") or {}).get(st["name"]) or [])
    if st.get("from"):
        args.append(f"checkpoint={folder / st['from']}")
    quiet = [] if any(a.startswith("logger=") for a in args) else ["logger=default"]  # a stage may pick its own
    return [*args, f"seed={seed}", f"paths.runs={folder}", f"run={st['name']}", *quiet,
            "trainer.enable_progress_bar=false"]  # fmt: skip


def _run(module: str, args: list[str], log_path: Path) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("a") as f:
        f.write(f"$ python -m {module} {' '.join(args)}\n")
        f.flush()
        # the stage dies with the recipe (kill -9 included): no orphan keeps training into the run folder
        return subprocess.run([sys.executable, "-m", module, *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env, preexec_fn=die_with_parent).returncode  # fmt: skip


def run_recipe(cfg: dict[str, Any]) -> Path:
    """Run (or resume) the recipe's stages in order. The recipe folder's ``run.lock`` is held throughout: a
    second recipe on the same folder is refused; each stage locks its own sub-folder, not this one."""
    recipe = cfg["recipe"]
    stages = check_stages(recipe)
    folder = (Path(cfg["paths"]["runs"]) / str(cfg["run"])).resolve()  # lineage holds absolute paths
    folder.mkdir(parents=True, exist_ok=True)
    lock_run_folder(folder)
    try:
        return _run_stages(cfg, recipe, stages, folder)
    finally:
        unlock_run_folder(folder)


def _run_stages(cfg: dict[str, Any], recipe: dict[str, Any], stages: list[dict[str, Any]], folder: Path) -> Path:
    state_path = folder / "recipe.json"
    plan = {"recipe": recipe, "seed": cfg["seed"]}
    if state_path.exists():
        if cfg.get("resume") is None:
            raise RunError(
                f"recipe folder {folder} exists; continue it with resume=auto or start another with run=<name>"
            )
        state = json.loads(state_path.read_text())
        changed = changed_keys(state["plan"], plan)
        if changed and not cfg.get("allow_changes"):
            raise RunError(f"recipe {folder}: the config changed since it started ({', '.join(changed[:6])}); "
                           "resume with allow_changes=true to go on with the new config (finished stages are "
                           "kept), or start another run=<name>")  # fmt: skip
        state["plan"] = plan
    else:
        state = {"plan": plan, "stages": {}}
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    for st in stages:
        name, rec = st["name"], state["stages"].get(st["name"]) or {}
        if rec.get("status") == "done":
            log.info("recipe: stage %s finished earlier; skipped", name)
            continue
        args = _stage_args(st, recipe, folder, int(cfg["seed"]))
        if (folder / name / "run.json").exists():  # interrupted: the stage resumes from its own checkpoint
            args += ["resume=auto", *(["allow_changes=true"] if cfg.get("allow_changes") else [])]
        rec = {"status": "running", "args": args, "checkpoint": str(folder / st["from"]) if st.get("from") else None,
               "data": [a for a in args if a.startswith("data")], "started": time.time()}  # fmt: skip
        state["stages"][name] = rec
        write_json_atomic(state_path, state)
        log.info("recipe: stage %s: python -m r1v.train %s", name, " ".join(args))
        code = _run("r1v.train", args, folder / "logs" / f"{name}.log")
        if code:
            rec["status"] = f"failed (exit {code})"
            write_json_atomic(state_path, state)
            tail = (folder / "logs" / f"{name}.log").read_text().strip().splitlines()[-1:]
            raise RunError(f"recipe stage {name} failed (exit {code}): {tail[0] if tail else ''} — full log "
                           f"{folder / 'logs' / (name + '.log')}; fix it and run again with resume=auto")  # fmt: skip
        ev = (recipe.get("eval") or {}) if st.get("eval", True) else {}  # eval: false (e.g. a reward model)
        rec["eval"] = evaluate_stage(folder / name, ev, folder / "logs" / f"{name}.log")
        rec.update(status="done", finished=time.time())
        write_json_atomic(state_path, state)
    from r1v.reports.recipe import write_report

    write_report(folder, state, stages)
    log.info("recipe %s finished: %s", recipe["name"], folder / "report.md")
    return folder


def evaluate_stage(run_dir: Path, ev: dict[str, Any], log_path: Path) -> dict[str, Any] | None:
    """Held-out score of a stage that produced weights (None for data-only stages such as distill)."""
    if not ev or not (run_dir / "final" / "trainable.safetensors").is_file():
        return None
    bench = str(ev.get("benchmark", "synthetic"))
    out = run_dir / "eval" / bench
    args = [f"checkpoint={run_dir}", f"benchmark={bench}", f"out={out}", *(ev.get("args") or [])]
    if ev.get("limit"):
        args.append(f"limit={ev['limit']}")
    if _run("r1v.eval", args, log_path):
        raise RunError(f"recipe: evaluating {run_dir} failed; see {log_path}")
    summary = json.loads((out / "summary.json").read_text())
    return {"benchmark": bench, "questions": summary["questions"], "pass@1": summary["pass@1"],
            "length_mean": (summary.get("length") or {}).get("mean"),
            "categories": {c: v["pass@1"] for c, v in (summary.get("categories") or {}).items()}}  # fmt: skip


@hydra.main(config_path=conf_dir(), config_name="recipe", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from r1v.core.errors import exit_on_user_error

    exit_on_user_error(run_recipe, OmegaConf.to_container(cfg, resolve=True))


def main(argv: list[str] | None = None) -> None:
    hydra_entry(_hydra_main, "recipe", argv)


if __name__ == "__main__":
    main()
