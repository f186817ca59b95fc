"""Block-wise distillation ("sequential training", TNN paper section 4): pieces for a trainer.

The compressed network is trained one block at a time: block k's output, computed from the
*compressed* network's own input to it (earlier blocks already compressed and trained),
is fitted to the *original* network's block-k output on the same images by MSE, with batch
norm in inference mode and only block k's parameters trained.

    blocks = distillation_blocks(student, [row["name"] for row in compressed_rows])
    loss = block_mse(student, teacher, blocks[0], images)      # inside jax.grad / jit
    trainable, frozen = nnx.split(student, block_param_filter(blocks[0]), ...)[1:]

A block is one compressed layer for networks without residual structure (LeNet-5: conv2,
fc1, fc2), and a residual *stage* (the layers named "stageS.*") for ResNets, where the
output matched is that of the stage's last residual block.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax.nn.graph import UNIT_ATTR, layer_name, module_at

__all__ = [
    "DistillBlock",
    "distillation_blocks",
    "capture_outputs",
    "block_mse",
    "block_param_filter",
]


@dataclasses.dataclass(frozen=True)
class DistillBlock:
    """One unit of sequential training.

    Attributes:
      name: e.g. "conv2" or "stage2".
      train_paths: graph paths whose parameters are trained (every nnx.Param below them).
      output_path: graph path of the module whose output is matched to the original's.
      layers: names of the compressed layers inside.
    """

    name: str
    train_paths: tuple[tuple, ...]
    output_path: tuple
    layers: tuple[str, ...]


def _named_paths(model: nnx.Module) -> dict[str, tuple]:
    return {layer_name(m): tuple(p) for p, m in nnx.iter_graph(model) if layer_name(m) is not None}


def _unit_paths(model: nnx.Module) -> dict[tuple, str]:
    """Graph path -> unit name of every module marked with `UNIT_ATTR`."""
    return {
        tuple(p): getattr(m, UNIT_ATTR)
        for p, m in nnx.iter_graph(model)
        if getattr(m, UNIT_ATTR, None) is not None
    }


def distillation_blocks(model: nnx.Module, layer_names: Sequence[str]) -> list[DistillBlock]:
    """The blocks of sequential training over the compressed layers `layer_names`.

    A layer inside a module marked as a unit (`UNIT_ATTR`, e.g. a ViT's transformer block)
    belongs to that unit: its compressed layers train together and the unit's output is
    matched. Otherwise a layer named "stageS.blockB.x" belongs to stage "stageS" whose unit
    is its parent module (the residual block); a stage trains all its residual blocks that
    hold compressed layers and matches the output of the last of them. Any other layer is a
    block by itself.
    Blocks are ordered by graph path, which follows the forward order of the zoo's models.
    """
    paths = _named_paths(model)
    missing = [n for n in layer_names if n not in paths]
    if missing:
        raise ValueError(f"layers {missing} are not in the model (it has {sorted(paths)})")
    units = _unit_paths(model)
    groups: dict[str, list[tuple[str, tuple]]] = {}
    for name in layer_names:
        path = paths[name]
        enclosing = [p for p in units if path[: len(p)] == p and len(p) < len(path)]
        if enclosing:
            unit = max(enclosing, key=len)
            group = units[unit]
        elif name.startswith("stage") and "." in name:
            group, unit = name.split(".", 1)[0], path[:-1]
        else:
            group, unit = name, path
        groups.setdefault(group, []).append((name, unit))
    blocks = []
    for group, members in groups.items():
        units = tuple(sorted({u for _, u in members}, key=_path_key))
        blocks.append(
            DistillBlock(
                name=group,
                train_paths=units,
                output_path=units[-1],
                layers=tuple(n for n, _ in members),
            )
        )
    return sorted(blocks, key=lambda b: _path_key(b.train_paths[0]))


def _path_key(path: tuple) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


def capture_outputs(
    model: nnx.Module, paths: Sequence[tuple], *inputs: Any
) -> tuple[Any, dict[tuple, jax.Array]]:
    """Runs `model(*inputs)` and also returns the outputs of the submodules at `paths`.

    Works under `jit`/`grad` (the outputs are traced values). If a submodule is called
    more than once, its last output is kept.
    """
    targets = {id(module_at(model, p)): tuple(p) for p in paths}
    classes = {type(module_at(model, p)) for p in paths}
    captured: dict[tuple, jax.Array] = {}
    originals = {cls: cls.__call__ for cls in classes}

    def wrap(original):
        @functools.wraps(original)
        def call(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            path = targets.get(id(self))
            if path is not None:
                captured[path] = out
            return out

        return call

    try:
        for cls, original in originals.items():
            cls.__call__ = wrap(original)
        result = model(*inputs)
    finally:
        for cls, original in originals.items():
            cls.__call__ = original
    missing = [p for p in paths if tuple(p) not in captured]
    if missing:
        raise ValueError(f"submodules at {missing} were not called by the forward pass")
    return result, captured


def block_mse(
    student: nnx.Module, teacher: nnx.Module, block: DistillBlock, *inputs: Any
) -> jax.Array:
    """Mean squared error between the block's outputs in `student` and in `teacher`.

    The teacher's output is a constant (stop_gradient). Both models are called as they are
    (put them in eval mode for batch norm in inference mode).
    """
    _, s_out = capture_outputs(student, [block.output_path], *inputs)
    _, t_out = capture_outputs(teacher, [block.output_path], *inputs)
    target = jax.lax.stop_gradient(t_out[block.output_path])
    diff = s_out[block.output_path].astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(diff * diff)


def block_param_filter(block: DistillBlock) -> Any:
    """An NNX filter selecting the `nnx.Param`s (cores included) under the block's paths."""

    def select(path: tuple, value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        return any(tuple(path[: len(p)]) == tuple(p) for p in block.train_paths)

    return select
