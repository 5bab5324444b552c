"""Shared fixtures: offline hub, the registry, the tiny model, and one trained default run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one compute thread per worker (and per training subprocess). Two processes
    # with two spinning OpenMP threads each on two cores ran GRPO steps 30× slower than one thread each.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600,
            module: str = "r1v.train") -> subprocess.CompletedProcess:  # fmt: skip
    """``python -m <module> args`` in ``cwd``; returns the completed process (text output)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``r1v: error:`` line of a run refused as a user error: exit status 2, no traceback, and exactly one
    such line (the contract of every user error); returned for the test to check its text."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("r1v: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def held_out_accuracy(model, processor, registry, n: int = 32) -> float:
    """Greedy accuracy on the first ``n`` synthetic validation questions (answers checked as in training)."""
    from r1v.data.synthetic import generate
    from r1v.evaluation.answers import equivalent, extract_answer

    samples = [generate(i, "val")[0] for i in range(n)]
    texts = registry.build("rollout", "hf").generate(model, processor, samples, max_new_tokens=100, greedy=True)
    return sum(equivalent(extract_answer(t), s.answer) for t, s in zip(texts, samples, strict=True)) / n


@pytest.fixture(scope="session")
def registry():
    from r1v.core.registry import get_registry

    return get_registry()


@pytest.fixture(scope="session")
def compose():
    """compose(*overrides) -> resolved plain-dict config (the same tree r1v.train builds)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from r1v.core.config import register_resolvers

    register_resolvers()
    from r1v.core.config import conf_dir, register_plugin_configs
    from r1v.core.registry import get_registry

    register_plugin_configs(get_registry())

    def _compose(*overrides: str) -> dict:
        from r1v.core.config import plugin_knob_overrides

        overrides = tuple(plugin_knob_overrides(list(overrides)))  # as python -m r1v.train does
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=conf_dir(), version_base=None):
            cfg = hydra_compose("config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)

    return _compose


@pytest.fixture(scope="session")
def tiny_vlm(registry, compose):
    """The default tiny model (pretrained parts, random adapter) and its processor, in eval mode."""
    import torch

    from r1v.model.build import build

    torch.manual_seed(0)
    model, processor = build(compose()["model"], registry)
    return model.eval(), processor


def shared_run(tmp_path_factory, worker_id: str, name: str, args: list[str]) -> Path:
    """``runs/<name>`` trained once per test session, also across pytest-xdist workers (a file lock in
    the session's shared temp folder; pytest-xdist's loadgroup does not group tests under pytest 9)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the session folder all workers share
    cwd = root / "shared-runs"
    run_dir = cwd / "runs" / name
    with FileLock(str(root / f"{name}.lock")):
        if not (run_dir / "final" / "trainable.safetensors").is_file():
            cwd.mkdir(exist_ok=True)
            proc = run_cli([f"run={name}", "logger=csv", "trainer.enable_progress_bar=false", *args], cwd)
            assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, worker_id):
    """The default job itself (align, tiny, synthetic, 150 steps), shared by the integration tests."""
    return shared_run(tmp_path_factory, worker_id, "default", [])


@pytest.fixture(scope="session")
def reassembled_run(tmp_path_factory, worker_id, default_run):
    """The aligned adapter re-assembled onto the tiny reasoner: the start of hybrid optimisation."""
    return shared_run(tmp_path_factory, worker_id, "reassembled",
                      ["stage=reassemble", "model=tiny_reasoner", f"checkpoint={default_run}"])  # fmt: skip


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, worker_id, reassembled_run):
    """Plain SFT on reasoning chains (stage 1 of hybrid optimisation, 200 steps) from the re-assembly."""
    return shared_run(tmp_path_factory, worker_id, "sft",
                      ["stage=sft", "model=tiny_reasoner", f"checkpoint={reassembled_run}"])  # fmt: skip


def reasoning_jsonl(folder: Path, n: int = 32) -> Path:
    """A JSONL of ``n`` one-image samples whose reasoning chains run 1–60 words (so micro-batches differ in loss
    tokens), with its image beside it."""
    import json

    from PIL import Image

    Image.effect_noise((32, 32), 60).convert("RGB").save(folder / "a.png")
    rows = [{"id": f"s{i}", "images": ["a.png"], "question": "<image>\nHow many shapes?", "answer": "3",
             "reasoning": " ".join(["count the shapes"] * (1 + (i * 7) % 20))} for i in range(n)]  # fmt: skip
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
