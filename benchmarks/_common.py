"""What the benchmark scripts share: running ``python -m r1v.train`` quietly in a work folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

QUIET = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def train(cwd: Path, *args: str) -> None:
    """``python -m r1v.train <args>`` in ``cwd`` (offline, quiet); exits with its stderr tail on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "r1v.train", *args, *QUIET], cwd=cwd, env=env, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"failed: r1v.train {' '.join(args)}\n{proc.stderr[-3000:]}")
