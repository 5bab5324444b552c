"""OmegaConf resolvers for the Hydra apps' own settings (conf/config.yaml ``hydra:``): a sweep job's folder name
and the config groups ``--help`` lists. Registered by :func:`r1v.core.config.register_resolvers`."""

from __future__ import annotations

import hashlib
import re
import sys
from typing import Any

SUBDIR_MAX = 80  # characters of a sweep job's folder name, job number included
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # anything else in a value (/ , [ ] = quotes spaces) becomes "-"


def sweep_subdir(num: Any, overrides: Any, exclude: Any = (), limit: int = SUBDIR_MAX) -> str:
    """A sweep job's folder name: ``<job number>_<key>-<value>+<key>-<value>…`` from the job's overrides (its
    ``hydra.overrides.task``, less ``exclude``), each key by its last part (``stage.lr=1e-3`` -> ``lr-1e-3``): first
    the keys this command sweeps (:func:`swept_keys`: what tells the jobs apart, kept by a cut), then the others in
    the order given. One flat name (Hydra's ``override_dirname`` keeps a value's "/", so ``checkpoint=runs/re``
    nested a folder), of at most ``limit`` characters (a long one is cut and ends in 8 hex digits of all the
    overrides, so two cut names still differ), and usable as it is in ``checkpoint=<sweep>/<job>`` (no "=" or
    ","). The job number first keeps the jobs apart and in order."""
    parts = []
    swept = swept_keys(sys.argv[1:])
    for item in sorted(overrides or (), key=lambda o: str(o).partition("=")[0].lstrip("+~") not in swept):
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key in set(exclude or ()) or key.startswith("hydra."):
            continue
        value = _UNSAFE.sub("-", value).strip("-")
        parts.append(f"{key.rsplit('.', 1)[-1]}-{value}" if value else key.rsplit(".", 1)[-1])
    name = "_".join([str(num), "+".join(parts)]) if parts else str(num)
    if len(name) <= limit:
        return name
    digest = hashlib.sha1("\n".join(map(str, overrides)).encode()).hexdigest()[:8]
    return f"{name[: limit - len(digest) - 1].rstrip('+-_')}_{digest}"


def swept_keys(argv: list[str]) -> set[str]:
    """The keys that ``argv`` (a ``-m`` command line) sweeps: ``stage.lr`` for ``stage.lr=1e-3,3e-3``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, keys = OverridesParser.create(), set()
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "hydra.")):
            continue
        try:
            (parsed,) = parser.parse_overrides([arg])
        except HydraException:  # not this function's to report: the pre-check has said so already
            continue
        if parsed.is_sweep_override():
            keys.add(parsed.get_key_element().lstrip("+~"))
    return keys


def app_groups(*hidden: str) -> str:
    """The config groups and their options, one ``group: a, b`` line each as Hydra's ``$APP_CONFIG_GROUPS``
    writes them, less Hydra's own groups and ``hidden`` (``recipe``: its options belong to ``python -m
    r1v.recipe``, not to the app whose help this is). Called while Hydra renders ``--help``."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()

    def groups(parent: str) -> list[str]:
        found = []
        for g in loader.list_groups(parent):
            name = f"{parent}/{g}" if parent else g
            if name == "hydra" or name in hidden:
                continue
            if loader.get_group_options(name, ObjectType.CONFIG):
                found.append(name)
            if loader.get_group_options(name, ObjectType.GROUP):
                found += groups(name)
        return found

    return "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in sorted(groups("")))
