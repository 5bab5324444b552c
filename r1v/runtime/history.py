"""A run folder's history: the config a run started with stays its ``config.yaml``; each resume appends its
command and what it changed to ``history.jsonl``. A resume that changes more than the run's length or its
logging is refused in one line naming the keys, unless ``allow_changes=true``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r1v.core.errors import RunError

HISTORY = "history.jsonl"
# keys a resume may change without allow_changes: how long the run goes on, and how it reports
FREE_KEYS = ("resume", "allow_changes", "stage.max_steps", "stage.epochs", "trainer.max_epochs", "logger",
             "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.enable_model_summary",
             "stage.log_every", "stage.completions_every", "stage.completions_prompts")  # fmt: skip


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two plain config trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]  # fmt: skip
    return [] if old == new else [prefix.rstrip(".")]


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, Mapping) else None
    return tree


def _free(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in FREE_KEYS)


def resume_changes(first: Mapping[str, Any], now: Mapping[str, Any], allow: bool, run_dir: Path) -> dict[str, list]:
    """``{key: [first value, new value]}`` for every key a resume changes; refused in one line when a key other
    than the run's length or logging changes and ``allow`` is false."""
    changes = {k: [_get(first, k), _get(now, k)] for k in changed_keys(dict(first), dict(now))}
    bound = [k for k in changes if not _free(k)]
    if bound and not allow:
        shown = "; ".join(f"{k}: {changes[k][0]!r} → {changes[k][1]!r}" for k in bound[:4])
        more = f" and {len(bound) - 4} more" if len(bound) > 4 else ""
        raise RunError(f"resume of {run_dir}: the config changed since the run started ({shown}{more}); only the "
                       "run's length (stage.max_steps) and logging may change on resume: resume with "
                       "allow_changes=true to go on with the new config, or start another run=<name>")  # fmt: skip
    return changes


def append_history(run_dir: Path, event: str, **fields: Any) -> None:
    """One line of ``<run>/history.jsonl``: when, what (start / resume), the command, and ``fields``."""
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "argv": sys.argv, **fields}
    with (run_dir / HISTORY).open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
