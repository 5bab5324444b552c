"""Config composition helpers: where conf/ lives, plugin config options, and validation that turns
every mistake into one line naming the group, key or option and what is allowed."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from r1v.core.errors import ConfigError
from r1v.core.override_errors import explain_override, node_at
from r1v.core.registry import Registry, RegistryError, did_you_mean, get_registry
from r1v.core.values import check_knob_values, check_range, check_untyped_ranges

# config node -> (registry kind, keys that are not factory knobs)
PLUGIN_NODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "model.vision": ("vision", ("name",)),
    "model.adapter": ("adapter", ("name",)),
    "model.backbone": ("backbone", ("name",)),
    "data": ("dataset", ("name", "loader", "max_tokens")),
}
# plugin nodes that only some configs have (checked when present)
OPTIONAL_PLUGIN_NODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "distill.length": ("length", ("name",)),
    "distill.reviser": ("reviser", ("name",)),
    "distill.rollout": ("rollout", ("name",)),
    "stage.rm.scorer": ("scorer", ("name",)),
    "stage.policy_loss": ("policy_loss", ("name",)),
    "stage.length": ("length", ("name",)),
    "stage.rollout": ("rollout", ("name",)),
    "model.audio": ("audio", ("name", "long_clips")),  # long_clips: the processor's rule, not an encoder knob
    "model.audio_adapter": ("audio_adapter", ("name",)),
}
SCORER_GROUPS = ("vision", "text", "integration")
ADAPTER_FIXED = ("vision_hidden", "llm_hidden")
AUDIO_ADAPTER_FIXED = ("audio_hidden", "llm_hidden")
DATASET_FIXED = ("split",)


def default_run_name(stage: str) -> str:
    """``<stage>-<time>``; under torchrun every rank shares TORCHELASTIC_RUN_ID, so ranks agree."""
    if os.environ.get("R1V_RUN_NAME"):
        return os.environ["R1V_RUN_NAME"]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id not in ("", "none"):
        return f"{stage}-{run_id}"
    return f"{stage}-{_first_call_time()}"


@functools.cache
def _first_call_time() -> str:
    """This process's time stamp for run names, fixed at first use: Hydra resolves ``${r1v_run_name:…}`` for the
    run folder and again for the saved config, seconds apart, and both must name the same run."""
    return f"{datetime.now():%Y%m%d-%H%M%S}"


def register_resolvers() -> None:
    """The resolvers conf/ uses (``${r1v_run_name:…}``, and in ``hydra:`` ``${r1v_sweep_subdir:…}`` and
    ``${r1v_app_groups:…}``, :mod:`r1v.core.resolvers`); idempotent, called by everything that composes."""
    from omegaconf import OmegaConf

    from r1v.core.resolvers import app_groups, sweep_subdir

    for name, fn in (("r1v_run_name", default_run_name), ("r1v_sweep_subdir", sweep_subdir),
                     ("r1v_app_groups", app_groups)):  # fmt: skip
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def conf_dir() -> str:
    """conf/ as installed (``r1v.conf``), or the source tree's when running from a checkout."""
    try:
        path = Path(str(resources.files("r1v.conf")))
        if (path / "config.yaml").is_file():
            return str(path)
    except ModuleNotFoundError:
        pass
    return str(Path(__file__).resolve().parents[2] / "conf")  # r1v/core/config.py -> the checkout's conf/


# registry kind -> (config group, package, knobs the builder passes itself): options made from registrations
DERIVED_GROUPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "vision": ("vision", "model.vision", ()),
    "adapter": ("adapter", "model.adapter", ADAPTER_FIXED),
    "backbone": ("backbone", "model.backbone", ()),
    "reward": ("reward", "rewards.{name}", ()),
    "dataset": ("data", "data", DATASET_FIXED),
    "audio": ("audio", "model.audio", ()),
    "audio_adapter": ("audio_adapter", "model.audio_adapter", AUDIO_ADAPTER_FIXED),
}
_PLAIN = (str, int, float, bool, type(None))


def derived_node(entry: Any, fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    """A component's config option, made from its registration alone: ``name`` plus every keyword argument of the
    factory with its default (``???`` — must be set — where it has none). A reward also gets its ``weight``
    (``register(..., weight=0.5)``; default 1.0). Defaults that a YAML cannot hold (objects) are left to the factory."""
    node: dict[str, Any] = {"name": entry.name}
    if entry.kind == "reward":
        node["weight"] = float(entry.meta.get("weight", 1.0))
    for p in inspect.signature(entry.factory).parameters.values():
        if p.name in fixed or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            node[p.name] = "???"
        elif isinstance(p.default, _PLAIN) or (isinstance(p.default, list | tuple)
                                               and all(isinstance(v, _PLAIN) for v in p.default)):  # fmt: skip
            node[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return node


def register_plugin_configs(registry: Registry) -> None:
    """Make every plugin's Hydra options, once: first what plugins store themselves (the ``register_configs``
    hook, for extras), then, for each vision encoder, adapter, backbone, reward and dataset that has no option
    yet (no ``conf/<group>/<name>.yaml``, nothing stored), one derived from its registration
    (:func:`derived_node`). So a third-party component is one factory plus one ``register_*`` hook."""
    from hydra.core.config_store import ConfigStore

    if getattr(registry, "_configs_registered", False):
        return
    store = ConfigStore.instance()
    registry.call_hook("register_configs", config_store=store)  # a broken third-party one is switched off
    root = Path(conf_dir())
    for kind, (group, package, fixed) in DERIVED_GROUPS.items():
        for entry in registry.entries(kind):
            if (root / group / f"{entry.name}.yaml").is_file() or f"{entry.name}.yaml" in store.repo.get(group, {}):
                continue
            store.store(group=group, name=entry.name, node=derived_node(entry, fixed),
                        package=package.format(name=entry.name))  # fmt: skip
    registry._configs_registered = True  # type: ignore[attr-defined]


def _plugin_nodes(cfg: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...], Any]]:
    nodes = [(d, k, r, node_at(cfg, d)) for d, (k, r) in PLUGIN_NODES.items()]
    nodes += [(d, k, r, n) for d, (k, r) in OPTIONAL_PLUGIN_NODES.items() if (n := node_at(cfg, d)) is not None]
    for part, node in ((node_at(cfg, "distill") or {}).get("scorers") or {}).items():
        where = f"distill.scorers.{part}"
        if not isinstance(node, Mapping) or node.get("group") not in SCORER_GROUPS:
            raise ConfigError(f"{where}.group: must be one of {', '.join(SCORER_GROUPS)} "
                              f"(got {node.get('group') if isinstance(node, Mapping) else node!r})")  # fmt: skip
        nodes.append((where, "scorer", ("name", "group"), node))
    return nodes


# Hydra imports and calls whatever a `_target_` names; configs (and overrides, and recipe files) may only
# name classes from these packages: Lightning (trainer, strategies, loggers, callbacks), torch.optim, r1v.
TARGET_PACKAGES = ("lightning", "pytorch_lightning", "torch.optim", "r1v")


def check_targets(node: Any, where: str = "") -> None:
    """Refuse a ``_target_`` outside :data:`TARGET_PACKAGES` anywhere in ``node`` (one line, naming the key)."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        allowed = isinstance(target, str) and any(target == p or target.startswith(p + ".") for p in TARGET_PACKAGES)
        if target is not None and not allowed:
            raise ConfigError(
                f"{where + '.' if where else ''}_target_: '{target}' is not allowed; a _target_ may "
                f"name classes from {', '.join(TARGET_PACKAGES)} only (plugins are chosen by name)"
            )
        for key, value in node.items():
            check_targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]")


def check_writable(folder: str | Path, what: str) -> None:
    """``folder`` is, or could be made, a writable folder (checked on its nearest existing ancestor, so
    nothing is created for a command that then fails for another reason)."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what}: {path} cannot be made: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {path} is not writable ({probe} does not allow writing); choose another folder")


def validate(cfg: Mapping[str, Any], registry: Registry) -> None:
    """Every plugin name resolves, every knob binds to its factory and fits its annotation, and every setting has
    its default's type and lies in its range (:data:`r1v.core.values.RANGES`), before anything is built."""
    check_targets(cfg)
    check_types(cfg)
    check_untyped_ranges(cfg)
    for dotted, kind, reserved, node in _plugin_nodes(cfg):
        if node is None:
            raise ConfigError(f"config: '{dotted}' is missing; choose a {kind} option")
        if "name" not in node:
            raise ConfigError(f"config: {dotted}.name is missing (known {kind}: {', '.join(registry.names(kind))})")
        try:
            entry = registry.get(kind, str(node["name"]))
        except RegistryError as e:
            raise ConfigError(f"{dotted}.name: {e}") from None
        fixed = {"adapter": ADAPTER_FIXED, "audio_adapter": AUDIO_ADAPTER_FIXED, "dataset": DATASET_FIXED}.get(kind, ())
        left_out = other_plugins_defaults(cfg, dotted, entry)
        knobs = {k: v for k, v in node.items() if k not in reserved and k not in left_out}
        try:
            entry.check_knobs(knobs, where=dotted, fixed=fixed)
        except RegistryError as e:
            raise ConfigError(str(e)) from None
        check_knob_values(entry, knobs, dotted)
    try:
        registry.get("stage", str(cfg["stage"]["name"]))
    except RegistryError as e:
        raise ConfigError(f"stage.name: {e}") from None
    for key, node in (cfg.get("rewards") or {}).items():
        knobs = {k: v for k, v in node.items() if k not in ("name", "weight")}
        try:
            entry = registry.get("reward", str(node.get("name", key)))
            entry.check_knobs(knobs, where=f"rewards.{key}")
        except RegistryError as e:
            raise ConfigError(f"rewards.{key}: {e}") from None
        check_knob_values(entry, knobs, f"rewards.{key}")
        weight = node.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(f"rewards.{key}.weight={weight!r}: expected a number (reward '{entry.name}')")


def _option_yaml(cfg: Mapping[str, Any], dotted: str, root: str | Path | None = None) -> Mapping[str, Any] | None:
    """The node ``dotted`` as the chosen option's YAML file writes it (``rollout`` of conf/stage/grpo.yaml for
    ``stage.rollout`` under stage=grpo), or None (no such file or node)."""
    top, _, rest = dotted.partition(".")
    node = cfg.get(top)
    if top not in TYPED_NODES or not rest or not isinstance(node, Mapping):
        return None
    path = Path(root or conf_dir()) / top / f"{TYPED_NODES[top] or node.get('name')}.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    found = node_at(OmegaConf.to_container(OmegaConf.load(path)), rest)  # type: ignore[arg-type]
    return found if isinstance(found, Mapping) else None


def other_plugins_defaults(cfg: Mapping[str, Any], dotted: str, entry: Any) -> set[str]:
    """Keys of the plugin node ``dotted`` that its option's YAML wrote for the plugin it names by default and that
    the chosen one (``entry``) does not take: left out, not refused, while they keep the YAML's value. So
    ``stage.rollout.name=hf`` works although conf/stage/grpo.yaml sets the static engine's ``compile``, ``window``
    …; a value the user changed is theirs, and still refused by the chosen plugin."""
    node, default = node_at(cfg, dotted), _option_yaml(cfg, dotted)
    if not isinstance(node, Mapping) or default is None or default.get("name") == entry.name:
        return set()
    if entry.accepts_any_knob():
        return set()
    takes = set(entry.knobs())
    return {k for k, v in node.items() if k != "name" and k not in takes and k in default and default[k] == v}


# config node -> how its option is named (the node's ``name``, or a fixed option): their YAML defaults are the types
TYPED_NODES: dict[str, str | None] = {"stage": None, "data": None, "distill": "default", "evaluation": "default"}


def _type_name(default: Any) -> str:
    return ("a boolean" if isinstance(default, bool) else "an integer" if isinstance(default, int)
            else "a number" if isinstance(default, float) else "a string" if isinstance(default, str)
            else "a list" if isinstance(default, list) else "a mapping")  # fmt: skip


def _same_type(value: Any, default: Any) -> bool:
    if value is None or default is None:  # null: "not set" is allowed anywhere, and a null default fixes no type
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    for kind in (int, str, list, dict):
        if isinstance(default, kind):
            return isinstance(value, kind)
    return True


def check_types(cfg: Mapping[str, Any], root: str | Path | None = None) -> None:
    """Every setting of the stage, data, distill and evaluation nodes has the type of its default in the chosen
    option's YAML (``conf/stage/grpo.yaml`` for ``stage=grpo``): the one place each default and its type live;
    and a value within its range (:data:`r1v.core.values.RANGES`; null only where the default is null or the
    range says so). A wrong one is one line naming the key, the value and what is allowed, before anything is
    built."""
    base = Path(root or conf_dir())
    for node_name, option in TYPED_NODES.items():
        node = cfg.get(node_name)
        if not isinstance(node, Mapping):
            continue
        path = base / node_name / f"{option or node.get('name')}.yaml"
        if not path.is_file():  # an option a plugin stored in code: its own structure is its schema
            continue
        from omegaconf import OmegaConf

        defaults = OmegaConf.to_container(OmegaConf.load(path))
        _check_node(node, defaults, node_name, path, path.stem)  # type: ignore[arg-type]


def _check_node(node: Mapping[str, Any], defaults: Mapping[str, Any], where: str, path: Path, option: str) -> None:
    for key, default in defaults.items():
        if key not in node or key == "name":
            continue
        value, dotted = node[key], f"{where}.{key}"
        if isinstance(default, dict) and isinstance(value, Mapping):
            _check_node(value, default, dotted, path, option)
        elif not _same_type(value, default):
            raise ConfigError(f"{dotted}={value!r}: must be {_type_name(default)} (default {default!r} in "
                              f"conf/{path.parent.name}/{path.name})")  # fmt: skip
        else:
            check_range(dotted, value, default, option)


def build_plugin(registry: Registry, kind: str, node: Mapping[str, Any], where: str,
                 reserved: tuple[str, ...] = ("name",)) -> Any:  # fmt: skip
    """The plugin a config node names, built with the node's knobs; a factory that refuses a knob value
    (ValueError) becomes one line naming the node. On a node :func:`validate` checks (``where`` is one of
    :data:`PLUGIN_NODES` / :data:`OPTIONAL_PLUGIN_NODES`), knobs the plugin does not take are left out: validate
    refused any such knob the user set, so what is left are the YAML's knobs of the default plugin
    (:func:`other_plugins_defaults`)."""
    knobs = {k: v for k, v in node.items() if k not in reserved}
    if where in PLUGIN_NODES or where in OPTIONAL_PLUGIN_NODES:
        entry = registry.get(kind, str(node["name"]))
        if not entry.accepts_any_knob():
            knobs = {k: v for k, v in knobs.items() if k in entry.knobs()}
    try:
        return registry.build(kind, str(node["name"]), **knobs)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _first_of_sweep(override: str) -> str:
    """'stage.lr=1e-3,3e-3' -> 'stage.lr=1e-3' (pre-checking composes one job of a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (parsed,) = OverridesParser.create().parse_overrides([override])
    if parsed.is_sweep_override():
        first = next(iter(parsed.sweep_string_iterator()))
        return f"{parsed.get_key_element()}={first}"
    return override


def precheck_overrides(overrides: list[str], config: str = "config") -> None:
    """Compose ``config`` once with the user's overrides and translate Hydra's multi-line errors to one line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        mine = [_first_of_sweep(o) for o in overrides]
    except HydraException as e:
        raise ConfigError(f"override: cannot parse {overrides}: {str(e).splitlines()[0]}") from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        groups = sorted(g for g in loader.list_groups("") if g != "hydra")
        for o in mine:
            key = o.split("=", 1)[0].lstrip("+~")
            if key in groups:
                value = o.split("=", 1)[1]
                options = loader.get_group_options(key)
                for v in value.strip("[]").split(","):
                    if v and v != "null" and v not in options:
                        raise ConfigError(f"override {key}={v}: no option '{v}' in config group '{key}' "
                                          f"(options: {', '.join(options)}){did_you_mean(v, options)}"
                                          f"{get_registry().failure_note()}")  # fmt: skip
        try:
            cfg = compose(config, overrides=mine)
        except HydraException as e:
            raise ConfigError(explain_override(e, mine, groups, config)) from None
        from omegaconf import OmegaConf

        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"config: {', '.join(missing)} must be set (add {missing[0]}=...)")
        check_targets(OmegaConf.to_container(cfg))  # before Hydra instantiates anything
        runs = OmegaConf.select(cfg, "paths.runs")
        if runs:  # Hydra makes the run folder before r1v runs: an unwritable one would be a traceback
            check_writable(runs, "paths.runs")
    GlobalHydra.instance().clear()


def plugin_knob_overrides(overrides: list[str], config: str = "config") -> list[str]:
    """``stage.length.repetition_penalty=1.3`` for a knob the chosen plugin's factory takes but its config node does
    not list (the node holds only ``name``): Hydra would ask for ``+``; the knob is the plugin's, so it is added."""
    nodes = {**PLUGIN_NODES, **OPTIONAL_PLUGIN_NODES}
    candidates = [o for o in overrides if not o.startswith(("+", "~")) and "=" in o
                  and o.split("=", 1)[0].rpartition(".")[0] in nodes
                  and o.split("=", 1)[0].rpartition(".")[2] != "name"]  # fmt: skip
    if not candidates:
        return overrides
    try:
        base = compose([o for o in overrides if o not in candidates and "=" in o
                        and not o.startswith(("-", "hydra"))], config)  # fmt: skip
    except Exception:  # the other overrides are wrong: precheck_overrides says so in one line
        return overrides
    registry = get_registry()
    out = []
    for o in overrides:
        if o in candidates:
            parent, _, leaf = o.split("=", 1)[0].rpartition(".")
            node = node_at(base, parent)
            kind = nodes[parent][0]
            if isinstance(node, Mapping) and leaf not in node and node.get("name") in registry.names(kind) \
                    and leaf in registry.get(kind, node["name"]).knobs():  # fmt: skip
                o = "+" + o
        out.append(o)
    return out


def hydra_entry(hydra_main: Any, config: str, argv: list[str] | None = None) -> None:
    """The shared front of ``python -m r1v.train`` / ``r1v.eval`` / ``r1v.recipe``: register plugin configs,
    pre-check the overrides against ``config`` (one-line errors, exit 2), then hand over to Hydra."""
    import sys

    from r1v.core.registry import get_registry

    argv = sys.argv[1:] if argv is None else argv
    try:
        register_plugin_configs(get_registry())
        if "-m" not in argv and "--multirun" not in argv:
            argv = plugin_knob_overrides(argv, config)
        if not any(a in ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc") for a in argv):
            precheck_overrides([a for a in argv if "=" in a and not a.startswith(("-", "hydra"))], config=config)
    except (ConfigError, RegistryError) as e:
        print(f"r1v: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


def compose(overrides: list[str], config: str = "config") -> dict[str, Any]:
    """The resolved config of ``python -m r1v.train <overrides>`` (one-line errors, validated names and knobs)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from r1v.core.registry import get_registry

    register_resolvers()
    registry = get_registry()
    register_plugin_configs(registry)
    overrides = plugin_knob_overrides(list(overrides), config)
    precheck_overrides(overrides, config)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = OmegaConf.to_container(hydra_compose(config, overrides=overrides), resolve=True)
    GlobalHydra.instance().clear()
    validate(cfg, registry)
    return cfg  # type: ignore[return-value]
