"""The import rule of CONTRIBUTING.md, checked on the source (nothing is imported): entry points → stages →
library → core, never back; no cycles; the library never imports the built-in plugins.

Every import counts, function-local ones included (a cycle hidden inside a function still ties the modules
together). Read with :mod:`ast` rather than import-linter: the rule needs only the import statements, and a
failure here names the importing module, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"r1v": ROOT / "r1v", "r1v_plugins": ROOT / "plugins" / "r1v_plugins"}
ENTRY_POINTS = ("r1v.train", "r1v.eval", "r1v.recipe", "r1v.__main__", "r1v.cli")
STAGES = ("r1v.stages",)
CORE = ("r1v.core",)
LIBRARY = ("r1v.model", "r1v.data", "r1v.generation", "r1v.evaluation", "r1v.rl", "r1v.reports", "r1v.runtime")
# thin re-exports of old import paths for third-party plugins (``r1v.interfaces``, ``r1v.hookspecs``)
COMPAT = ("r1v.interfaces", "r1v.hookspecs")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, base in PACKAGES.items():
        for f in base.rglob("*.py"):
            parts = [pkg, *f.relative_to(base).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import statement of ``module``, nested ones included."""
    path = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target and target != module and not module.startswith(target + ".") and target != "r1v":
                yield target, node.lineno


def layer(module: str) -> str:
    for name, prefixes in (("entry point", ENTRY_POINTS), ("stage", STAGES), ("core", CORE), ("library", LIBRARY),
                           ("compat", COMPAT)):  # fmt: skip
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return "plugin" if module.startswith("r1v_plugins") else "package"


RANK = {"core": 0, "library": 1, "stage": 2, "entry point": 3}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer(m) == "package" and m not in ("r1v", "r1v_plugins"))
    assert not unplaced, f"modules outside every layer (add them to a package or to this test's table): {unplaced}"


@pytest.mark.parametrize("lower", ["core", "library", "stage"])
def test_no_layer_imports_a_higher_one(lower):
    """core imports only core; the library imports core and library; stages never import entry points."""
    bad = [f"{m}:{line} imports {t} ({layer(t)})" for m in MODULES if layer(m) == lower
           for t, line in imports(m) if layer(t) in RANK and RANK[layer(t)] > RANK[lower]]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_the_library_never_imports_the_built_in_plugins():
    """r1v_plugins points at library code (as timm's registry points at its model files), never the reverse; the
    registry loads the built-ins by name (``r1v.core.registry.BUILTIN_MODULES``)."""
    bad = [f"{m}:{line} imports {t}" for m in MODULES if m.startswith("r1v.") or m == "r1v"
           for t, line in imports(m) if t.startswith("r1v_plugins")]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_there_is_no_import_cycle():
    """Tarjan's strongly connected components over every import (function-local ones too)."""
    edges = {m: {t for t, _ in imports(m)} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                cycles.append(sorted([v, *comp]))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The rules above can fail: a planted cycle and a library → stage import are found."""
    (tmp_path / "r1v" / "model").mkdir(parents=True)
    (tmp_path / "r1v" / "stages").mkdir()
    (tmp_path / "r1v" / "model" / "a.py").write_text("def f():\n    from r1v.stages import b\n")
    (tmp_path / "r1v" / "stages" / "b.py").write_text("from r1v.model.a import f\n")
    fake = {"r1v.model.a": tmp_path / "r1v/model/a.py", "r1v.stages.b": tmp_path / "r1v/stages/b.py"}
    monkeypatch.setattr(__import__(__name__, fromlist=["MODULES"]), "MODULES", fake)
    assert list(imports("r1v.model.a")) == [("r1v.stages.b", 2)]
    with pytest.raises(AssertionError, match=re.escape("r1v.model.a <-> r1v.stages.b")):
        test_there_is_no_import_cycle()
    with pytest.raises(AssertionError, match=r"r1v.model.a:2 imports r1v.stages.b \(stage\)"):
        test_no_layer_imports_a_higher_one("library")


def test_import_r1v_does_not_import_torch():
    import subprocess
    import sys

    code = "import r1v, sys; assert 'torch' not in sys.modules, 'torch'; print(r1v.hookimpl)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_old_import_paths_of_third_party_plugins_still_work():
    from r1v import hookimpl
    from r1v.core.interfaces import RewardInput as New
    from r1v.hookspecs import hookimpl as old_hookimpl
    from r1v.interfaces import LanguageBackbone, RewardInput, Sample  # noqa: F401

    assert RewardInput is New and old_hookimpl is hookimpl
