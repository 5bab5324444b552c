"""Rollout engines: transformers' generate and the static-cache engine (r1v.generation)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.generation.hf import hf, static


@hookimpl
def register_rollout_engines(register):
    register("hf", hf)
    register("static", static)
