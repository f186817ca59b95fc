"""Small graph surgery on NNX models: find and replace a submodule by its graph path.

A path is what `nnx.iter_graph` yields: attribute names and list indices, e.g.
("blocks", 3, "conv1").
"""

from __future__ import annotations

from flax import nnx

__all__ = ["module_at", "replace_module"]


def module_at(model: nnx.Module, path: tuple) -> nnx.Module:
    """The submodule of `model` at `path`."""
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def replace_module(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    """Puts `new` where `path` points in `model` (in place)."""
    parent = module_at(model, tuple(path[:-1]))
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)
