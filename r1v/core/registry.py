"""Plugin manager and registries: names -> factories, with errors that say what is allowed.

Built-in plugins (``r1v_plugins``) are registered explicitly; third-party packages arrive through
the ``r1v`` entry-point group unless ``R1V_DISABLE_PLUGIN_AUTOLOAD=1``. Nothing is global at import
time: :func:`get_registry` builds (and caches) one :class:`Registry` per process.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from r1v.core import hookspecs
from r1v.core.errors import RegistryError

AUTOLOAD_ENV = "R1V_DISABLE_PLUGIN_AUTOLOAD"


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    provider: str  # distribution (or plugin) that registered it, e.g. "r1v 0.1.0"
    description: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def knobs(self) -> list[str]:
        """Keyword arguments the factory accepts (its config knobs)."""
        params = inspect.signature(self.factory).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def accepts_any_knob(self) -> bool:
        params = inspect.signature(self.factory).parameters.values()
        return any(p.kind is p.VAR_KEYWORD for p in params)

    def check_knobs(self, knobs: Mapping[str, Any], where: str, fixed: tuple[str, ...] = ()) -> None:
        """Raise RegistryError naming the first knob the factory does not take."""
        if self.accepts_any_knob():
            return
        allowed = [k for k in self.knobs() if k not in fixed]
        for key in knobs:
            if key not in allowed:
                raise RegistryError(
                    f"{where}: {self.kind} '{self.name}' has no option '{key}' "
                    f"(allowed: {', '.join(allowed) or 'none'}){did_you_mean(key, allowed)}"
                )


class Registry:
    """All components of all kinds, with their providers."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in hookspecs.KIND_HOOKS}
        providers = _providers(pm)
        for kind, hook_name in hookspecs.KIND_HOOKS.items():
            hook = getattr(pm.hook, hook_name)
            # Call each implementation on its own so every entry knows who registered it.
            for impl in hook.get_hookimpls():  # registration order: built-ins first
                provider = providers.get(impl.plugin_name, impl.plugin_name)
                impl.function(register=self._registrar(kind, provider))

    def _registrar(self, kind: str, provider: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], description: str = "", **meta: Any) -> None:
            if not callable(factory):
                raise RegistryError(f"{provider}: {kind} '{name}' was registered with a non-callable factory")
            old = self._entries[kind].get(name)
            if old is not None:
                raise RegistryError(
                    f"{kind} '{name}' is registered twice: by {old.provider} and by {provider}; rename one of them"
                )
            doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[kind][name] = Entry(kind, name, factory, provider, doc, meta)

        return register

    @property
    def kinds(self) -> list[str]:
        return list(self._entries)

    def names(self, kind: str) -> list[str]:
        return sorted(self._kind(kind))

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else self.kinds
        return [e for k in kinds for _, e in sorted(self._kind(k).items())]

    def get(self, kind: str, name: str) -> Entry:
        table = self._kind(kind)
        if name not in table:
            known = sorted(table)
            raise RegistryError(
                f"unknown {kind} '{name}' (known: {', '.join(known) or 'none'}){did_you_mean(name, known)}"
            )
        return table[name]

    def build(self, kind: str, name: str, **knobs: Any) -> Any:
        """Look up ``name`` and call its factory with ``knobs``; knob errors name the option."""
        entry = self.get(kind, name)
        entry.check_knobs(knobs, where=kind)
        return entry.factory(**knobs)

    def _kind(self, kind: str) -> dict[str, Entry]:
        if kind not in self._entries:
            raise RegistryError(
                f"unknown component kind '{kind}' (known: {', '.join(self._entries)})"
                f"{did_you_mean(kind, list(self._entries))}"
            )
        return self._entries[kind]


# The built-in plugins, imported by name when a plugin manager is made (pytest lists its own plugins so).
BUILTIN_MODULES = [
    "r1v_plugins.vision",
    "r1v_plugins.internvit",
    "r1v_plugins.hf_vision",
    "r1v_plugins.adapters",
    "r1v_plugins.backbones",
    "r1v_plugins.qwen2",
    "r1v_plugins.rewards",
    "r1v_plugins.length",
    "r1v_plugins.rollout",
    "r1v_plugins.datasets",
    "r1v_plugins.scorers",
    "r1v_plugins.revisers",
    "r1v_plugins.judge",
    "r1v_plugins.policy_losses",
    "r1v_plugins.benchmarks",
    "r1v_plugins.stages",
]


def _providers(pm: pluggy.PluginManager) -> dict[str, str]:
    """plugin name -> 'distribution version' for entry-point plugins; built-ins are 'r1v x.y'."""
    from r1v import __version__

    out = {}
    for name, plugin in pm.list_name_plugin():  # plugins registered in code: module or class name
        out[name] = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    for plugin, dist in pm.list_plugin_distinfo():
        out[pm.get_name(plugin) or ""] = f"{dist.project_name} {dist.version}"
    for name, _ in pm.list_name_plugin():
        if name.startswith("r1v_plugins"):
            out[name] = f"r1v {__version__}"
    return out


def make_plugin_manager(autoload: bool | None = None, extra: list[Any] | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager: hookspecs, the explicit built-ins, entry points, then ``extra``.

    ``check_pending`` turns a misspelled hook name in any plugin into an error naming it.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_MODULES:  # by name: the library never imports the built-ins' modules itself
        pm.register(importlib.import_module(modname), name=modname)
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    if autoload:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra or []:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        names = [n for n in dir(hookspecs) if n.startswith("register_")]
        bad = str(e).split("unknown hook '")[-1].split("'")[0] if "unknown hook" in str(e) else ""
        raise RegistryError(
            f"plugin {e.plugin!r}: {e}; known hooks: {', '.join(names)}{did_you_mean(bad, names)}"
        ) from None
    return pm


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use (not at import)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = Registry(make_plugin_manager())
    return _REGISTRY
