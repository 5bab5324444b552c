"""r1v's built-in plugins: one module per component family, each a ``register_*`` hook pointing at library code.
They are listed explicitly by name in :data:`r1v.core.registry.BUILTIN_MODULES` (not found by entry point), as
pytest lists its own plugins."""
