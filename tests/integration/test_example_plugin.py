"""The third-party plugin in examples/r1v-example-plugin, installed the way a user would (pip, entry
points), into a temporary folder on PYTHONPATH so the venv is never touched."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG_DIR = REPO / "examples" / "r1v-example-plugin"
PROVIDER = "r1v-example-plugin 0.1.0"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example package (no deps, no index) into a temporary target folder."""
    tmp = tmp_path_factory.mktemp("example_plugin")
    # Build from a copy: an in-tree setuptools build leaves build/ and *.egg-info in the checkout.
    src = tmp / "src"
    shutil.copytree(PKG_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert (target / "r1v_example" / "plugin.py").is_file()
    return target


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("R1V_DISABLE_PLUGIN_AUTOLOAD", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def _run(site: Path, *args: str, cwd: Path, timeout: int = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(site, **extra), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _rows(listing: str) -> dict[tuple[str, str], str]:
    """`python -m r1v plugins` table -> {(kind, name): provider line}."""
    out = {}
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            out[(parts[0], parts[1])] = line
    return out


def test_plugins_lists_example_components(site: Path, tmp_path: Path) -> None:
    res = _run(site, "-m", "r1v", "plugins", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = _rows(res.stdout)
    assert ("vision", "example_cnn") in rows, res.stdout
    assert ("reward", "brevity") in rows, res.stdout
    assert PROVIDER in rows[("vision", "example_cnn")]
    assert PROVIDER in rows[("reward", "brevity")]
    assert "r1v 0.1.0" in rows[("vision", "tiny")]  # built-ins still there


def test_autoload_disabled_hides_example(site: Path, tmp_path: Path) -> None:
    res = _run(site, "-m", "r1v", "plugins", cwd=tmp_path, R1V_DISABLE_PLUGIN_AUTOLOAD="1")
    assert res.returncode == 0, res.stderr
    assert "example_cnn" not in res.stdout
    assert "brevity" not in res.stdout
    assert ("vision", "tiny") in _rows(res.stdout)


def test_components_work(site: Path, tmp_path: Path) -> None:
    code = """
import torch
from r1v.core.interfaces import RewardInput
from r1v.core.registry import get_registry
reg = get_registry()
enc = reg.build("vision", "example_cnn")
assert (enc.image_size, enc.grid_size, enc.hidden_size) == (64, 8, 32)
assert tuple(enc(torch.rand(2, 3, 64, 64)).shape) == (2, 8, 8, 32)
r = reg.build("reward", "brevity", max_chars=10)
x = lambda c: RewardInput(prompt="q", completion=c, answer="1")
assert r(x("short")) == {"brevity": 1.0}
assert r(x("a" * 15)) == {"brevity": 0.5}
assert r(x("a" * 40)) == {"brevity": 0.0}
print("ok")
"""
    res = _run(site, "-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_train_help_lists_options(site: Path, tmp_path: Path) -> None:
    res = _run(site, "-m", "r1v.train", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    groups = {}
    for line in res.stdout.splitlines():
        key, sep, options = line.partition(": ")
        if sep and key in ("vision", "reward"):
            groups[key] = [o.strip() for o in options.split(",")]
    assert "example_cnn" in groups.get("vision", []), res.stdout
    assert "brevity" in groups.get("reward", []), res.stdout


def test_train_with_example_plugin(site: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    res = _run(
        site, "-m", "r1v.train", "vision=example_cnn", "reward=[accuracy,brevity]",
        "stage.max_steps=4", "stage.val_every=4", "stage.val_generate=4", "stage.batch_size=4",
        "stage.ckpt_every=4", "data.n_train=32", "data.n_val=4", f"paths.runs={runs}", "run=ex",
        "logger=csv", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    run_dir = runs / "ex"
    # the options came from the registrations alone (the package stores no config): factory defaults, the weight
    config = (run_dir / "config.yaml").read_text()
    assert "name: example_cnn\n    image_size: 64\n    hidden_size: 32\n    width: 16" in config, config
    assert "brevity:\n    name: brevity\n    weight: 0.1\n    max_chars: 200" in config, config
    prov = json.loads((run_dir / "run.json").read_text())
    assert prov["components"]["vision"] == {"name": "example_cnn", "provider": PROVIDER}
    brevity = [c for c in prov["components"].values() if c["name"] == "brevity"]
    assert [c["provider"] for c in brevity] == [PROVIDER], prov["components"]
    assert PROVIDER in prov["plugins"]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses, f"no train/loss in metrics.csv: {rows}"
    assert all(math.isfinite(v) for v in losses)
