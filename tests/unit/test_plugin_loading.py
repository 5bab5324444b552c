"""Loading third-party plugins from entry points: a broken one is switched off with one warning line, the rest
keeps working, and R1V_DISABLE_PLUGINS switches single plugins off. The distributions are fakes: a *.dist-info
folder (METADATA + entry_points.txt) and a module in a temporary folder put on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from r1v.core import registry as registry_mod
from r1v.core.registry import Registry, RegistryError, make_plugin_manager

GOOD = '''
from r1v import hookimpl

def shout(loud=1.0):
    """Always loud."""
    return lambda x: {"shout": loud}

@hookimpl
def register_rewards(register):
    register("shout", shout)
'''

RAISES = """
from r1v import hookimpl

@hookimpl
def register_rewards(register):
    register("half", lambda: None, "registered before the hook broke")
    raise ValueError("no such setting\\nsecond line")
"""

MISSPELLED = """
from r1v import hookimpl

@hookimpl
def register_reward(register):
    pass
"""


def _dist(site: Path, dist: str, ep: str, module: str, code: str | None) -> None:
    """A fake installed distribution ``dist`` 0.1 whose entry point ``ep`` names ``module`` (written if code)."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[r1v]\n{ep} = {module}\n")
    if code is not None:
        (site / f"{module}.py").write_text(code)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty 'site-packages' on sys.path, autoloading on, no warning shown yet; the fake modules are
    forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("R1V_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("R1V_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(registry_mod, "_WARNED", set(), raising=False)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("r1vfake_"):
            del sys.modules[name]


@pytest.fixture
def three(site: Path) -> Path:
    """One plugin that imports, one whose module is missing, one whose hook raises after registering."""
    _dist(site, "r1v-good", "good", "r1vfake_good", GOOD)
    _dist(site, "r1v-broken", "broken", "r1vfake_missing", None)
    _dist(site, "r1v-raises", "raises", "r1vfake_raises", RAISES)
    return site


def test_a_broken_plugin_is_one_warning_and_the_rest_works(three: Path, capsys: pytest.CaptureFixture) -> None:
    reg = Registry(make_plugin_manager())
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "r1v: warning: plugin 'broken' (r1v-broken 0.1) failed to load: ModuleNotFoundError: No module named "
        "'r1vfake_missing'; r1v runs without its components (fix or uninstall it, or set "
        "R1V_DISABLE_PLUGINS=broken to skip it)",
        "r1v: warning: plugin 'raises' (r1v-raises 0.1) failed to load: ValueError: no such setting; r1v runs "
        "without its components (fix or uninstall it, or set R1V_DISABLE_PLUGINS=raises to skip it)",
    ]
    assert reg.get("reward", "shout").provider == "r1v-good 0.1"
    assert reg.build("reward", "shout", loud=2.0)(None) == {"shout": 2.0}
    assert "half" not in reg.names("reward")  # what the broken hook registered before raising is gone too
    assert sorted(reg.failed) == ["broken", "raises"] and not reg.pm.has_plugin("raises")
    with pytest.raises(RegistryError) as e:
        reg.get("reward", "brevity")
    assert str(e.value) == (
        "unknown reward 'brevity' (known: accuracy, format, reward_model, shout); note: plugin 'broken' "
        "(r1v-broken 0.1), 'raises' (r1v-raises 0.1) failed to load (see its warning), so its components are missing"
    )
    Registry(make_plugin_manager())  # built again in the same process: no second warning
    assert capsys.readouterr().err == ""


def test_python_m_r1v_plugins_lists_the_rest_and_the_broken_one(three: Path, capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from r1v.__main__ import main

    monkeypatch.setattr(registry_mod, "_REGISTRY", None)  # the process-wide registry, rebuilt with the fakes
    assert main(["plugins", "--kind", "reward"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[:3]): line for line in out[1:]}
    assert ("reward", "shout", "r1v-good") in rows and ("reward", "accuracy", "r1v") in rows
    assert rows["plugin", "broken", "r1v-broken"].endswith(
        "FAILED to load: ModuleNotFoundError: No module named 'r1vfake_missing'"
    )
    assert "FAILED to load: ValueError: no such setting" in rows["plugin", "raises", "r1v-raises"]
    import r1v  # the Python API lists them too

    listed = {(r["kind"], r["name"]): r for r in r1v.list_plugins()}
    assert listed["plugin", "broken"]["description"].startswith("FAILED to load: ModuleNotFoundError")
    assert ("reward", "shout") in listed


def test_disable_plugins_switches_single_plugins_off(three: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("R1V_DISABLE_PLUGINS", "broken, r1v_Raises")  # entry-point or distribution name
    pm = make_plugin_manager()
    reg = Registry(pm)
    assert capsys.readouterr().err == ""
    assert not reg.failed and pm.disabled == {"broken": "r1v-broken 0.1", "raises": "r1v-raises 0.1"}
    assert "shout" in reg.names("reward")
    monkeypatch.setenv("R1V_DISABLE_PLUGINS", "good")
    assert "shout" not in Registry(make_plugin_manager()).names("reward")
    capsys.readouterr()
    monkeypatch.setenv("R1V_DISABLE_PLUGINS", "goood,broken,raises")
    make_plugin_manager()
    assert capsys.readouterr().err.splitlines() == [
        "r1v: warning: R1V_DISABLE_PLUGINS: no installed plugin is named 'goood' (installed: broken, good, raises) "
        "— did you mean 'good'?"
    ]
    monkeypatch.setenv("R1V_DISABLE_PLUGIN_AUTOLOAD", "1")  # still switches every third-party plugin off
    assert "shout" not in Registry(make_plugin_manager()).names("reward")


def test_a_misspelled_hook_switches_only_that_plugin_off(site: Path, capsys: pytest.CaptureFixture) -> None:
    _dist(site, "r1v-typo", "typo", "r1vfake_typo", MISSPELLED)
    _dist(site, "r1v-good", "good", "r1vfake_good", GOOD)
    reg = Registry(make_plugin_manager())
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("r1v: warning: plugin 'typo' (r1v-typo 0.1) failed to load: RegistryError: unknown hook "
                           "'register_reward'") and "did you mean 'register_rewards'" in line  # fmt: skip
    assert "shout" in reg.names("reward") and list(reg.failed) == ["typo"]


CONFIGS_RAISE = """
from r1v import hookimpl

@hookimpl
def register_rewards(register):
    register("late", lambda: None, "registered; its configs hook breaks later")

@hookimpl
def register_configs(config_store):
    raise RuntimeError("store is read-only")
"""


def test_a_configs_hook_that_raises_switches_its_plugin_off(site: Path, capsys: pytest.CaptureFixture) -> None:
    _dist(site, "r1v-late", "late", "r1vfake_late", CONFIGS_RAISE)
    reg = Registry(make_plugin_manager())
    assert "late" in reg.names("reward")
    reg.call_hook("register_configs", config_store=object())  # as r1v.core.config.register_plugin_configs does
    assert "late" not in reg.names("reward") and list(reg.failed) == ["late"]
    assert "failed to load: RuntimeError: store is read-only" in capsys.readouterr().err
