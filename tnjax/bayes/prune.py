"""Rank read-out from lambda, and pruning that really shrinks the layers.

    lambdas = init_lambdas(model, prior)   # ... trained with em_update / SVI ...
    pruned, report, lambdas = prune_model(model, lambdas, threshold=1e-2)

A rank index r is kept when lambda_r > threshold * (the largest lambda of the layer). The
threshold is relative: the authors' code used absolute thresholds on lambda^2 (1e-4 to
1e-9 depending on the example, papers/bayes_paper.md section 1.5), which move with the
layer's scale and initialisation and were fragile. Pruning slices every core along every
axis tied to a removed index (`RankGroup.axes`) and rebuilds the layer through its
`replace_cores` (same class, format and every other setting, at the smaller ranks), so
parameters and FLOPs shrink; it changes the layer's output
only by the contribution of the removed slices (none when they are exactly zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tnjax.bayes.ranks import _tensor_layers_with_paths, rank_groups
from tnjax.nn.graph import replace_module

__all__ = ["read_ranks", "prune_layer", "prune_model"]


def read_ranks(
    lambdas_of_layer: Sequence[jax.typing.ArrayLike], threshold: float = 1e-2
) -> list[np.ndarray]:
    """Boolean keep masks, one per rank group of a layer.

    Index r of a group is kept when lambda_r > threshold * max(all of the layer's lambdas);
    a group whose lambdas all fall below keeps its largest index (a rank is at least 1).

    Args:
      lambdas_of_layer: the layer's lambda vectors, one (R,) per group.
      threshold: relative threshold in [0, 1).

    Returns:
      A NumPy bool mask (R,) per group.

    Raises:
      ValueError: a threshold outside [0, 1) or non-finite lambdas.
    """
    if not 0 <= threshold < 1:
        raise ValueError(
            f"threshold must be in [0, 1) (relative to the largest lambda), got {threshold}"
        )
    lams = [
        np.abs(np.asarray(jax.device_get(lam), np.float64)).reshape(-1) for lam in lambdas_of_layer
    ]
    if not lams:
        return []
    if not all(np.all(np.isfinite(lam)) for lam in lams):
        raise ValueError("lambdas contain NaN or inf; cannot read ranks (did training diverge?)")
    top = max(float(lam.max()) for lam in lams if lam.size)
    masks = []
    for lam in lams:
        mask = lam > threshold * top
        if lam.size and not mask.any():
            mask[int(np.argmax(lam))] = True
        masks.append(mask)
    return masks


def prune_layer(layer: nnx.Module, keep: Sequence[Any]) -> nnx.Module:
    """A new layer of the same class and format with only the kept rank indices.

    Every core is sliced along every axis tied to a group (`RankGroup.axes`, which include
    the Tucker core's axes) with `np.nonzero(mask)`; the layer is rebuilt at the new ranks
    with the sliced cores, its bias and `tnjax_name`. When the removed slices are zero the
    output equals the unpruned layer's (up to float rounding of a different contraction).
    `layer` is not modified. Runs on the host (shapes depend on the masks): not under jit.

    Args:
      layer: a tnjax Linear/Conv/Embed of a supported format.
      keep: one bool mask (R,) per group of `rank_groups(layer)` (e.g. from `read_ranks`).

    Raises:
      ValueError: a layer without rank groups, or masks of the wrong number or shape, or a
        mask keeping no index.
    """
    groups = rank_groups(layer)
    if not groups:
        raise ValueError(f"{type(layer).__name__} has no rank groups to prune")
    if len(keep) != len(groups):
        raise ValueError(
            f"{type(layer).__name__}(format={layer.format!r}) has {len(groups)} rank groups "
            f"(ranks {layer.ranks}) but {len(keep)} masks were given"
        )
    with jax.named_scope("tnjax.bayes.prune_layer"):
        # Host-side slicing: a one-off with data-dependent shapes, which would otherwise
        # compile one eager gather per core shape.
        cores = [np.asarray(jax.device_get(c[...])) for c in layer.cores]
        for g, mask in zip(groups, keep, strict=True):
            mask = np.asarray(mask, bool).reshape(-1)
            if mask.shape != (g.size,):
                raise ValueError(
                    f"mask of bond {g.bond} has shape {mask.shape}, expected ({g.size},)"
                )
            idx = np.nonzero(mask)[0]
            if idx.size == 0:
                raise ValueError(f"mask of bond {g.bond} keeps no index; a rank must be >= 1")
            for ci, axis in g.axes:
                cores[ci] = np.take(cores[ci], idx, axis=axis)
        return layer.replace_cores(cores)


def prune_model(
    model: nnx.Module,
    lambdas: Mapping[str, Sequence[jax.typing.ArrayLike]],
    threshold: float = 1e-2,
) -> tuple[nnx.Module, dict[str, dict[str, Any]], dict[str, list[jax.Array]]]:
    """A pruned copy of `model`: every layer named in `lambdas` cut to its read-out ranks.

    Args:
      model: the model (left untouched: it is cloned with `nnx.clone`).
      lambdas: {layer name: [lambda (R,) per group]} (names as in `tensor_layers`).
      threshold: relative threshold of `read_ranks`.

    Returns:
      (pruned model, report, pruned lambdas). The report maps each layer name to
      {"format", "ranks_before", "ranks_after", "params_before", "params_after"} (core
      parameters, bias excluded); the pruned lambdas keep the surviving entries, ready for
      further `em_update`s on the pruned model.

    Raises:
      ValueError: `lambdas` names a layer the model does not have.
    """
    new_model = nnx.clone(model)
    entries = {name: (path, layer) for name, path, layer in _tensor_layers_with_paths(new_model)}
    missing = [n for n in lambdas if n not in entries]
    if missing:
        raise ValueError(
            f"lambdas name layer(s) {missing} that the model does not have; its tensorized "
            f"layers are {sorted(entries)}"
        )
    report: dict[str, dict[str, Any]] = {}
    new_lambdas: dict[str, list[jax.Array]] = {}
    for name, lams in lambdas.items():
        path, layer = entries[name]
        keep = read_ranks(lams, threshold)
        new = prune_layer(layer, keep)
        if path:
            replace_module(new_model, path, new)
        else:  # the model is the layer itself
            new_model = new
        report[name] = {
            "format": layer.format,
            "ranks_before": tuple(int(r) for r in layer.ranks),
            "ranks_after": tuple(int(r) for r in new.ranks),
            "params_before": int(layer.num_params),
            "params_after": int(new.num_params),
        }
        new_lambdas[name] = [
            jnp.asarray(lam)[np.nonzero(m)[0]] for lam, m in zip(lams, keep, strict=True)
        ]
    return new_model, report, new_lambdas
