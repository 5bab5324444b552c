"""Length controllers: none, overlong, DRLC, fixed (r1v.rl.length)."""

from __future__ import annotations

from r1v import hookimpl
from r1v.rl.length import drlc, fixed, none, overlong


@hookimpl
def register_length_controllers(register):
    register("none", none)
    register("overlong", overlong)
    register("drlc", drlc)
    register("fixed", fixed)
