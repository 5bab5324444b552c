"""Triton kernels on the CPU: their tests run through triton's interpreter, which reads ``TRITON_INTERPRET`` when
a kernel is decorated (its own library functions included), so it must be set before triton is first imported.
A test module's ``test_kernels_under_the_interpreter`` calls :func:`run_interpreted`: its ``interp_`` tests run in a
fresh pytest process with the variable set (in this process they skip unless it is set already)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(test_file: str) -> None:
    """Run ``test_file``'s ``interp_`` tests under the interpreter in a fresh process; they must all pass (none
    skipped). Skips where this is the interpreter process, or where triton is not installed."""
    if INTERPRETED:
        pytest.skip("this is the interpreter process")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist",
                           str(Path(test_file).resolve().relative_to(ROOT)), "-k", "interp_"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
