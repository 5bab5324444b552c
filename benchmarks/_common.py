"""What the benchmark scripts share: running ``python -m r1v.train`` quietly in a work folder, and reporting
figures as JSON."""

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


# CUDA kernel classes by name (profiler keys, lower-cased), first match wins; the rest is "other".
# Attention comes before GEMM: FlashAttention's kernel names carry "cutlass" in their template arguments.
KERNEL_CLASSES = (
    ("attention", ("attention", "fmha", "flash", "efficient")),
    ("gemm", ("gemm", "gemv", "matmul", "cutlass", "sm90_xmma", "nvjet")),
    ("sampling", ("sort", "scan", "cumsum", "exponential", "argmax", "radix")),
    ("optimizer", ("multi_tensor", "adam")),
    ("norm", ("rms", "layer_norm", "norm_")),
    ("softmax / loss", ("softmax", "cross_entropy", "nll_loss", "logsumexp")),
)


def kernel_class(name: str, other: str = "other") -> str:
    """The class of one CUDA kernel, by substrings of its name (see KERNEL_CLASSES)."""
    name = name.lower()
    return next((cls for cls, keys in KERNEL_CLASSES if any(k in name for k in keys)), other)


def emit(result: dict, out: Path | None) -> None:
    """Print a script's figures as JSON and, with ``--out``, write them there too (folders made)."""
    import json

    print(json.dumps(result, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
