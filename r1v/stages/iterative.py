"""``stage=iterative_sft``: R1V's hybrid-optimisation stage 2, T rounds of SFT on changing subsets.

Round t (τ_t from ``stage.taus``, learning rate from ``stage.lrs``) trains on

    D_t = {samples whose reward-model score ≥ τ_t}  ∪  E_{t−1}

where E_{t−1} is the set of pool samples the previous round's model (round 1: ``checkpoint=``)
answers wrongly — found by generating and checking the extracted answer with math-verify. Scores
come from the ``stage.rm.scorer`` plugin on R1V's 0–5 scale (``stage.rm.calibration=quantile`` maps
unbounded scorers onto it, see :mod:`r1v.evaluation.sample_scores`). With ``stage.redistill=true`` the chains are
re-distilled (AL-CoTD, the ``distill`` config) with the current model before each round and re-scored.

Layout of ``runs/<run>/``::

    iterative.json              finished rounds (τ, lr, counts, held-out accuracy, weights) — resume point
    rm_scores.jsonl             raw and calibrated scores (per round under rounds/ when re-distilling)
    rounds/round<t>/            a complete SFT run: metrics.csv, checkpoints/, final/trainable.safetensors,
                                selection.json and lineage.jsonl (every sample used, and why),
                                predictions.jsonl (E_{t−1}: what the previous model answered)
    final/trainable.safetensors the last finished round's weights (``checkpoint=<run>`` starts from it)

``resume=auto`` skips finished rounds and continues an unfinished one from its last checkpoint, on
the selection it recorded. A round with nothing to train on ends the run cleanly with one line.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r1v.core.config import ConfigError, build_plugin
from r1v.core.interfaces import ScoreContext
from r1v.core.registry import get_registry
from r1v.data.datasets import OverlayDataset
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.evaluation.sample_scores import batches as chunks
from r1v.evaluation.sample_scores import calibrate, run_scorer
from r1v.model.load import autocast, stage_device
from r1v.runtime.faults import maybe_die
from r1v.runtime.runs import (
    RunError,
    check_checkpoint,
    checkpoint_dir,
    checkpoint_step,
    trained_weights,
    write_json_atomic,
)

log = logging.getLogger(__name__)
STATE = "iterative.json"


def check_config(stage: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    taus, lrs = [float(t) for t in stage["taus"]], [float(x) for x in stage["lrs"]]
    if not taus:
        raise ConfigError("stage.taus is empty: give one reward-model threshold (0–5) per round, e.g. [2,3,4,5]")
    if len(lrs) != len(taus):
        raise ConfigError(f"stage.lrs has {len(lrs)} values for {len(taus)} rounds (stage.taus); "
                          "give one learning rate per round")  # fmt: skip
    bad = [t for t in taus if not 0 <= t <= 5]
    if bad:
        raise ConfigError(f"stage.taus: {bad[0]:g} is outside R1V's 0–5 reward-model scale")
    return taus, lrs


def admission(score: float | None, tau: float, wrong: bool, min_error_score: float | None = None) -> list[str]:
    """Why a pool sample enters D_t = {RM ≥ τ} ∪ E_{t−1} (empty: it does not).

    ``wrong``: the previous model answered it wrongly. ``min_error_score`` (``stage.errors.min_score``) lets a
    wrong answer in only with an RM score at least that; None admits every one, as R1V does. A sample the
    scorer failed on has ``score`` None: it can enter only as an error, and not when a minimum is set.
    """
    reasons = [f"rm_score>={tau:g}"] if score is not None and score >= tau else []
    if wrong and (min_error_score is None or (score is not None and score >= min_error_score)):
        reasons.append("wrong_in_previous_round")
    return reasons


class IterativeSFT:
    """Runs once, outside Lightning's loop, and fits one Lightning SFT run per round."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)
        self.stage = dict(cfg["stage"])

    # -- the rounds ----------------------------------------------------------------------------------
    def run_stage(self, run_dir: Path) -> dict[str, Any]:
        from r1v.data.build import build_datasets
        from r1v.stages.distill import build_plugins
        from r1v.stages.sft import SFTStage

        taus, lrs = check_config(self.stage)
        state = self._load_state(run_dir)
        reg = get_registry()
        rm_node = self._rm_node = dict(self.stage["rm"])
        rm = self._rm = build_plugin(reg, "scorer", rm_node["scorer"], "stage.rm.scorer")
        calibration = str(rm_node.get("calibration", "none"))
        self._scores: dict[str, Any] | None = None
        if getattr(rm, "scale", "0-5") == "unbounded" and calibration == "none":
            raise ConfigError(f"stage.rm.scorer '{rm_node['scorer']['name']}' gives unbounded scores; set "
                              "stage.rm.calibration=quantile to map them onto R1V's 0–5 scale")  # fmt: skip
        distill_plugins = build_plugins(self.cfg["distill"]) if self.stage.get("redistill") else None
        train, val = build_datasets(self.cfg, reg)
        pool_n = self.stage["errors"].get("pool")
        pool = list(range(len(train) if pool_n is None else min(int(pool_n), len(train))))
        # One model for the whole run: each round trains it in place; selection uses it in between.
        holder = SFTStage(self._round_cfg(1, lrs[0], 1))
        holder.configure_model()  # loads checkpoint= (the start)
        model, processor = holder.model, holder.processor
        from r1v.generation.choose import fastest_engine

        engine = fastest_engine(model)[0]  # static KV cache + CUDA graphs where the backbone allows, else hf
        ctx = ScoreContext(model, processor, engine, int(self.stage["errors"]["max_new_tokens"]),
                           int(self.stage["errors"].get("batch_size", 32)))  # fmt: skip
        finished = {int(r["round"]): r for r in state["rounds"]}
        device = stage_device(self.cfg)
        prev: str | None = self.cfg.get("checkpoint")
        for t, (tau, lr) in enumerate(zip(taus, lrs, strict=True), 1):
            rdir = run_dir / "rounds" / f"round{t}"
            if t in finished:
                prev = str(trained_weights(rdir))
                continue
            if prev and t > 1:
                from r1v.model.load import load_trainable

                load_trainable(model, prev)  # the previous round's weights (matters after a resume)
            model.to(device).eval()
            selection = self._load_selection(rdir)
            if selection is None:
                with autocast(self.cfg, device):
                    selection = self._prepare(t, tau, train, pool, ctx, distill_plugins, run_dir, rdir)
            if not selection["indices"]:
                wrong = "the error set is off (stage.errors.enabled)"
                if self.stage["errors"].get("enabled", True):
                    wrong = f"the previous model answered all {len(pool)} pool samples correctly"
                msg = (f"iterative_sft: round {t} is empty: no sample scored ≥ τ={tau:g} and {wrong}; "
                       f"stopping after {t - 1} rounds")  # fmt: skip
                log.warning(msg)
                print(msg, flush=True)
                state["stopped"] = msg
                write_json_atomic(run_dir / STATE, state)
                break
            summary = self._train_round(t, lr, len(selection["indices"]), rdir, train, val, selection, holder)
            summary.update(round=t, tau=tau, lr=lr, **{k: selection.get(k) for k in ("n_used", "n_rm", "n_wrong",
                           "n_wrong_below_min_score", "pool_accuracy", "n_no_chain", "flaws")})  # fmt: skip
            state["rounds"].append(summary)
            write_json_atomic(run_dir / STATE, state)
            log.info("iterative_sft: round %d (τ=%g, lr=%g): %d samples (%d by score, %d wrong before); "
                     "held-out accuracy %s", t, tau, lr, selection["n_used"], selection["n_rm"], selection["n_wrong"],
                     summary.get("val_accuracy"))  # fmt: skip
            prev = str(trained_weights(rdir))
            maybe_die("between_rounds", t)
        if state["rounds"]:
            last = trained_weights(run_dir / "rounds" / f"round{state['rounds'][-1]['round']}")
            out = trained_weights(run_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp")
            shutil.copyfile(last, tmp)
            tmp.replace(out)
        return state

    def _prepare(self, t: int, tau: float, train: Any, pool: list[int], ctx: ScoreContext, distill_plugins: Any,
                 run_dir: Path, rdir: Path) -> dict[str, Any]:  # fmt: skip
        """Re-distil (optional), score with the reward model, find the previous model's errors, select."""
        chains: dict[int, str] = {}
        if distill_plugins is not None:
            from r1v.stages.distill import distill

            dcfg = self.cfg["distill"]
            dctx = ScoreContext(ctx.model, ctx.processor, distill_plugins.engine, int(dcfg["max_new_tokens"]),
                                int(dcfg["batch_size"]))  # fmt: skip
            chains = distill(train, pool, dctx, distill_plugins, dcfg, rdir / "distill").chains()
        data = OverlayDataset(train, pool, chains)
        if distill_plugins is not None or self._scores is None:  # a fixed reward model scores a data set once
            cache = (rdir if distill_plugins is not None else run_dir) / "rm_scores.jsonl"
            self._scores = self._rm_scores(data, pool, ctx, cache)
        return self._select(t, tau, data, pool, chains, self._scores, ctx, rdir)

    def _round_cfg(self, t: int, lr: float, max_steps: int) -> dict[str, Any]:
        stage = {**self.stage, "name": "sft", "lr": lr, "max_steps": max_steps,
                 "val_every": min(int(self.stage.get("val_every") or max_steps), max_steps),
                 "ckpt_every": min(int(self.stage.get("ckpt_every") or max_steps), max_steps)}  # fmt: skip
        return {**self.cfg, "stage": stage}

    def _train_round(self, t: int, lr: float, n: int, rdir: Path, train: Any, val: Any, selection: dict[str, Any],
                     holder: Any) -> dict[str, Any]:  # fmt: skip
        from r1v.data.sampler import PadAware
        from r1v.stages.setup import build_trainer
        from r1v.stages.sft import SFTStage

        steps_per_epoch = math.ceil(n / int(self.stage["batch_size"]))
        steps = steps_per_epoch * int(self.stage["epochs_per_round"])
        if self.stage.get("max_steps_per_round"):
            steps = min(steps, int(self.stage["max_steps_per_round"]))
        cfg = self._round_cfg(t, lr, steps)
        module = SFTStage(cfg)
        module.model, module.processor, module.trainable = holder.model, holder.processor, holder.trainable
        chains = {int(k): v for k, v in selection.get("chains", {}).items()}
        module.attach_data(PadAware(OverlayDataset(train, selection["indices"], chains)), val)  # lock-step pads marked
        last = checkpoint_dir(rdir) / "last.ckpt"
        ckpt = check_checkpoint(last) if last.exists() else None
        trainer = build_trainer(cfg, rdir, resume_step=checkpoint_step(ckpt) if ckpt else None)
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
        module.export_trainable(trained_weights(rdir))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        return {"steps": steps, "val_accuracy": metrics.get("val/accuracy"), "val_loss": metrics.get("val/loss"),
                "weights": str(trained_weights(rdir))}  # fmt: skip

    # -- selection -----------------------------------------------------------------------------------
    def _rm_scores(self, data: OverlayDataset, pool: list[int], ctx: ScoreContext, cache: Path) -> dict[str, Any]:
        """Raw and calibrated reward-model scores of the pool (read back from ``cache`` when present)."""
        rm, rm_node = self._rm, self._rm_node
        calibration = str(rm_node.get("calibration", "none"))
        if cache.exists():
            rows = [json.loads(x) for x in cache.read_text().splitlines() if x.strip()]
            return {"raw": {r["index"]: r["raw"] for r in rows}, "score": {r["index"]: r["score"] for r in rows},
                    "failures": sum(r["raw"] is None for r in rows)}  # fmt: skip
        failures: Counter[str] = Counter()
        name = str(rm_node["scorer"]["name"])
        policy = "error" if rm_node.get("on_error") == "error" else "keep"  # keep: a failed sample has no score
        raw: list[float | None] = []
        ids: list[str] = []
        for chunk in chunks(list(range(len(pool))), ctx.batch_size):
            samples = [data[k] for k in chunk]
            ids += [s.id for s in samples]
            with_chain = [s for s in samples if s.reasoning]
            values = iter(run_scorer(name, rm, with_chain, ctx, failures, policy) if with_chain else [])
            raw += [next(values) if s.reasoning else None for s in samples]
        score = calibrate(raw, calibration, name, ids, rm_node.get("quantiles") or (1 / 6, 2 / 6, 0.5, 4 / 6, 5 / 6))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        with tmp.open("w") as f:
            for k, i in enumerate(pool):
                f.write(json.dumps({"index": i, "id": ids[k], "raw": raw[k], "score": score[k]}) + "\n")
        tmp.replace(cache)
        if failures:
            log.warning("iterative_sft: reward model %s failed on %d samples (they are not selected by score)", name,
                        sum(failures.values()))  # fmt: skip
        return {"raw": dict(zip(pool, raw, strict=True)), "score": dict(zip(pool, score, strict=True)),
                "failures": sum(failures.values())}  # fmt: skip

    def _select(self, t: int, tau: float, data: OverlayDataset, pool: list[int], chains: dict[int, str],
                scores: Mapping[str, Any], ctx: ScoreContext, rdir: Path) -> dict[str, Any]:  # fmt: skip
        """D_t = {score ≥ τ} ∪ E_{t−1}; writes predictions.jsonl, lineage.jsonl and selection.json."""
        rdir.mkdir(parents=True, exist_ok=True)
        errors = self.stage["errors"]
        predictions: dict[int, dict[str, Any]] = {}
        if errors.get("enabled", True):
            for chunk in chunks(list(range(len(pool))), ctx.batch_size):
                samples = [data[k] for k in chunk]
                texts = ctx.engine.generate(ctx.model, ctx.processor, samples, ctx.max_new_tokens,
                                            greedy=bool(errors.get("greedy", True)))  # fmt: skip
                for k, s, text in zip(chunk, samples, texts, strict=True):
                    pred = extract_answer(text)
                    predictions[pool[k]] = {"id": s.id, "predicted": pred, "correct": equivalent(pred, s.answer)}
            _write_jsonl(rdir / "predictions.jsonl", [{"index": i, **p} for i, p in predictions.items()])
        lineage, used, no_chain = [], [], 0
        flaw_counts: Counter[str] = Counter()
        n_rm = n_wrong = n_wrong_out = 0
        # R1V admits every wrong answer; where the model is wrong on most of the pool that bypasses the filter
        min_error_score = None if errors.get("min_score") is None else float(errors["min_score"])
        for k, i in enumerate(pool):
            score = scores["score"].get(i)
            wrong = i in predictions and not predictions[i]["correct"]
            reasons = admission(score, tau, wrong, min_error_score)
            n_wrong_out += wrong and "wrong_in_previous_round" not in reasons
            if not reasons:
                continue
            sample = data[k]
            if not sample.reasoning:  # nothing to train on with target=reasoning
                no_chain += 1
                continue
            n_rm += "rm_score" in reasons[0]
            n_wrong += "wrong_in_previous_round" in reasons
            used.append(i)
            lineage.append({"index": i, "id": sample.id, "reasons": reasons, "rm_score": score,
                            "rm_raw": scores["raw"].get(i), "previous_answer": predictions.get(i, {}).get("predicted"),
                            "chain": "redistilled" if i in chains else "original"})  # fmt: skip
            if "flaw" in sample.meta and i not in chains:  # a labelled pool (data=synthetic_hard): what τ let in
                lineage[-1]["flaw"] = sample.meta["flaw"]
                flaw_counts[sample.meta["flaw"]] += 1
        _write_jsonl(rdir / "lineage.jsonl", lineage)
        correct = [p["correct"] for p in predictions.values()]
        selection = {"round": t, "tau": tau, "indices": used, "n_used": len(used), "n_rm": n_rm, "n_wrong": n_wrong,
                     "n_wrong_below_min_score": n_wrong_out, "n_no_chain": no_chain, "pool": len(pool),
                     "pool_accuracy": sum(correct) / len(correct) if correct else None,
                     "chains": {str(i): c for i, c in chains.items() if i in set(used)}}  # fmt: skip
        if flaw_counts:  # chains per flaw kind in D_t (none = sound): the evidence that τ filters them
            selection["flaws"] = dict(flaw_counts)
        write_json_atomic(rdir / "selection.json", selection)
        return selection

    # -- state ---------------------------------------------------------------------------------------
    def _load_state(self, run_dir: Path) -> dict[str, Any]:
        path = run_dir / STATE
        if not path.exists():
            return {"rounds": []}
        state = json.loads(path.read_text())
        if self.cfg.get("resume") is None and (state["rounds"] or state.get("stopped")):
            raise RunError(f"run folder {run_dir} already has {len(state['rounds'])} finished rounds; continue it "
                           "with resume=auto or start a new one with run=<new name>")  # fmt: skip
        return state

    @staticmethod
    def _load_selection(rdir: Path) -> dict[str, Any] | None:
        path = rdir / "selection.json"
        return json.loads(path.read_text()) if path.exists() else None


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)
