"""Device meshes and the shardings of a training state (JAX's own `jax.sharding`).

A run's mesh has two axes, `data` and `model` (`config.mesh`):

    mesh.data = -1            # devices along `data` (-1: all that `model` leaves)
    mesh.model = 1            # devices along `model`
    mesh.shard_params = None  # regex on a state leaf's path: which arrays go on `model`
    mesh.shard_min_size = 0   # ... and only those with at least this many elements

Batches are split along `data`. Every state array (parameters, batch-norm statistics,
optimiser moments) is replicated, except those whose path matches `shard_params` (and have at
least `shard_min_size` elements): they are split along `model` on their largest axis that
the `model` size divides, e.g. the vocabulary axis of a TT-matrix embedding core
(r, V_k, e_k, r). The optimiser moments of a parameter carry the parameter's path, so they
are split the same way. XLA inserts the collectives (the gradient all-reduce over `data`,
the gathers of sharded cores) from these shardings.

With several processes (`--multihost`, `jax.distributed.initialize()`) the mesh spans every
process's devices, each process feeds its own rows of the global batch
(`input_pipeline.process_rows`) and `shard_batch` assembles them with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "MESH_AXES",
    "mesh_config",
    "make_mesh",
    "leaf_spec",
    "leaf_path",
    "state_shardings",
    "describe_shardings",
    "is_primary_process",
    "check_batch_size",
    "shard_batch",
]

MESH_AXES = ("data", "model")
_DEFAULTS = {"data": -1, "model": 1, "shard_params": None, "shard_min_size": 0}


def mesh_config(config: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
    """`config.mesh` with defaults filled in; a misspelt key is an error.

    Raises:
      ValueError: an unknown key, or a shard_params that is not a valid regex.
    """
    given = dict(config.get("mesh", None) or {}) if config is not None else {}
    unknown = set(given) - set(_DEFAULTS)
    if unknown:
        raise ValueError(
            f"config.mesh: unknown key(s) {sorted(unknown)}; valid: {sorted(_DEFAULTS)}"
        )
    out = ml_collections.ConfigDict({**_DEFAULTS, **given})
    try:
        re.compile(out.shard_params or "")
    except re.error as e:
        raise ValueError(
            f"config.mesh.shard_params={out.shard_params!r}: not a regex ({e})"
        ) from None
    return out


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: every device of every process).

    Args:
      data: devices along `data`; -1 (or 0): all the devices `model` leaves.
      model: devices along `model`, >= 1.
      devices: the devices, e.g. `jax.devices()[:1]` for a one-device run.

    Raises:
      ValueError: the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if model < 1 or n % model:
        raise ValueError(
            f"config.mesh.model={model}: must be >= 1 and divide the {n} devices "
            f"({jax.default_backend()}); e.g. 1"
        )
    if data in (-1, 0):
        data = n // model
    if data < 1 or data * model != n:
        raise ValueError(
            f"config.mesh: data={data} x model={model} = {data * model} devices, but there are "
            f"{n}; set data=-1 to use all of them, or a data x model that equals {n}"
        )
    # Auto axes: XLA propagates the shardings through the step (Explicit axes would demand
    # out_sharding= annotations on gathers such as embedding lookups).
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, model), MESH_AXES, axis_types=auto, devices=devices)


def leaf_spec(path: str, shape: Sequence[int], model_size: int, pattern: str, min_size: int) -> P:
    """The PartitionSpec of one state array: replicated, or split along `model`.

    Split when `pattern` is non-empty and found in `path`, the array has at least
    `min_size` elements and an axis that `model_size` divides (the largest such axis).
    """
    if model_size <= 1 or not pattern or not re.search(pattern, path):
        return P()
    if math.prod(shape) < max(min_size, 1):
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % model_size == 0:
            return P(*[("model" if a == axis else None) for a in range(len(shape))])
    return P()


def leaf_path(path: tuple) -> str:
    """'params/tables/0/cores/1' style path of a pytree leaf (keys, indices, attributes)."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def state_shardings(state: Any, mesh: Mesh, config: Mapping[str, Any] | None = None) -> Any:
    """NamedShardings for every leaf of `state` (a pytree of arrays), by `leaf_spec`.

    Args:
      state: the training state (or any pytree of arrays / ShapeDtypeStructs).
      mesh: a mesh from `make_mesh`.
      config: the run's config (its `mesh` field) or None (everything replicated).

    Returns:
      A pytree of `NamedSharding`s with the structure of `state`.
    """
    mc = mesh_config(config)
    model_size = mesh.shape["model"]

    def one(path, leaf):
        name, shape = leaf_path(path), jax.numpy.shape(leaf)
        spec = leaf_spec(name, shape, model_size, mc.shard_params, int(mc.shard_min_size))
        wanted = model_size > 1 and mc.shard_params and re.search(mc.shard_params, name)
        if wanted and spec == P() and math.prod(shape) >= max(int(mc.shard_min_size), 1):
            logging.warning(
                "%s %s matches shard_params=%r but no axis is divisible by model=%d: replicated",
                name,
                tuple(shape),
                mc.shard_params,
                model_size,
            )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, state)


def describe_shardings(state: Any, shardings: Any) -> list[str]:
    """'path shape -> spec' lines of the leaves that are not replicated (for the log)."""
    lines = []
    flat_state = jax.tree_util.tree_flatten_with_path(state)[0]
    flat_sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sh in zip(flat_state, flat_sh, strict=True):
        if any(a is not None for a in sh.spec):
            lines.append(f"{leaf_path(path)} {tuple(jax.numpy.shape(leaf))} -> {sh.spec}")
    return lines


def is_primary_process() -> bool:
    """Whether this process writes the run's files (metrics, summary, plots): process 0.

    Checkpoints are the exception: every process writes its own shards through orbax.
    """
    return jax.process_index() == 0


# ------------------------------------------------------------------------- batch placement


def check_batch_size(batch_size: int, num_devices: int) -> None:
    """Raises ValueError unless batch_size splits evenly over num_devices."""
    if num_devices < 1 or batch_size < 1:
        raise ValueError(
            f"batch_size and num_devices must be >= 1, got {batch_size} and {num_devices}"
        )
    if batch_size % num_devices:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {num_devices} devices it is split "
            f"over; use a multiple of {num_devices}, e.g. "
            f"{max(num_devices, batch_size // num_devices * num_devices)}"
        )


def _leading_shards(sharding: jax.sharding.Sharding, ndim: int) -> int:
    """How many pieces `sharding` cuts the leading axis of an ndim-array into."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = sharding.spec
        axes = spec[0] if len(spec) else None
        if axes is None:
            return 1
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        return math.prod(sharding.mesh.shape[a] for a in axes)
    if sharding.is_fully_replicated:
        return 1
    # Other shardings: the shard count of an axis divides the device count, so a probe of
    # that size along every axis is divisible.
    n = len(sharding.device_set)
    return n // sharding.shard_shape((n,) * ndim)[0]


def shard_batch(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding | None
) -> dict[str, jax.Array]:
    """Puts a host batch on devices, split along the leading (batch) axis.

    Args:
      batch: columns with a common leading size B (this process's examples).
      sharding: a data-parallel sharding such as
        `NamedSharding(mesh, PartitionSpec("data"))`, or None for the default device.

    Returns:
      The same columns as jax.Arrays. With several processes the result is the global
      array assembled from each process's batch.

    Raises:
      ValueError: B (times the process count) is not divisible by the number of shards of
        the leading axis.
    """
    if sharding is None:
        return {key: jax.device_put(value) for key, value in batch.items()}
    nproc = jax.process_count()
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch[{key!r}] is a scalar; batch columns need a leading axis")
        shards = _leading_shards(sharding, value.ndim)
        global_b = value.shape[0] * nproc
        if global_b % shards:
            raise ValueError(
                f"batch[{key!r}] has leading size {global_b} (shape {value.shape}"
                f"{f' x {nproc} processes' if nproc > 1 else ''}), not divisible by the "
                f"{shards} devices along the sharded axis; make the batch size a multiple of "
                f"{shards} (see check_batch_size)"
            )
        if nproc > 1:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[key] = jax.device_put(value, sharding)
    return out
