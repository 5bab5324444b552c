"""The recipe report: ``report.md`` with the per-stage table (held-out score after each stage, what each
stage ended with) and PNG curves per stage (:mod:`r1v.reports.plots`), plus the held-out score across stages."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

from r1v.reports.plots import plot_runs, read_metrics

# stage summary files (data-only stages) -> the fields worth a column
STAGE_FILES = {"distill.json": ("samples", "kept", "revised", "dropped"), "pairs.json": ("prompts", "pairs"),
               "iterative.json": ("rounds",)}  # fmt: skip


def stage_facts(run_dir: Path) -> dict[str, Any]:
    """What a stage ended with: last train loss, last val accuracy, mean reward over the last tenth of
    the steps, and the counts of data-only stages."""
    facts: dict[str, Any] = {}
    try:
        metrics = read_metrics(run_dir)
    except FileNotFoundError:
        metrics = {}
    if metrics.get("train/loss"):
        facts["train loss"] = round(metrics["train/loss"][1][-1], 3)
    if metrics.get("val/accuracy"):
        facts["val accuracy"] = round(metrics["val/accuracy"][1][-1], 3)
    for key in ("reward/accuracy", "reward/total"):
        if metrics.get(key):
            vals = metrics[key][1]
            tenth = vals[-max(1, len(vals) // 10) :]
            facts[f"{key} (last 10%)"] = round(mean(tenth), 3)
    for name, fields in STAGE_FILES.items():
        path = run_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            for f in fields:
                if f in data:
                    facts[f] = len(data[f]) if isinstance(data[f], list) else data[f]
    rounds = list(run_dir.glob("rounds/round*"))  # iterative SFT
    if rounds:
        facts.setdefault("rounds", len(rounds))
    return facts


def category_table(state: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    """Held-out pass@1 per benchmark category (task) after each evaluated stage, when the benchmark has several."""
    evals = [(st["name"], state["stages"].get(st["name"], {}).get("eval") or {}) for st in stages]
    evals = [(name, ev["categories"]) for name, ev in evals if len(ev.get("categories") or {}) > 1]
    if not evals:
        return []
    cats = sorted({c for _, cs in evals for c in cs})
    return ["", "Held-out pass@1 per category:", "", f"| stage | {' | '.join(cats)} |",
            f"|---|{'---|' * len(cats)}",
            *(f"| {name} | " + " | ".join(f"{cs[c]:.1f}" if c in cs else "–" for c in cats) + " |"
              for name, cs in evals)]  # fmt: skip


def write_report(folder: Path, state: dict[str, Any], stages: list[dict[str, Any]]) -> Path:
    """``<folder>/report.md`` and ``<folder>/plots/<stage>/*.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipe = state["plan"]["recipe"]
    lines = [f"# Recipe `{recipe['name']}` — {folder.name}", "",
             f"Seed {state['plan']['seed']}. Each stage is one `python -m r1v.train` run in its folder; "
             "`recipe.json` has the exact arguments, checkpoints and data.", "",
             "| # | stage | started from | held-out pass@1 | ended with | run folder |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    scores: list[tuple[str, float]] = []
    plots: list[str] = []
    for i, st in enumerate(stages):
        rec = state["stages"].get(st["name"], {})
        ev = rec.get("eval")
        score = f"{ev['pass@1']:.1f} ({ev['benchmark']}, {ev['questions']})" if ev else "–"
        if ev:
            scores.append((st["name"], ev["pass@1"]))
        run_dir = folder / st["name"]
        facts = ", ".join(f"{k} {v}" for k, v in stage_facts(run_dir).items()) or rec.get("status", "")
        lines.append(f"| {i + 1} | {st['name']} | {st.get('from') or '–'} | {score} | {facts} | `{st['name']}/` |")
        runs = (
            [run_dir]
            if (run_dir / "metrics.csv").is_file()
            else sorted(r for r in run_dir.glob("rounds/round*") if (r / "metrics.csv").is_file())
        )  # iterative: rounds
        if runs:
            names = [st["name"]] if runs == [run_dir] else [r.name for r in runs]
            for png in plot_runs(runs, folder / "plots" / st["name"], names):
                plots.append(f"![{st['name']} {png.stem}](plots/{st['name']}/{png.name})")
    lines += category_table(state, stages)
    if scores:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([s for s, _ in scores], [v for _, v in scores], "o-")
        ax.set_ylabel("held-out pass@1 (%)")
        ax.set_title(f"recipe {recipe['name']}: held-out score after each stage")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / "plots" / "stages.png", dpi=110)
        plt.close(fig)
        lines += ["", "![held-out score after each stage](plots/stages.png)"]
    extra = folder / "fidelity.md"  # benchmarks/fidelity.py: the recipe across seeds, against its controls
    if extra.is_file():
        lines += ["", extra.read_text().rstrip()]
    lines += ["", "## Curves per stage", "", *plots, ""]
    path = folder / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
