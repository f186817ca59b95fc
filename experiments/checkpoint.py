"""Orbax checkpoints of a training state pytree, with exact resume.

The state is saved as its flat list of leaves (so any pytree, `nnx.State` and optax states
included, round-trips) next to a JSON description of the tree (key paths, shapes, dtypes)
for people and for a clear error when a workdir holds a different model. Orbax writes each
step to a temporary directory and renames it when complete, so a run killed mid-save
(even `kill -9`) resumes from the previous complete checkpoint.

Arrays are saved as global arrays (each process writes its own shards; orbax coordinates
the processes of a multi-host run) and restored onto whatever shardings the restoring run
asks for, so a checkpoint written on 4 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.sharding import is_primary_process

__all__ = ["Checkpointer", "CheckpointMismatchError", "describe_tree"]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint in a workdir does not fit the state the config builds."""


def describe_tree(tree: Any) -> list[dict[str, Any]]:
    """[{path, shape, dtype}] of every leaf, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        {
            "path": jax.tree_util.keystr(path),
            "shape": list(np.shape(leaf)),
            "dtype": str(np.asarray(leaf).dtype) if not hasattr(leaf, "dtype") else str(leaf.dtype),
        }
        for path, leaf in flat
    ]


def _leaf_key(i: int) -> str:
    return f"leaf_{i:05d}"


class Checkpointer:
    """Saves and restores a training state pytree under `directory` (one subdir per step).

    Args:
      directory: where the steps go (created if missing).
      max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Writes `state` as checkpoint `step` (blocks until it is on disk)."""
        leaves = jax.tree.leaves(state)
        items = {
            _leaf_key(i): x if isinstance(x, jax.Array) else np.asarray(x)
            for i, x in enumerate(leaves)
        }
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                leaves=ocp.args.StandardSave(items),
                tree=ocp.args.JsonSave({"leaves": describe_tree(state)}),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None, *, shardings: Any = None) -> Any:
        """The checkpoint `step` (default: the latest) as a pytree shaped like `like`.

        `shardings`, if given, is a pytree like `like` (a prefix of it) with a
        `jax.sharding.Sharding` (or None: a host numpy array) per leaf; arrays are read
        straight into them, whatever the mesh of the run that saved them. Without
        `shardings` every leaf comes back as a numpy array.

        Raises:
          FileNotFoundError: no checkpoint.
          CheckpointMismatchError: the saved leaves do not match `like`'s structure.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = self._manager.restore(step, args=ocp.args.Composite(tree=ocp.args.JsonRestore()))
        saved_desc = saved["tree"]["leaves"]
        like_desc = describe_tree(like)
        if [(d["shape"], d["dtype"]) for d in saved_desc] != [
            (d["shape"], d["dtype"]) for d in like_desc
        ]:
            diff = _first_difference(saved_desc, like_desc)
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not match the model "
                f"and optimizer this config builds ({diff}). Use a new --workdir, or the "
                "config that wrote it."
            )
        leaves, treedef = jax.tree.flatten(like)
        targets = [None] * len(leaves) if shardings is None else treedef.flatten_up_to(shardings)
        abstract = {
            _leaf_key(i): _restore_target(x, target)
            for i, (x, target) in enumerate(zip(leaves, targets, strict=True))
        }
        restored = self._manager.restore(
            step, args=ocp.args.Composite(leaves=ocp.args.StandardRestore(abstract))
        )["leaves"]
        new_leaves = [restored[_leaf_key(i)] for i in range(len(leaves))]
        return jax.tree.unflatten(treedef, new_leaves)

    def close(self) -> None:
        self._manager.close()


def _restore_target(like: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """What orbax restores a leaf as: a jax.Array on `sharding`, or without one a host
    numpy array (whatever devices the checkpoint was written from)."""
    dtype = like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype
    if sharding is None:
        return np.empty(np.shape(like), dtype)
    return jax.ShapeDtypeStruct(np.shape(like), dtype, sharding=sharding)


def _first_difference(saved: list[dict], like: list[dict]) -> str:
    if len(saved) != len(like):
        return f"{len(saved)} arrays saved, {len(like)} expected"
    for s, l in zip(saved, like, strict=True):
        if (s["shape"], s["dtype"]) != (l["shape"], l["dtype"]):
            return (
                f"{s['path']} was saved as {s['dtype']}{s['shape']}, "
                f"the config builds {l['path']} {l['dtype']}{l['shape']}"
            )
    return "same shapes"


def write_json(path: str, obj: Any) -> None:
    """Atomically writes `obj` as indented JSON (on the primary process only)."""
    if not is_primary_process():
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)
