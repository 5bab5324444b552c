"""Are the flawed chains of ``data=synthetic_hard`` filterable? (issue 27's precondition for reading a negative
iterative-SFT result.)

The tiny reward model is trained as the recipe trains one — align → re-assemble → ``stage=reward_model`` on
preference pairs, here ``data=synthetic_hard_pairs`` (chosen: a question's sound chain; rejected: the same
question's chain with one flaw; both end in the right answer) — and then scores held-out chains (the ``test``
split: questions and images it never saw) through the ``trained_reward_model`` scorer, the plugin
``stage=iterative_sft`` would use (``stage.rm.scorer.name=trained_reward_model stage.rm.scorer.path=<rm>``).
For each held-out question the sound chain and one chain of every flaw kind are scored (a paired design), the raw scores
are mapped onto R1V's 0–5 scale by ``rm.calibration=quantile`` over a pool with the configured flaw shares (what
iterative SFT would do), and the script reports, per flaw kind, the AUC of sound against flawed (the probability
that a sound chain outscores a flawed one; ties count half) on the raw and the 0–5 scores, and what each τ of
R1V's schedule keeps.

    python benchmarks/flaw_auc.py --seed 0 --steps 300        (about 10 minutes on 2 CPU cores)

``--objective process`` trains the process (step-level) reward model instead: ``stage.objective=process
stage.head.pool=steps`` (binary cross-entropy per step end against the pairs' step labels; a chain scores as its
soft-worst step).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import train  # benchmarks/_common.py (scripts run as python benchmarks/<name>.py)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a positive outscores a negative), ties half: the Mann-Whitney U statistic over |pos|·|neg| (by hand:
    sklearn is not a dependency)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def flaw_aucs(scores: dict[str, list[float]]) -> dict[str, float]:
    """Scores per kind (``none``: the sound chains) -> the AUC of sound against each flaw kind and against all
    flawed chains together (``all``), rounded to 4 places."""
    sound, flawed = scores["none"], {k: v for k, v in scores.items() if k != "none"}
    aucs = {k: round(auc(sound, v), 4) for k, v in flawed.items()}
    return {**aucs, "all": round(auc(sound, [x for v in flawed.values() for x in v]), 4)}


def held_out_chains(n: int, seed: int) -> dict[str, list]:
    """``n`` held-out questions (the ``test`` split), each as its sound chain (``none``) and once per flaw kind."""
    from r1v.data.synthetic_hard import FLAWS, SyntheticHard

    data = SyntheticHard(n, "test", seed)
    return {kind: [data._sample(i, data.item(i, force_flaw=kind)) for i in range(n)] for kind in ("none", *FLAWS)}


def score_held_out(rm_run: Path, chains: dict[str, list]) -> dict[str, list[float]]:
    """Raw reward-model scores of the held-out chains, per kind, in order."""
    from r1v.core.config import build_plugin
    from r1v.core.registry import get_registry

    scorer = build_plugin(get_registry(), "scorer", {"name": "trained_reward_model", "path": str(rm_run)}, "flaw_auc")
    return {kind: scorer.score(samples, None) for kind, samples in chains.items()}


def baseline_scores(start: Path, chains: dict[str, list]) -> dict[str, dict[str, list[float]]]:
    """The untrained stand-ins iterative SFT offers, on the same chains: ``chain_rules`` (0–5 rule checks) and
    ``model_likelihood`` (the re-assembled model's own mean log-likelihood of the chain, with the image)."""
    from r1v.core.config import compose
    from r1v.core.interfaces import ScoreContext
    from r1v.core.registry import get_registry
    from r1v.model.load import inference_model

    reg = get_registry()
    model, processor = inference_model(compose(["model=tiny_reasoner", f"checkpoint={start}"]))
    ctx = ScoreContext(model, processor)
    out: dict[str, dict[str, list[float]]] = {"chain_rules": {}, "model_likelihood": {}}
    for name in out:
        scorer = reg.build("scorer", name)
        for kind, samples in chains.items():
            out[name][kind] = [v for i in range(0, len(samples), 32) for v in scorer.score(samples[i : i + 32], ctx)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="reward-model optimizer steps (8 pairs each)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=300, help="held-out questions (each scored sound + once per flaw)")
    ap.add_argument("--baselines", action="store_true", help="also chain_rules and model_likelihood's AUC")
    ap.add_argument("--objective", choices=("pairwise", "process"), default="pairwise",
                    help="the reward model's training signal (process: per-step labels, pool=steps)")  # fmt: skip
    ap.add_argument("--rm-args", nargs="*", default=[], help="more reward-model overrides (data.flaws.loop=0 …)")
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--rm-run", type=Path, default=None,
                    help="score with this trained reward model (a run folder, e.g. a recipe's reward_model "
                         "stage) instead of training one; --steps, --lr, --objective, --rm-args go unused")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flaw_auc.json"))
    args = ap.parse_args()
    import numpy as np

    from r1v.data.synthetic_hard import DEFAULT_FLAWS, FLAWS, pick_flaw
    from r1v.evaluation.sample_scores import calibrate

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="r1v-flaw-auc-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        s = f"seed={args.seed}"
        rm_run = args.rm_run or work / "runs/rm"
        if args.rm_run is not None:
            if not (rm_run / "metrics.csv").is_file():
                raise SystemExit(f"--rm-run {rm_run}: no metrics.csv there (not a reward_model run folder)")
            if args.baselines:
                raise SystemExit("--baselines needs the re-assembled model of a trained run; leave out --rm-run")
        elif not (work / "runs/re/final").exists():
            train(work, "run=align", s)
            train(work, "stage=reassemble", "model=tiny_reasoner", "checkpoint=runs/align", "run=re", s)
        if args.rm_run is None:
            objective = ["stage.objective=process", "stage.head.pool=steps"] if args.objective == "process" else []
            shutil.rmtree(rm_run, ignore_errors=True)  # a kept work folder: the reward model is retrained
            train(work, "stage=reward_model", "model=tiny_reasoner", "checkpoint=runs/re", "data=synthetic_hard_pairs",
                  "data.n_val=128", "run=rm", s, f"stage.lr={args.lr}", f"stage.max_steps={args.steps}",
                  f"stage.val_every={args.steps}", "stage.ckpt_every=0", *objective, *args.rm_args)  # fmt: skip
        rows = list(csv.DictReader((rm_run / "metrics.csv").open()))
        val_pair_accuracy = [float(r["val/pair_accuracy"]) for r in rows if r.get("val/pair_accuracy")][-1]
        trained_s = time.time() - t0
        chains = held_out_chains(args.n, args.seed)
        raw = score_held_out(rm_run, chains)
        baselines = baseline_scores(work / "runs/re", chains) if args.baselines else {}
    # The pool iterative SFT would score: each question's chain flawed at the default shares; its quantiles set
    # the 0–5 cut points, applied to every scored chain.
    kinds = [pick_flaw(random.Random(f"flaw_auc/{args.seed}/{i}").random(), DEFAULT_FLAWS) for i in range(args.n)]
    pool = [raw[k][i] for i, k in enumerate(kinds)]
    pool_scaled = calibrate(pool, "quantile", "trained_reward_model", [str(i) for i in range(args.n)])
    cuts = [float(np.quantile(pool, q)) for q in (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6)]  # calibrate's cut points
    scaled = {k: [float(sum(v >= c for c in cuts)) for v in vs] for k, vs in raw.items()}
    result: dict[str, object] = {
        "seed": args.seed, "rm_run": str(args.rm_run) if args.rm_run else None,
        "objective": args.objective, "rm_args": args.rm_args, "steps": args.steps, "lr": args.lr,
        "held_out_questions": args.n,
        "rm_val_pair_accuracy": val_pair_accuracy, "train_s": round(trained_s, 1),
        "auc_raw": flaw_aucs(raw), "auc_0_5": flaw_aucs(scaled),
        "mean_raw": {k: round(sum(v) / len(v), 4) for k, v in raw.items()},
        "kept_at_tau": {str(tau): {k: round(sum(pool_scaled[i] >= tau for i in range(args.n) if kinds[i] == k) /
                                            max(1, kinds.count(k)), 3) for k in ("none", *FLAWS)}
                        for tau in (2, 3, 4, 5)},
    }  # fmt: skip
    result["baselines_auc"] = {name: {k: round(auc(b["none"], b[k]), 4) for k in FLAWS}
                               for name, b in baselines.items()}  # fmt: skip
    result["wall_s"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("\n| flaw kind | AUC (raw score) | AUC (0–5 score) |\n|---|---|---|")
    for k in (*FLAWS, "all"):
        print(f"| {k} | {result['auc_raw'][k]:.3f} | {result['auc_0_5'][k]:.3f} |")  # type: ignore[index]


if __name__ == "__main__":
    main()
