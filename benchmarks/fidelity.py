"""Recipe fidelity (issue 27): does each R1V stage earn its place against a control with the same training budget?

Per seed: the whole ``python -m r1v.recipe recipe=r1v`` (align → re-assemble → AL-CoTD distillation with DRLC →
SFT → iterative SFT → GRPO, each evaluated on the held-out set), then three controls built from the recipe's own
stage arguments (recipe.json) so that only the thing under test differs. ``--recipe r1v_hard`` runs the recipe
that also trains a process reward model after re-assembly (not evaluated: it is no policy) and lets iterative SFT
select with it instead of ``chain_rules``; it carries the hard regime itself (data and generation budgets).

* ``sft_extra`` — plain SFT from the SFT stage's weights on the SFT stage's chains for as many steps as the
  iterative rounds took (iterative.json): does iterative SFT's selection matter, or only the extra training?
* ``sft_continued`` — plain SFT from the iterative-SFT weights for as many steps as GRPO took: GRPO or just more
  supervised steps?
* ``iterative_gated`` — iterative SFT from the SFT stage again, its error set gated by the same reward model
  (``stage.errors.min_score``, GATE): R1V lets every wrong answer in whatever its chain, which at a pool accuracy of
  10–20% makes the error set most of D_t and lets the flawed chains past the filter; the same steps per round.
* ``fixed_penalty`` — the distillation again with a fixed repetition penalty equal to DRLC's measured mean
  (distill.json), then the SFT stage on those chains: DRLC against the same average pressure spread evenly
  (held-out accuracy and mean response tokens, plus the distilled chains' mean length).

Each (seed, arm) writes ``<out>/results/s<seed>/<arm>.json`` atomically; a rerun skips what exists and a killed
run goes on from the missing parts (the recipe with ``resume=auto``, the controls with ``resume=auto`` from their
own checkpoints). Statistics (benchmarks/fidelity_stats.py): mean, std and a 95% t-interval per stage and arm
across seeds; each comparison decided by the 95% t-interval of the paired difference. Writes
``<out>/fidelity.{json,md,png}`` and adds the table and plot to every seed's recipe report.

    python benchmarks/fidelity.py --seeds 0 1 2 3 4 --data synthetic_hard --results benchmarks/results
    python benchmarks/fidelity.py --seeds 0 --quick --out runs/fidelity-quick     # plumbing check, a few minutes
    python benchmarks/fidelity.py --recipe r1v_hard --seeds 0 1 2 3 4 --results benchmarks/results

Hours on 2 CPU cores (a script, not a test). ``--override STAGE=ARG`` appends ARG to one recipe stage's args.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fidelity_report import render, write_outputs  # benchmarks/ (scripts run as python benchmarks/<name>.py)
from fidelity_stats import BETTER, WORSE, paired, t_interval
from flaw_auc import flaw_aucs, held_out_chains, score_held_out

from r1v.runtime.workers import die_with_parent

STAGES = ("align", "reassemble", "sft", "iterative_sft", "grpo")
ARMS = ("recipe", "sft_extra", "sft_continued", "fixed_penalty", "iterative_gated", "rm_auc")
RM_AUC_QUESTIONS = 300  # held-out questions the recipe's reward model scores (sound + each flaw kind), as flaw_auc.py
# iterative_gated: a wrong answer enters D_t only with an RM score ≥ this (0–5, quantile-calibrated: the bottom third
# of the pool stays out). Chosen once, before any run of the arm; not tuned.
GATE = 2
GRPO_LR = "grpo_lr"  # arm-name prefix of --grpo-lr's GRPO runs
# the regime's stages: every stage that reads training questions takes the data option (align and re-assembly
# keep the default scenes: they stand for R1V's general alignment data)
DATA_STAGES = ("distill", "iterative_sft", "grpo")
# recipes that set the hard regime in their own stage args (data, generation budgets): nothing to add for them
HARD_RECIPES = ("r1v_hard",)
# fmt: off
QUICK = {  # a few steps per stage: the plumbing end to end in minutes
    "align": ["stage.max_steps=30", "stage.val_every=30", "stage.val_generate=8"],
    "reward_model": ["stage.max_steps=5", "stage.val_every=5", "data.n_train=64", "data.n_val=16"],
    "distill": ["distill.limit=48"],
    "sft": ["stage.max_steps=10", "stage.val_every=10", "stage.val_generate=8"],
    "iterative_sft": ["stage.taus=[3]", "stage.lrs=[5e-4]", "distill.limit=32", "stage.errors.pool=16",
                      "stage.max_steps_per_round=3", "stage.val_generate=8"],
    "grpo": ["stage.max_steps=2", "stage.val_every=2", "stage.val_generate=4", "stage.batch_size=4"],
}
# fmt: on
# generation budgets for data=synthetic_hard: its sound chains run 80–130 tokens (the recipe's 96/128 suit the default
# one-step scenes and would clip them); looping chains (210–280) are still cut, as R1V's 8k budget cuts real loops
HARD_BUDGET = {
    "distill": ["distill.max_new_tokens=160"],
    "sft": ["stage.max_new_tokens=160"],
    "iterative_sft": ["distill.max_new_tokens=160", "stage.errors.max_new_tokens=160", "stage.max_new_tokens=160"],
    "grpo": ["stage.max_new_tokens=160"],
}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` to ``path`` atomically (a temporary file, then os.replace): a kill leaves the old file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def set_arg(args: list[str], key: str, value: Any) -> list[str]:
    """``args`` without any ``key=…`` / ``+key=…`` and with ``key=value`` appended."""
    kept = [a for a in args if not a.lstrip("+").startswith(f"{key}=")]
    return [*kept, f"{key}={value}"]


def python_m(module: str, args: list[str], cwd: Path, log: Path) -> None:
    """``python -m module args`` in ``cwd``, offline, output appended to ``log``; exits with its tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("a") as f:
        f.write(f"\n$ python -m {module} {' '.join(args)}\n")
        f.flush()
        # the run dies with this script (kill -9 included): no orphan keeps training into a folder of --out
        code = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=f,
                              stderr=subprocess.STDOUT, preexec_fn=die_with_parent).returncode  # fmt: skip
    if code:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"failed (exit {code}): python -m {module} {' '.join(args)}\n{tail}\nfull log: {log}")


class Seed:
    """One seed's work: its recipe folder, its controls' folder and its result files."""

    def __init__(self, seed: int, out: Path, plan: dict[str, Any], grpo_lrs: tuple[str, ...] = ()) -> None:
        self.seed, self.out, self.plan = seed, out, plan
        self.arms = (*ARMS, *(f"{GRPO_LR}{lr}" for lr in grpo_lrs))  # --grpo-lr: GRPO again at other learning rates
        self.recipe_dir = out / "runs" / f"s{seed}"
        self.controls = out / "runs" / f"s{seed}-controls"
        self.results = out / "results" / f"s{seed}"
        self.log = out / "logs" / f"s{seed}.log"

    def result(self, arm: str) -> dict[str, Any] | None:
        """The arm's finished result, or None when it has not finished."""
        path = self.results / f"{arm}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def state(self) -> dict[str, Any]:
        """The recipe's lineage (recipe.json): every stage's resolved arguments, status and evaluation."""
        return json.loads((self.recipe_dir / "recipe.json").read_text())

    # -- the recipe ------------------------------------------------------------------------------------------

    def recipe_args(self) -> list[str]:
        """``python -m r1v.recipe`` arguments: seed, folder, evaluation, per-stage overrides (quick, data, ...)."""
        p = self.plan
        overrides: dict[str, list[str]] = {s: list(QUICK.get(s, [])) if p["quick"] else [] for s in QUICK}
        if p["data"] != "synthetic" and p["recipe"] not in HARD_RECIPES:
            for s in DATA_STAGES:
                overrides[s].append(f"data={p['data']}")
            for s, budget in HARD_BUDGET.items():
                overrides[s] += budget
        for stage, arg in p["overrides"]:
            overrides.setdefault(stage, []).append(arg)
        quote = "'{}'".format
        args = [f"recipe={p['recipe']}", f"seed={self.seed}", f"paths.runs={self.recipe_dir.parent}",
                f"run={self.recipe_dir.name}", f"recipe.eval.benchmark={p['benchmark']}",
                f"recipe.eval.limit={p['eval_limit']}",
                "recipe.eval.args=[" + ",".join(quote(a) for a in p["eval_args"]) + "]"]  # fmt: skip
        args += [f"+recipe.overrides.{s}=[{','.join(quote(a) for a in v)}]" for s, v in overrides.items() if v]
        if (self.recipe_dir / "recipe.json").is_file():
            args.append("resume=auto")  # finished stages are skipped, an interrupted one resumes
        return args

    def run_recipe(self) -> dict[str, Any]:
        """Run (or resume) the recipe; its held-out scores per stage and the budgets the controls match."""
        python_m("r1v.recipe", self.recipe_args(), self.out, self.log)
        state = self.state()
        stages = state["stages"]
        evals = {n: stages[n]["eval"] for n in STAGES if n in stages and stages[n].get("eval")}
        rounds = json.loads((self.recipe_dir / "iterative_sft" / "iterative.json").read_text())["rounds"]
        distill = json.loads((self.recipe_dir / "distill" / "distill.json").read_text())
        rm = {"reward_model": reward_model_facts(self.recipe_dir / "reward_model")} if "reward_model" in stages else {}
        return {**rm, "evals": evals, "iterative_steps": sum(int(r["steps"]) for r in rounds),
                "iterative_rounds": [{k: r.get(k) for k in ("round", "tau", "steps", "n_used", "n_rm", "n_wrong")}
                                     for r in rounds],
                "grpo_steps": grpo_steps(self.recipe_dir / "grpo", stages["grpo"]["args"]),
                "drlc_penalty_mean": distill["repetition_penalty"]["mean"],
                "drlc_chain_tokens": distill["completion_tokens"]["mean"]}  # fmt: skip

    # -- the controls ----------------------------------------------------------------------------------------

    def stage_args(self, name: str, run: str, **changes: Any) -> list[str]:
        """The recipe stage's own arguments, re-aimed at a control run folder with ``changes``."""
        args = [a for a in self.state()["stages"][name]["args"] if not a.startswith(("resume=", "allow_changes="))]
        args = set_arg(set_arg(args, "paths.runs", self.controls), "run", run)
        for key, value in changes.items():
            args = set_arg(args, key.replace("__", "."), value)
        return [*args, "resume=auto"]  # a killed control continues from its own checkpoint (or starts over)

    def train_and_eval(self, run: str, args: list[str]) -> dict[str, Any]:
        """Train a control (unless its final weights exist) and evaluate it as the recipe evaluates its stages."""
        run_dir = self.controls / run
        if not (run_dir / "final" / "trainable.safetensors").is_file():
            python_m("r1v.train", args, self.out, self.log)
        from r1v.recipe import evaluate_stage

        ev = evaluate_stage(run_dir, self.state()["plan"]["recipe"]["eval"], self.log)
        if ev is None:
            raise SystemExit(f"{run_dir}: no trained weights to evaluate")
        return ev

    def sft_extra(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Control (a): plain SFT from the SFT stage for as many steps as the iterative rounds took."""
        n = max(int(rec["iterative_steps"]), 1)
        args = self.stage_args("sft", "sft_extra", checkpoint=self.recipe_dir / "sft", stage__max_steps=n,
                               stage__val_every=n)  # fmt: skip
        return {"eval": self.train_and_eval("sft_extra", args), "steps": n, "from": "sft"}

    def sft_continued(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Control (b): SFT from the iterative-SFT weights for as many steps as GRPO took."""
        n = max(int(rec["grpo_steps"]), 1)
        args = self.stage_args("sft", "sft_continued", checkpoint=self.recipe_dir / "iterative_sft",
                               stage__max_steps=n, stage__val_every=n)  # fmt: skip
        return {"eval": self.train_and_eval("sft_continued", args), "steps": n, "from": "iterative_sft"}

    def fixed_penalty(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Control (c): distil at a fixed penalty equal to DRLC's mean, then the SFT stage on those chains."""
        p = round(float(rec["drlc_penalty_mean"]), 4)
        chains = self.controls / "fixed_distill" / "distill.json"
        if not chains.is_file():
            args = self.stage_args("distill", "fixed_distill", distill__length__name="fixed")
            python_m("r1v.train", [*args, f"+distill.length.repetition_penalty={p}"], self.out, self.log)
        distill = json.loads(chains.read_text())
        train = self.controls / "fixed_distill" / "distilled.jsonl"
        args = self.stage_args("sft", "fixed_sft", data__train=train)
        return {"eval": self.train_and_eval("fixed_sft", args), "penalty": p,
                "chain_tokens": distill["completion_tokens"]["mean"],
                "penalty_measured": distill["repetition_penalty"]["mean"]}  # fmt: skip

    def iterative_gated(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Arm: iterative SFT from the SFT stage with the error set gated by the reward model (GATE), each round
        capped at the recipe's longest round so the training budget matches (epochs repeat a smaller D_t)."""
        cap = max(int(r["steps"]) for r in rec["iterative_rounds"])
        args = self.stage_args("iterative_sft", "iterative_gated", checkpoint=self.recipe_dir / "sft",
                               stage__errors__min_score=GATE, stage__epochs_per_round=4,
                               stage__max_steps_per_round=cap)  # fmt: skip
        ev = self.train_and_eval("iterative_gated", args)
        return {"eval": ev, "min_score": GATE, "rounds": selection_facts(self.controls / "iterative_gated"),
                "recipe_rounds": selection_facts(self.recipe_dir / "iterative_sft")}  # fmt: skip

    def rm_auc(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The recipe's own reward model as a filter (issue 27's bar: AUC ≥ 0.8): flaw_auc.py's paired held-out
        chains scored by it; per flaw kind the AUC of sound against flawed (ties half)."""
        rm_run = self.recipe_dir / "reward_model"
        if "reward_model" not in rec:
            return {"skipped": "the recipe trains no reward model"}
        raw = score_held_out(rm_run, held_out_chains(RM_AUC_QUESTIONS, self.seed))
        return {"questions": RM_AUC_QUESTIONS, "auc": flaw_aucs(raw)}

    def grpo_at(self, lr: str) -> dict[str, Any]:
        """Arm ``grpo_lr<lr>``: the recipe's GRPO stage again from the iterative-SFT weights at another learning
        rate, every other argument its own (the tuning sweep: compared with continued SFT like the recipe's)."""
        run = f"{GRPO_LR}{lr}"
        return {"eval": self.train_and_eval(run, self.stage_args("grpo", run, stage__lr=lr)), "lr": lr}

    def run(self) -> dict[str, dict[str, Any]]:
        """Every arm of this seed, each skipped when its result file exists."""
        out: dict[str, dict[str, Any]] = {}
        for arm in self.arms:
            res = self.result(arm)
            if res is None:
                start = time.perf_counter()
                if arm == "recipe":
                    res = self.run_recipe()
                elif arm.startswith(GRPO_LR):
                    res = self.grpo_at(arm.removeprefix(GRPO_LR))
                else:
                    res = getattr(self, arm)(out["recipe"])
                res["minutes"] = round((time.perf_counter() - start) / 60, 2)
                write_json(self.results / f"{arm}.json", res)
                print(f"seed {self.seed}: {arm} done in {res['minutes']} min", flush=True)
            else:
                print(f"seed {self.seed}: {arm} found ({self.results / (arm + '.json')}); skipped", flush=True)
            out[arm] = res
        return out


def selection_facts(run_dir: Path) -> list[dict[str, Any]]:
    """Per round of an iterative-SFT run: its steps and what entered D_t (selection.json): pool accuracy, samples
    by score and as errors, wrong answers kept out by the gate, and the data set's chains per flaw kind."""
    steps = {int(r["round"]): r["steps"] for r in json.loads((run_dir / "iterative.json").read_text())["rounds"]}
    keys = ("n_used", "n_rm", "n_wrong", "n_wrong_below_min_score", "pool", "pool_accuracy", "flaws")
    out = []
    for t in sorted(steps):
        sel = json.loads((run_dir / "rounds" / f"round{t}" / "selection.json").read_text())
        out.append({"round": t, "tau": sel["tau"], "steps": steps[t], **{k: sel.get(k) for k in keys}})
    return out


def reward_model_facts(run_dir: Path) -> dict[str, Any]:
    """The recipe's reward model (``--recipe r1v_hard``): its optimizer steps and last held-out pair accuracy."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    acc = [float(r["val/pair_accuracy"]) for r in rows if r.get("val/pair_accuracy")]
    steps = {r["step"] for r in rows if r.get("train/loss") and r.get("step")}
    return {"steps": len(steps), "val_pair_accuracy": acc[-1] if acc else None}


def grpo_steps(run_dir: Path, args: list[str]) -> int:
    """Optimizer steps GRPO took: distinct steps logged with a training loss in metrics.csv (else its max_steps)."""
    path = run_dir / "metrics.csv"
    if path.is_file():
        with path.open() as f:
            steps = {r["step"] for r in csv.DictReader(f) if r.get("train/loss") and r.get("step")}
        if steps:
            return len(steps)
    return int(next(a.split("=", 1)[1] for a in reversed(args) if a.startswith("stage.max_steps=")))


def per_seed_values(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[int, float]]:
    """Held-out pass@1 per row (stage of the recipe, or control) and seed, plus the token measures of DRLC arms."""
    rows: dict[str, dict[int, float]] = {}
    for seed, arms in results.items():
        rec = arms["recipe"]
        for stage in STAGES:
            if stage in rec["evals"]:
                rows.setdefault(stage, {})[seed] = rec["evals"][stage]["pass@1"]
        for arm in (
            "sft_extra",
            "sft_continued",
            "fixed_penalty",
            "iterative_gated",
            *sorted(a for a in arms if a.startswith(GRPO_LR)),
        ):
            if arm in arms:
                rows.setdefault(arm, {})[seed] = arms[arm]["eval"]["pass@1"]
        if "fixed_penalty" in arms and "sft" in rec["evals"]:
            fp = arms["fixed_penalty"]
            rows.setdefault("drlc_response_tokens", {})[seed] = rec["evals"]["sft"]["length_mean"]
            rows.setdefault("fixed_response_tokens", {})[seed] = fp["eval"]["length_mean"]
            rows.setdefault("drlc_chain_tokens", {})[seed] = rec["drlc_chain_tokens"]
            rows.setdefault("fixed_chain_tokens", {})[seed] = fp["chain_tokens"]
    return rows


COMPARISONS = (  # (question, arm row, control row, higher is better)
    ("iterative SFT vs the same steps of plain SFT", "iterative_sft", "sft_extra", True),
    ("iterative SFT, error set gated by the RM, vs the same steps of plain SFT", "iterative_gated", "sft_extra", True),
    ("iterative SFT, error set gated by the RM, vs R1V's error set", "iterative_gated", "iterative_sft", True),
    ("GRPO vs the same steps of continued SFT", "grpo", "sft_continued", True),
    ("DRLC vs a fixed penalty at its mean: accuracy after SFT", "sft", "fixed_penalty", True),
    ("DRLC vs fixed: held-out response tokens", "drlc_response_tokens", "fixed_response_tokens", False),
    ("DRLC vs fixed: distilled chain tokens", "drlc_chain_tokens", "fixed_chain_tokens", False),
)


def statistics(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per row: the t-interval across seeds; per comparison: the paired difference's interval and its verdict."""
    rows = per_seed_values(results)
    summary = {name: {"per_seed": vals, **t_interval(list(vals.values())).as_dict()} for name, vals in rows.items()}
    comps = []
    lrs = sorted({a for arms in results.values() for a in arms if a.startswith(GRPO_LR)})
    extra = [(f"GRPO at lr {a.removeprefix(GRPO_LR)} vs the same steps of continued SFT", a, "sft_continued", True)
             for a in lrs]  # fmt: skip
    for question, arm, control, higher in (*COMPARISONS, *extra):
        if arm in rows and control in rows:
            comp = paired(arm, control, rows[arm], rows[control], higher_is_better=higher).as_dict()
            if not higher:  # a length: DRLC is meant to be shorter on easy questions, not "better" per se
                comp["verdict"] = {BETTER: "shorter", WORSE: "longer"}.get(comp["verdict"], comp["verdict"])
            comps.append({"question": question, **comp})
    steps = {k: {s: results[s]["recipe"][k] for s in results} for k in ("iterative_steps", "grpo_steps")}
    penalty = {s: results[s]["recipe"]["drlc_penalty_mean"] for s in results}
    out = {"rows": summary, "comparisons": comps, "steps": steps, "drlc_penalty_mean": penalty}
    gated = {s: {k: results[s]["iterative_gated"][k] for k in ("rounds", "recipe_rounds")}
             for s in results if "iterative_gated" in results[s]}  # fmt: skip
    if gated:
        out["selection"] = gated
    rms = {s: {**results[s]["recipe"]["reward_model"], **({"auc": results[s]["rm_auc"]["auc"]}
                                                          if "auc" in results[s].get("rm_auc", {}) else {})}
           for s in results if results[s]["recipe"].get("reward_model")}  # fmt: skip
    return {**out, "reward_model": rms} if rms else out


def learning_rate(text: str) -> str:
    """``--grpo-lr``'s values: a positive number, kept as written (it names the arm, ``grpo_lr<text>``)."""
    try:
        ok = float(text) > 0
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive learning rate (e.g. 1e-3)")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--data", choices=["synthetic_hard", "synthetic"], default="synthetic_hard")
    ap.add_argument("--recipe", default="r1v")
    ap.add_argument("--out", type=Path, default=None, help="default runs/fidelity-<data>[-quick]")
    ap.add_argument("--results", type=Path, default=None, help="also copy fidelity.{json,md,png} here")
    ap.add_argument("--quick", action="store_true", help="a few steps per stage: checks the plumbing")
    ap.add_argument("--eval-limit", type=int, default=None, help="held-out questions (default 1000; quick 32)")
    ap.add_argument("--eval-max-new-tokens", type=int, default=256)
    ap.add_argument("--grpo-lr", nargs="*", default=[], metavar="LR", type=learning_rate,
                    help="also GRPO from the iterative-SFT weights at these lrs (arms grpo_lr<LR>)")  # fmt: skip
    ap.add_argument("--override", action="append", default=[], metavar="STAGE=ARG",
                    help="append ARG to one recipe stage's args, e.g. grpo=stage.max_steps=200")  # fmt: skip
    a = ap.parse_args()
    if a.recipe in HARD_RECIPES and a.data != "synthetic_hard":
        raise SystemExit(f"--recipe {a.recipe} trains on data=synthetic_hard itself; use --data synthetic_hard")
    out = (a.out or Path(f"runs/fidelity-{a.data}{'-quick' if a.quick else ''}")).resolve()
    limit = a.eval_limit or (32 if a.quick else 1000)
    eval_args = [f"max_new_tokens={a.eval_max_new_tokens}", "batch_size=32"]
    if a.data == "synthetic":  # the bundled benchmark holds 128 questions unless told more
        eval_args.append(f"+benchmark_knobs.n={limit}")
    plan = {"recipe": a.recipe, "data": a.data, "quick": a.quick, "benchmark": a.data, "eval_limit": limit,
            "eval_args": eval_args, "overrides": [tuple(o.split("=", 1)) for o in a.override]}  # fmt: skip
    bad = [o for o in plan["overrides"] if len(o) != 2]
    if bad:
        raise SystemExit(f"--override {bad[0][0]}: use STAGE=ARG, e.g. grpo=stage.max_steps=200")
    plan_file = out / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != json.loads(json.dumps(plan)):
        raise SystemExit(f"{out} was started with another plan ({plan_file}); use another --out")
    write_json(plan_file, plan)
    results = {seed: Seed(seed, out, plan, tuple(a.grpo_lr)).run() for seed in a.seeds}
    stats = statistics(results)
    data = {"plan": plan, "seeds": a.seeds, **stats, "per_seed": results}
    md = render(data)
    write_outputs(out, data, md, [Seed(s, out, plan).recipe_dir for s in a.seeds])
    if a.results:
        a.results.mkdir(parents=True, exist_ok=True)
        name = f"fidelity_{a.data}{'_quick' if a.quick else ''}"
        for ext in ("json", "png"):
            if (out / f"fidelity.{ext}").is_file():
                shutil.copyfile(out / f"fidelity.{ext}", a.results / f"{name}.{ext}")
        has_png = (a.results / f"{name}.png").is_file()
        (a.results / f"{name}.md").write_text(render(data, image=f"{name}.png" if has_png else None))
    print("\n" + md)


if __name__ == "__main__":
    main()
