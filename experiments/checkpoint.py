"""Orbax checkpoints of a training state pytree, with exact resume and a fallback.

Each step directory `DIR/<step>` holds two items:

- "state": the state pytree itself, saved with orbax's standard pytree checkpointing and
  keyed by its real key paths (`['train']['params']['conv1']['kernel'].value` is
  `train.params.conv1.kernel.value`), so plain orbax reads it without this module:
  `ocp.StandardCheckpointer().restore(f"{DIR}/{step}/state")` gives nested dicts.
  `nnx.State`, optax states (namedtuples, tuples, `EmptyState`), `jnp` and numpy scalars
  all round-trip bit for bit.
- "tree": a JSON description of the tree (key path, shape, dtype of every leaf) for people
  and for a clear `CheckpointMismatchError` naming the first differing path when a workdir
  holds a different model.

Checkpoints of the earlier flat layout (an item "leaves" holding `leaf_00000`... in
flattening order, next to the same "tree" item) still restore, matched by position.

Orbax writes each step to a temporary directory and renames it when complete, and deletes
the steps beyond `max_to_keep` only after that rename, so a run killed mid-save (even
`kill -9`) resumes from the previous complete checkpoint. `restore_latest` also survives a
newest checkpoint damaged later (truncated, deleted or garbled files, a half-written step
directory): it warns in one line and falls back to the step before. Write failures (full
disk, read-only or missing directory) raise a one-line `CheckpointError`.

Arrays are saved as global arrays (each process writes its own shards; orbax coordinates
the processes of a multi-host run) and restored onto whatever shardings the restoring run
asks for, so a checkpoint written on 4 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging as std_logging
import os
import re
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from experiments.sharding import is_primary_process

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "CheckpointMismatchError",
    "describe_tree",
    "write_json",
]

STATE_ITEM = "state"  # the pytree, keyed by its paths
TREE_ITEM = "tree"  # the JSON description
FLAT_ITEM = "leaves"  # the earlier layout: leaf_00000... by flattening order


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read (disk full, read-only, damaged files)."""


class CheckpointMismatchError(CheckpointError):
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

    Raises:
      CheckpointError: `directory` cannot be created (under a file, read-only parent).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as e:
            raise CheckpointError(
                f"cannot create the checkpoint directory {self.directory}: {_reason(e)}"
            ) from e

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def step_directory(self, step: int) -> str:
        """Where checkpoint `step` lives."""
        return os.path.join(self.directory, str(int(step)))

    def save(self, step: int, state: Any) -> None:
        """Writes `state` as checkpoint `step` (blocks until it is on disk).

        A checkpoint already at `step` (one `restore_latest` skipped as unreadable) is
        replaced. Older steps beyond `max_to_keep` are deleted only once this one is complete.

        Raises:
          CheckpointError: the write failed (full disk, read-only directory...); the OS
            error is its `__cause__`.
        """
        step = int(step)
        state = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), state)
        try:
            with _quiet_orbax_failures():
                self._save(step, state)
        except Exception as e:
            raise CheckpointError(
                f"cannot write checkpoint step {step} to {self.directory}: {_reason(e)}"
            ) from e

    def _save(self, step: int, state: Any) -> None:
        if step in self._manager.all_steps():
            logging.warning("replacing the checkpoint %s", self.step_directory(step))
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    TREE_ITEM: ocp.args.JsonSave({"leaves": describe_tree(state)}),
                }
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None, *, shardings: Any = None) -> Any:
        """The checkpoint `step` (default: the latest) as a pytree shaped like `like`.

        `shardings`, if given, is a pytree prefix of `like` with a `jax.sharding.Sharding`
        (or None: host numpy arrays) per subtree; arrays are read straight into them, whatever
        the mesh of the run that saved them. Without `shardings` every leaf comes back as a
        numpy array.

        Raises:
          FileNotFoundError: no checkpoint.
          CheckpointMismatchError: the saved tree does not match `like` (a different model).
          CheckpointError: the checkpoint cannot be read (damaged files).
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        with _quiet_orbax_failures():
            return self._restore_step(like, step, _leaf_shardings(like, shardings))

    def restore_latest(self, like: Any, *, shardings: Any = None) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores, or None if there is none.

        A checkpoint that cannot be read is skipped with a one-line warning naming its
        directory and the error, and the step before it is tried; nothing is deleted.
        `like` and `shardings` are those of `restore`.

        Raises:
          CheckpointMismatchError: at once, without falling back (the workdir holds a
            different model: the wrong config, not a damaged file).
          CheckpointError: every checkpoint is unreadable.
        """
        targets = _leaf_shardings(like, shardings)
        steps = sorted(self._manager.all_steps(), reverse=True)
        errors = []
        with _quiet_orbax_failures():
            for i, step in enumerate(steps):
                try:
                    return step, self._restore_step(like, step, targets)
                except CheckpointMismatchError:
                    raise
                except CheckpointError as e:
                    after = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "none older"
                    logging.warning("%s; %s", e, after)
                    errors.append(e)
        if not errors:
            return None
        raise CheckpointError(
            f"none of the {len(steps)} checkpoints in {self.directory} can be restored "
            f"(steps {', '.join(map(str, steps))}; the newest: {errors[0]}). Delete the "
            "directory to start over."
        ) from errors[0]

    def close(self) -> None:
        self._manager.close()

    def _restore_step(self, like: Any, step: int, shardings: list[Any]) -> Any:
        """Checkpoint `step` onto `like` with one sharding (or None) per leaf of `like`."""
        path = self.step_directory(step)
        try:
            saved = self._manager.restore(
                step, args=ocp.args.Composite(tree=ocp.args.JsonRestore())
            )
            saved_desc = saved[TREE_ITEM]["leaves"]
            flat = os.path.isdir(os.path.join(path, FLAT_ITEM))
        except Exception as e:
            raise CheckpointError(f"cannot read the checkpoint {path}: {_reason(e)}") from e
        diff = _first_difference(saved_desc, describe_tree(like), by_path=not flat)
        if diff is not None:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not match the model "
                f"and optimizer this config builds ({diff}). Use a new --workdir, or the "
                "config that wrote it."
            )
        leaves, treedef = jax.tree.flatten(like)
        targets = [_restore_target(x, s) for x, s in zip(leaves, shardings, strict=True)]
        try:
            if flat:
                return _restore_flat(self._manager, step, treedef, targets)
            args = ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardRestore(jax.tree.unflatten(treedef, targets))}
            )
            return self._manager.restore(step, args=args)[STATE_ITEM]
        except Exception as e:
            raise CheckpointError(f"cannot read the checkpoint {path}: {_reason(e)}") from e


@contextlib.contextmanager
def _quiet_orbax_failures():
    """Silences the echoes of an orbax read or write aborted by a damaged file or a full
    disk, which the caller reports once: tensorstore operations still in flight call back
    into orbax's closed event loop (unraisable "Event loop is closed"), asyncio logs their
    unretrieved exceptions when they are collected, and orbax's worker threads log the error
    with its traceback. Other unraisable exceptions and log records pass."""
    previous = sys.unraisablehook

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    def keep(record):
        return "exception was never retrieved" not in record.getMessage()

    def keep_non_orbax_errors(record):
        return record.levelno < std_logging.ERROR or "/orbax/" not in record.pathname

    asyncio_log = std_logging.getLogger("asyncio")
    absl_log = std_logging.getLogger("absl")
    sys.unraisablehook = hook
    asyncio_log.addFilter(keep)
    absl_log.addFilter(keep_non_orbax_errors)
    try:
        yield
    finally:
        gc.collect()  # the unretrieved futures report now, while filtered
        absl_log.removeFilter(keep_non_orbax_errors)
        asyncio_log.removeFilter(keep)
        sys.unraisablehook = previous


def _restore_flat(manager: ocp.CheckpointManager, step: int, treedef, targets: list) -> Any:
    """A checkpoint of the earlier layout (leaf_00000... by flattening order) as `treedef`."""
    abstract = {_leaf_key(i): t for i, t in enumerate(targets)}
    args = ocp.args.Composite(**{FLAT_ITEM: ocp.args.StandardRestore(abstract)})
    restored = manager.restore(step, args=args)[FLAT_ITEM]
    return jax.tree.unflatten(treedef, [restored[_leaf_key(i)] for i in range(len(targets))])


def _leaf_shardings(like: Any, shardings: Any) -> list[Any]:
    """One sharding (or None) per leaf of `like`, from a pytree prefix `shardings` of it."""
    if shardings is None:
        return [None] * len(jax.tree.leaves(like))

    def is_spec(x):
        return x is None or isinstance(x, jax.sharding.Sharding)

    specs, spec_def = jax.tree.flatten(shardings, is_leaf=is_spec)
    subtrees = spec_def.flatten_up_to(like)
    return [s for s, sub in zip(specs, subtrees, strict=True) for _ in jax.tree.leaves(sub)]


def _restore_target(like: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """What orbax restores a leaf as: a jax.Array on `sharding`, or without one a host
    numpy array (whatever devices the checkpoint was written from)."""
    dtype = like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype
    if sharding is None:
        return np.empty(np.shape(like), dtype)
    return jax.ShapeDtypeStruct(np.shape(like), dtype, sharding=sharding)


def _first_difference(saved: list[dict], like: list[dict], *, by_path: bool) -> str | None:
    """The first leaf where the saved description and `like`'s differ, in words, or None.

    `by_path`: compare key paths too (the pytree layout is keyed by them; the flat layout
    by position only).
    """

    def key(d):
        return (d["path"], d["shape"], d["dtype"]) if by_path else (d["shape"], d["dtype"])

    for s, l in zip(saved, like, strict=False):
        if key(s) == key(l):
            continue
        if s["path"] == l["path"] or not by_path:
            return (
                f"{s['path']} was saved as {s['dtype']}{s['shape']}, "
                f"the config builds {l['path']} {l['dtype']}{l['shape']}"
            )
        return (
            f"{s['path']} {s['dtype']}{s['shape']} was saved where the config builds "
            f"{l['path']} {l['dtype']}{l['shape']}"
        )
    if len(saved) > len(like):
        return f"{saved[len(like)]['path']} was saved, the config does not build it"
    if len(saved) < len(like):
        return f"the config builds {like[len(saved)]['path']}, the checkpoint lacks it"
    return None


_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")


def _reason(e: BaseException) -> str:
    """A one-line reason for `e`: its OS error ("[Errno 28] No space left on device") when
    one is in its chain or in a tensorstore message, else its type and first line."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno is not None:
            return str(x)
        if m := _OS_ERROR_CODE.search(str(x)):
            return f"[Errno {m.group(1)}] {os.strerror(int(m.group(1)))}"
        todo += [x.__cause__, x.__context__]
    lines = str(e).strip().splitlines()
    line = lines[0].split(" [tensorstore_spec")[0] if lines else ""
    line = line if len(line) <= 300 else f"{line[:120]} ... {line[-175:]}"  # cause, detail
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


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
