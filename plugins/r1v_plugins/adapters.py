"""Adapters: R1V's MLP projector (model code: r1v.model.parts.mlp)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.model.parts.mlp import mlp


@hookimpl
def register_adapters(register):
    register("mlp", mlp, "R1V/InternVL mlp1: pixel shuffle + LayerNorm → Linear → GELU → Linear")
