"""Plots of training runs from their ``metrics.csv``: loss, reward parts, accuracy and response length
against the optimizer step, several runs overlaid. A reusable module (the recipe report and
``python -m r1v plot`` use it; an HTML report can too): :func:`read_metrics` → :func:`panels` →
:func:`plot_runs`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# panel name -> metric-name predicates (first match wins per metric), in display order
PANELS: dict[str, tuple[str, ...]] = {
    "loss": ("train/loss", "val/loss", "val/mpo_loss"),
    "reward": ("reward/",),
    "accuracy": ("val/accuracy", "eval/", "train/pair_accuracy", "val/pair_accuracy"),
    "response_length": ("completion/length_mean", "completion/length_max"),
}


@dataclass
class Series:
    run: str
    metric: str
    steps: list[float]
    values: list[float]


def read_metrics(run_dir: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """metric -> (steps, values) from ``<run>/metrics.csv`` (rows without the metric skipped)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"plot: {path} does not exist (runs log metrics.csv with logger=default or csv)")
    out: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, "") or not step:
                    continue
                try:
                    x, y = float(step), float(value)
                except ValueError:
                    continue
                if math.isfinite(y):
                    steps, values = out.setdefault(key, ([], []))
                    steps.append(x)
                    values.append(y)
    return out


def _in_panel(metric: str, prefixes: tuple[str, ...]) -> bool:
    if metric.endswith("_std") or metric.startswith("reward/failures"):
        return False
    return any(metric == p or (p.endswith("/") and metric.startswith(p)) for p in prefixes)


def panels(runs: dict[str, dict[str, tuple[list[float], list[float]]]]) -> dict[str, list[Series]]:
    """The series of every panel that has data, across runs."""
    out: dict[str, list[Series]] = {}
    for panel, prefixes in PANELS.items():
        series = [Series(run, m, *data) for run, metrics in runs.items() for m, data in sorted(metrics.items())
                  if _in_panel(m, prefixes)]  # fmt: skip
        if series:
            out[panel] = series
    return out


def smooth(values: list[float], frac: float = 0.05) -> list[float]:
    """Trailing mean over a window of ``frac`` of the series (at least 1 point): RL curves are noisy."""
    w = max(1, int(len(values) * frac))
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - w] if i >= w else 0.0)
        out.append(total / min(i + 1, w))
    return out


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """One PNG per panel (``<out>/<panel>.png``), every run's series overlaid; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(names) if names else [Path(r).name for r in run_dirs]
    data = {name: read_metrics(r) for name, r in zip(names, run_dirs, strict=True)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for panel, series in panels(data).items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for s in series:
            label = s.metric if len(data) == 1 else f"{s.run}: {s.metric}"
            if len(s.steps) < 15:  # sparse series (validation) get markers
                ax.plot(s.steps, s.values, "o-", label=label, markersize=3, linewidth=1.2)
                continue
            (line,) = ax.plot(s.steps, s.values, "-", linewidth=0.8, alpha=0.3)
            ax.plot(s.steps, smooth(s.values), "-", color=line.get_color(), label=f"{label} (smoothed)", linewidth=1.5)
        ax.set_xlabel("step (optimizer updates)")
        ax.set_title(panel.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"{panel}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
