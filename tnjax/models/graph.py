"""Graph helpers, kept importable from here; they live in `tnjax.nn.graph`."""

from tnjax.nn.graph import module_at, replace_module

__all__ = ["module_at", "replace_module"]
