"""r1v: training R1V-style vision-language reasoning models, as a plugin model zoo."""

from r1v.core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
