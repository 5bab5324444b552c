"""Compatibility: the shared types moved to :mod:`r1v.core.interfaces` (plugins written against
``r1v.interfaces`` keep working)."""

from r1v.core.interfaces import *  # noqa: F403
