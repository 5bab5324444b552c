"""The outputs of ``benchmarks/fidelity.py``: the Markdown table (ours per stage and control beside R1V's Table 2,
the paired comparisons with their verdicts), the plot (held-out accuracy per stage with 95% intervals; the
paper's Table 2 in a second panel) and the section every seed's recipe report includes (``fidelity.md``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from fidelity_stats import Interval, fmt_interval

# R1V's Table 2 (MMMU val, %): after re-assembly, SFT, the last iterative-SFT round, GRPO (docs: r1v-recipe.md §2)
PAPER = {"reassemble": 60.2, "sft": 62.5, "iterative_sft": 65.6, "grpo": 69.0}
PLOTTED = ("reassemble", "sft", "iterative_sft", "grpo")
LABELS = {"align": "align (substitute LM)", "reassemble": "re-assembly", "sft": "SFT (DRLC chains)",
          "iterative_sft": "iterative SFT", "grpo": "GRPO"}  # fmt: skip
CONTROL_AT = {
    "fixed_penalty": "sft",
    "sft_extra": "iterative_sft",
    "sft_continued": "grpo",
    "iterative_gated": "iterative_sft",
}


def _iv(row: dict[str, Any]) -> Interval:
    return Interval(row["mean"], row["std"], row["n"], row["low"], row["high"], row.get("level", 0.95))


def control_labels(data: dict[str, Any]) -> dict[str, str]:
    """What each control row is, with its step counts (per seed when they differ)."""

    def steps(key: str) -> str:
        vals = sorted(set(data["steps"][key].values()))
        return str(vals[0]) if len(vals) == 1 else "/".join(map(str, vals))

    pens = sorted({round(p, 2) for p in data["drlc_penalty_mean"].values()})
    return {"sft_extra": f"control: SFT + {steps('iterative_steps')} plain SFT step(s) (= the iterative rounds')",
            "sft_continued": f"control: iterative SFT + {steps('grpo_steps')} SFT step(s) (= GRPO's)",
            "fixed_penalty": f"control: SFT on chains distilled at a fixed P = {'/'.join(map(str, pens))} "
                             "(DRLC's mean)",
            "iterative_gated": "arm: iterative SFT with its error set gated by the RM (a wrong answer enters with "
                               "score ≥ 2)",
            **{k: f"arm: GRPO at lr {k.removeprefix('grpo_lr')} (from iterative SFT, GRPO's steps)"
               for k in sorted(data["rows"]) if k.startswith("grpo_lr")}}  # fmt: skip


def selection_table(selection: dict[Any, Any]) -> list[str]:
    """What entered iterative SFT's rounds, per seed and round: R1V's error set beside the gated one."""
    if not selection:
        return []
    lines = ["", "| seed, round | pool accuracy | D_t: R1V (by score / as errors) | flawed chains in D_t: R1V | "
             "D_t: gated (wrong kept out) | flawed chains in D_t: gated |", "|---|---|---|---|---|---|"]  # fmt: skip

    def flawed(r: dict[str, Any]) -> str:
        f = {k: v for k, v in (r.get("flaws") or {}).items() if k != "none"}
        return f"{sum(f.values())} ({', '.join(f'{k} {v}' for k, v in sorted(f.items()))})" if f else "0"

    for seed, sel in selection.items():
        for rec, gated in zip(sel["recipe_rounds"], sel["rounds"], strict=False):
            lines.append(f"| {seed}, {rec['round']} | {rec['pool_accuracy']:.2f} | {rec['n_used']} ({rec['n_rm']} / "
                         f"{rec['n_wrong']}) | {flawed(rec)} | {gated['n_used']} ({gated['n_wrong_below_min_score']}) "
                         f"| {flawed(gated)} |")  # fmt: skip
    return lines


def render(data: dict[str, Any], image: str | None = "fidelity.png") -> str:
    """The Markdown section: per-stage table beside the paper, controls, comparisons."""
    rows, plan = data["rows"], data["plan"]
    n_q = plan["eval_limit"]
    lines = [f"Recipe `{plan['recipe']}`, data `{plan['data']}`{' (--quick: plumbing only)' if plan['quick'] else ''}"
             f", seeds {', '.join(map(str, data['seeds']))}; held-out `{plan['benchmark']}` ({n_q} questions, greedy "
             "pass@1, %): mean ± std [95% t-interval] across seeds.", "",
             "| stage / arm | ours | per seed | gain over the previous stage | R1V Table 2 (MMMU) | paper gain |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    prev = None
    for stage in ("align", *PLOTTED):
        if stage not in rows:
            continue
        r = rows[stage]
        per = ", ".join(f"{v:.1f}" for v in r["per_seed"].values())
        gain = f"{r['mean'] - rows[prev]['mean']:+.1f}" if prev and stage in PLOTTED and prev in rows else ""
        paper = f"{PAPER[stage]:.1f}" if stage in PAPER else "–"
        keys = list(PAPER)
        pgain = f"{PAPER[stage] - PAPER[keys[keys.index(stage) - 1]]:+.1f}" if stage in keys[1:] else ""
        lines.append(f"| {LABELS[stage]} | {fmt_interval(_iv(r))} | {per} | {gain} | {paper} | {pgain} |")
        prev = stage if stage in PLOTTED else prev
    for arm, label in control_labels(data).items():
        if arm in rows:
            r = rows[arm]
            per = ", ".join(f"{v:.1f}" for v in r["per_seed"].values())
            lines.append(f"| {label} | {fmt_interval(_iv(r))} | {per} | | | |")
    tokens = [k for k in ("drlc_chain_tokens", "fixed_chain_tokens", "drlc_response_tokens", "fixed_response_tokens")
              if k in rows]  # fmt: skip
    if tokens:
        lines += ["", "| length (tokens) | mean ± std [95% t-interval] | per seed |", "|---|---|---|"]
        for k in tokens:
            r = rows[k]
            what = ("distilled chains" if "chain" in k else "held-out responses after SFT") + \
                (" — DRLC" if k.startswith("drlc") else " — fixed penalty")  # fmt: skip
            per = ", ".join(f"{v:.1f}" for v in r["per_seed"].values())
            lines.append(f"| {what} | {fmt_interval(_iv(r))} | {per} |")
    lines += ["", "| comparison (arm − control, paired by seed) | difference: mean ± std [95% t-interval] | seeds "
              "| verdict |", "|---|---|---|---|"]  # fmt: skip
    for c in data["comparisons"]:
        lines.append(f"| {c['question']} | {fmt_interval(_iv(c['difference']))} | {len(c['seeds'])} | "
                     f"**{c['verdict']}** |")  # fmt: skip
    lines += selection_table(data.get("selection") or {})
    rms = data.get("reward_model") or {}
    if rms:  # --recipe r1v_hard: iterative SFT selected with the recipe's own process reward model
        acc = ", ".join(f"{v['val_pair_accuracy']:.2f}" if v.get("val_pair_accuracy") is not None else "–"
                        for v in rms.values())  # fmt: skip
        steps = "/".join(sorted({str(v["steps"]) for v in rms.values()}))
        lines += ["", f"Iterative SFT scored its chains with the recipe's process reward model ({steps} steps; "
                  f"held-out pair accuracy per seed {acc}), quantile-calibrated onto 0–5."]  # fmt: skip
        aucs = {s: v["auc"] for s, v in rms.items() if v.get("auc")}
        if aucs:  # issue 27's bar for reading a negative iterative-SFT result: flawed chains filterable at AUC ≥ 0.8
            kinds = list(next(iter(aucs.values())))
            lines += ["", "| reward model as a filter: AUC sound vs flawed, held-out chains | "
                      + " | ".join(f"seed {s}" for s in aucs) + " |", "|---|" + "---|" * len(aucs)]  # fmt: skip
            lines += [f"| {k} | " + " | ".join(f"{a[k]:.2f}" for a in aucs.values()) + " |" for k in kinds]
    lines += ["", "A verdict is *better*/*worse* when the paired difference's 95% interval excludes 0 (for lengths: "
              "*shorter* / *longer*); fewer than two seeds give no interval (*not distinguishable*)."]  # fmt: skip
    if image:
        lines += ["", f"![held-out accuracy per stage, R1V's Table 2 beside it]({image})"]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> bool:
    """Held-out accuracy per stage (mean, 95% interval bars, the controls as open markers) and R1V's Table 2 in a
    second panel. False when matplotlib is not installed (it is optional for the benchmarks)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    stages = [s for s in PLOTTED if s in rows]
    x = {s: i for i, s in enumerate(PLOTTED)}

    def half(r: dict[str, Any]) -> float:
        return 0.0 if r["high"] is None else r["high"] - r["mean"]

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    ax.errorbar([x[s] for s in stages], [rows[s]["mean"] for s in stages], yerr=[half(rows[s]) for s in stages],
                fmt="o-", capsize=4, label="R1V recipe")  # fmt: skip
    labels = control_labels(data)
    arms = (
        ("fixed_penalty", "s", 0.12),
        ("sft_extra", "D", 0.12),
        ("sft_continued", "^", 0.12),
        ("iterative_gated", "v", 0.24),
        *((k, "P", 0.24 + 0.12 * i) for i, k in enumerate(sorted(r for r in rows if r.startswith("grpo_lr")))),
    )
    for arm, marker, dx in arms:
        if arm in rows:
            r = rows[arm]
            at = x[CONTROL_AT.get(arm, "grpo")] + dx  # --grpo-lr arms beside GRPO
            ax.errorbar([at], [r["mean"]], yerr=[half(r)], fmt=marker, mfc="none", capsize=3,
                        label=labels[arm].removeprefix("control: "))  # fmt: skip
    ax.set_xticks(range(len(PLOTTED)), [LABELS[s] for s in PLOTTED], fontsize=8)
    ax.set_ylabel(f"held-out pass@1 (%), {data['plan']['benchmark']}")
    ax.set_title(f"ours: mean and 95% interval over {len(data['seeds'])} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="best")
    bx.plot(range(len(PLOTTED)), [PAPER[s] for s in PLOTTED], "o-", color="tab:gray")
    for i, s in enumerate(PLOTTED):
        bx.annotate(f"{PAPER[s]:.1f}", (i, PAPER[s]), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8)  # fmt: skip
    bx.set_xticks(range(len(PLOTTED)), [LABELS[s] for s in PLOTTED], fontsize=8)
    bx.set_ylabel("MMMU val (%)")
    bx.margins(y=0.15)
    bx.set_title("Skywork R1V 38B, Table 2", fontsize=9)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(out: Path, data: dict[str, Any], md: str, recipe_dirs: list[Path]) -> None:
    """``<out>/fidelity.{json,md,png}``, and in every seed's recipe folder ``fidelity.md`` + ``plots/fidelity.png``
    with its ``report.md`` rewritten to include them."""
    _write(out / "fidelity.json", json.dumps(data, indent=2) + "\n")
    has_png = plot(data, out / "fidelity.png")
    _write(out / "fidelity.md", md if has_png else render(data, image=None))
    from r1v.recipe import check_stages
    from r1v.reports.recipe import write_report

    for folder in recipe_dirs:
        if not (folder / "recipe.json").is_file():
            continue
        if has_png:
            (folder / "plots").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "fidelity.png", folder / "plots" / "fidelity.png")
        text = render(data, image="plots/fidelity.png" if has_png else None)
        _write(folder / "fidelity.md", "## Recipe fidelity across seeds (benchmarks/fidelity.py)\n\n" + text)
        state = json.loads((folder / "recipe.json").read_text())
        write_report(folder, state, check_stages(state["plan"]["recipe"]))
