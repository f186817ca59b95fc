"""Small graph surgery on NNX models: layer names, finding and replacing submodules.

A path is what `nnx.iter_graph` yields: attribute names and list indices, e.g.
("blocks", 3, "conv1"). These helpers serve `tnjax.bayes`, `tnjax.compress` and
`tnjax.models` alike, so they sit below all three.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

__all__ = ["NAME_ATTR", "UNIT_ATTR", "layer_name", "module_at", "replace_module", "named_layers"]

# Attribute holding a layer's name on the module (set by `tnjax.models.LayerFactory`).
NAME_ATTR = "tnjax_name"
# Attribute naming a module that is one unit of block-wise distillation (a transformer
# block, say): its compressed layers train together and its output is matched.
UNIT_ATTR = "tnjax_distill_unit"


def layer_name(module: Any) -> str | None:
    """The name stored on a layer (by `LayerFactory` or compression), or None."""
    return getattr(module, NAME_ATTR, None)


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


def named_layers(model: nnx.Module, cls: type | tuple[type, ...]) -> list[tuple[str, tuple, Any]]:
    """(name, path, module) of every submodule of `model` that is an instance of `cls`.

    The name is the layer's stored name (`layer_name`) or else its graph path joined by "/"
    (e.g. "layers/0"; the class name for the model itself).

    Raises:
      ValueError: two of those layers share a name.
    """
    out = []
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, cls):
            continue
        name = layer_name(module)
        if name is None:
            name = "/".join(str(p) for p in path) or type(module).__name__
        out.append((name, tuple(path), module))
    names = [n for n, _, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several layers share the name(s) {dupes}; names must be unique")
    return out
