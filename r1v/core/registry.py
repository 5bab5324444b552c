"""Plugin manager and registries: names -> factories, with errors that say what is allowed.

Built-in plugins (``r1v_plugins``) are registered explicitly; third-party packages arrive through
the ``r1v`` entry-point group unless ``R1V_DISABLE_PLUGIN_AUTOLOAD=1`` (all of them) or their entry-point
or distribution name is in ``R1V_DISABLE_PLUGINS=name,…``. A third-party plugin that fails to import, to
register with pluggy or in one of its hooks is switched off: one warning line on stderr names it, the error
and the way out, and everything else keeps working (:class:`PluginFailure`). Built-ins and plugins passed in
code still fail loudly: those are bugs, not installs. Nothing is global at import time: :func:`get_registry`
builds (and caches) one :class:`Registry` per process.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from r1v.core import hookspecs
from r1v.core.errors import RegistryError

AUTOLOAD_ENV = "R1V_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_ENV = "R1V_DISABLE_PLUGINS"


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


@dataclass(frozen=True)
class PluginFailure:
    """A third-party plugin switched off because it broke: its entry-point name, 'distribution version', and the
    error as '<Type>: <first line>'."""

    name: str
    provider: str
    error: str

    def line(self) -> str:
        """The one warning line: which plugin, what went wrong, the way out."""
        return (f"plugin '{self.name}' ({self.provider}) failed to load: {self.error}; r1v runs without its "
                f"components (fix or uninstall it, or set {DISABLE_ENV}={self.name} to skip it)")  # fmt: skip


def _error_line(err: BaseException) -> str:
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


_WARNED: set[str] = set()  # each warning once per process, however often a registry is built


def _warn(line: str) -> None:
    if line not in _WARNED:
        _WARNED.add(line)
        print(f"r1v: warning: {line}", file=sys.stderr)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus what r1v knows about the entry-point (third-party) plugins: who provides each
    (``entry_points``: plugin name -> 'distribution version'), which broke (``failed``) and which the user
    switched off (``disabled``)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.entry_points: dict[str, str] = {}
        self.failed: dict[str, PluginFailure] = {}
        self.disabled: dict[str, str] = {}

    def fail(self, name: str, err: BaseException) -> PluginFailure:
        """Switch the entry-point plugin ``name`` off (unregister it) and warn once, in one line."""
        provider = self.entry_points.pop(name, name)
        failure = self.failed[name] = PluginFailure(name, provider, _error_line(err))
        self.unregister(name=name)  # also when half-registered (pluggy refused a later hook); no-op if never
        _warn(failure.line())
        return failure


class Registry:
    """All components of all kinds, with their providers."""

    def __init__(self, pm: PluginManager) -> None:
        self.pm = pm
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in hookspecs.KIND_HOOKS}
        self._made_by: dict[str, list[tuple[str, str]]] = {}  # plugin name -> (kind, name) it registered
        providers = _providers(pm)
        for kind, hook_name in hookspecs.KIND_HOOKS.items():
            # Call each implementation on its own so every entry knows who registered it.
            for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order: built-ins first
                provider = providers.get(impl.plugin_name, impl.plugin_name)
                register = self._registrar(kind, provider, impl.plugin_name)
                self._guarded(impl, {"register": register})

    @property
    def failed(self) -> dict[str, PluginFailure]:
        """Entry-point plugins switched off because they broke (plugin name -> failure)."""
        return self.pm.failed

    def call_hook(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a non-kind hook (``register_configs``) one by one: a third-party one that
        raises switches its plugin off, as in :meth:`__init__`."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            self._guarded(impl, kwargs)

    def _guarded(self, impl: Any, kwargs: Mapping[str, Any]) -> None:
        name = impl.plugin_name
        if name in self.pm.failed:  # broke in an earlier hook: its later hooks stay silent
            return
        args = {a: kwargs[a] for a in impl.argnames}
        if name not in self.pm.entry_points:  # built-ins and plugins passed in code: a failure is a bug, loud
            impl.function(**args)
            return
        try:
            impl.function(**args)
        except Exception as e:  # any error of a third-party hook switches that plugin off
            for kind, key in self._made_by.pop(name, []):
                self._entries[kind].pop(key, None)
            self.pm.fail(name, e)

    def failure_note(self) -> str:
        """'; plugin 'x' (dist 1.0) failed to load …' for error lines about a missing name, or ''."""
        return failure_note(self.pm.failed)

    def _registrar(self, kind: str, provider: str, plugin: str) -> Callable[..., None]:
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
            self._made_by.setdefault(plugin, []).append((kind, name))

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
                f"{self.failure_note()}"
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
    "r1v_plugins.audio",
]


def _providers(pm: PluginManager) -> dict[str, str]:
    """plugin name -> 'distribution version' for entry-point plugins; built-ins are 'r1v x.y'."""
    from r1v import __version__

    out = {}
    for name, plugin in pm.list_name_plugin():  # plugins registered in code: module or class name
        out[name] = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    out.update(pm.entry_points)
    for name, _ in pm.list_name_plugin():
        if name.startswith("r1v_plugins"):
            out[name] = f"r1v {__version__}"
    return out


def failure_note(failed: Mapping[str, PluginFailure]) -> str:
    """The tail of an error line about a missing name when plugins broke: which, so that the user looks there."""
    if not failed:
        return ""
    which = ", ".join(f"'{f.name}' ({f.provider})" for f in failed.values())
    return f"; note: plugin {which} failed to load (see its warning), so its components are missing"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: R1V_Example.Plugin == r1v-example-plugin


def _load_entry_points(pm: PluginManager) -> None:
    """pluggy's ``load_setuptools_entrypoints``, one entry point at a time: one that is switched off by
    ``R1V_DISABLE_PLUGINS`` is skipped; one that fails to import or to register is switched off with a warning."""
    off = {_normal(n.strip()) for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    seen: set[str] = set()
    for dist in list(importlib.metadata.distributions()):
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points.select(group=hookspecs.PROJECT):
            seen |= {_normal(ep.name), _normal(dist_name)}
            if pm.has_plugin(ep.name) or ep.name in pm.failed or ep.name in pm.disabled:
                continue  # the same distribution twice on sys.path, or two claiming one name: the first wins
            provider = f"{dist_name} {dist.version}"
            if _normal(ep.name) in off or _normal(dist_name) in off:
                pm.disabled[ep.name] = provider
                continue
            pm.entry_points[ep.name] = provider
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as e:  # whatever a broken package raises, the rest keeps working
                pm.fail(ep.name, e)
    unknown = sorted(off - seen)
    if unknown:  # a misspelled name would otherwise switch nothing off, silently
        known = sorted(pm.entry_points.keys() | pm.failed.keys() | pm.disabled.keys())
        _warn(f"{DISABLE_ENV}: no installed plugin is named '{unknown[0]}' (installed: {', '.join(known) or 'none'})"
              f"{did_you_mean(unknown[0], known)}")  # fmt: skip


def _unknown_hook(e: pluggy.PluginValidationError) -> str:
    names = [n for n in dir(hookspecs) if n.startswith("register_")]
    bad = str(e).split("unknown hook '")[-1].split("'")[0] if "unknown hook" in str(e) else ""
    return f"{e}; known hooks: {', '.join(names)}{did_you_mean(bad, names)}"


def make_plugin_manager(autoload: bool | None = None, extra: list[Any] | None = None) -> PluginManager:
    """A fresh plugin manager: hookspecs, the explicit built-ins, entry points, then ``extra``.

    ``check_pending`` turns a misspelled hook name into an error naming it: the run stops for a built-in or an
    ``extra`` plugin, an entry-point plugin is switched off with a warning.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_MODULES:  # by name: the library never imports the built-ins' modules itself
        pm.register(importlib.import_module(modname), name=modname)
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    if autoload:
        _load_entry_points(pm)
    for plugin in extra or []:
        pm.register(plugin)
    while True:
        try:
            pm.check_pending()
            return pm
        except pluggy.PluginValidationError as e:
            name = pm.get_name(e.plugin)
            if name not in pm.entry_points:
                raise RegistryError(f"plugin {e.plugin!r}: {_unknown_hook(e)}") from None
            pm.fail(name, RegistryError(_unknown_hook(e)))  # unregistered: the next check_pending goes past it


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use (not at import)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = Registry(make_plugin_manager())
    return _REGISTRY
