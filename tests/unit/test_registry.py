"""Registry behaviour: names, providers, knob binding and loud errors."""

from __future__ import annotations

import pytest

from r1v import hookimpl
from r1v.core.hookspecs import KIND_HOOKS
from r1v.core.registry import Registry, RegistryError, make_plugin_manager


def test_every_kind_has_builtins(registry):
    for kind in KIND_HOOKS:
        assert registry.names(kind), f"no built-in {kind}"
    assert {"tiny", "timm"} <= set(registry.names("vision"))
    assert registry.get("adapter", "mlp").provider.startswith("r1v ")


def test_unknown_name_lists_known_and_suggests(registry):
    with pytest.raises(RegistryError) as e:
        registry.get("vision", "tinny")
    msg = str(e.value)
    assert "unknown vision 'tinny'" in msg and "timm, tiny" in msg and "did you mean 'tiny'" in msg
    assert "\n" not in msg


def test_unknown_kind(registry):
    with pytest.raises(RegistryError, match="did you mean 'vision'"):
        registry.names("visoin")


class _Dup:
    @hookimpl
    def register_adapters(self, register):
        register("mlp", lambda **kw: None, "a second mlp")


def test_duplicate_name_names_both_providers():
    with pytest.raises(RegistryError) as e:
        Registry(make_plugin_manager(autoload=False, extra=[_Dup()]))
    msg = str(e.value)
    assert "adapter 'mlp' is registered twice" in msg and "r1v 0.1.0" in msg and "_Dup" in msg


class _Misspelled:
    @hookimpl
    def register_vision_encoder(self, register):  # missing the trailing 's'
        pass


def test_misspelled_hook_is_caught():
    with pytest.raises(RegistryError) as e:
        make_plugin_manager(autoload=False, extra=[_Misspelled()])
    assert "register_vision_encoder" in str(e.value) and "did you mean 'register_vision_encoders'" in str(e.value)


def test_knobs_bind_to_factory_signature(registry):
    entry = registry.get("vision", "tiny")
    assert {"pretrained", "depth", "select_layer"} <= set(entry.knobs())
    with pytest.raises(RegistryError) as e:
        registry.build("vision", "tiny", detph=3)
    assert "has no option 'detph'" in str(e.value) and "did you mean 'depth'" in str(e.value)


def test_build_is_lazy_and_returns_fresh_objects(registry):
    a = registry.build("length", "overlong", max_len=100, buffer=20)
    b = registry.build("length", "overlong", max_len=100, buffer=20)
    assert a is not b
    assert a(80) == 0.0 and a(90) == pytest.approx(-0.5) and a(101) == -1.0


def test_the_plugin_guide_documents_every_hook():
    """docs/plugins.md's hook reference names every hook of r1v/core/hookspecs.py (a new kind must be documented)."""
    from pathlib import Path

    from r1v.core import hookspecs

    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    missing = [h for h in hooks if f"| `{h}` |" not in guide]
    assert len(hooks) == len(hookspecs.KIND_HOOKS) + 1 and not missing, missing
