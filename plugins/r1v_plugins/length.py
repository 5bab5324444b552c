"""Length controllers: ``none`` and DAPO's soft overlong punishment."""

from __future__ import annotations

from r1v import hookimpl


class NoLengthControl:
    def __call__(self, length: int) -> float:
        return 0.0


class Overlong:
    """DAPO soft overlong punishment: 0 up to max_len − buffer, then linearly to −1 at max_len."""

    def __init__(self, max_len: int, buffer: int) -> None:
        if not 0 < buffer <= max_len:
            raise ValueError(f"length 'overlong': need 0 < buffer ≤ max_len, got buffer={buffer}, max_len={max_len}")
        self.max_len, self.buffer = max_len, buffer

    def __call__(self, length: int) -> float:
        if length <= self.max_len - self.buffer:
            return 0.0
        if length > self.max_len:
            return -1.0
        return (self.max_len - self.buffer - length) / self.buffer


def none() -> NoLengthControl:
    """No length shaping."""
    return NoLengthControl()


def overlong(max_len: int = 8192, buffer: int = 1024) -> Overlong:
    """DAPO soft overlong punishment added to the reward."""
    return Overlong(max_len, buffer)


@hookimpl
def register_length_controllers(register):
    register("none", none)
    register("overlong", overlong)
