"""Compatibility: the hook specifications moved to :mod:`r1v.core.hookspecs` (plugins written against
``r1v.hookspecs`` keep working)."""

from r1v.core.hookspecs import *  # noqa: F403
from r1v.core.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
