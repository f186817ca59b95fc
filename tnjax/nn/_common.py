"""Pieces shared by the tensorized layers: the Core variable, modes, budgets, init scale."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax.formats import modes as modes_lib

__all__ = [
    "pad_cores",
    "Core",
    "resolve_modes",
    "fit_ranks",
    "uniform_ranks",
    "dense_init_std",
    "DEFAULT_NUM_MODES",
]

DEFAULT_NUM_MODES = 3
# A factorisation whose largest mode exceeds this multiple of the balanced size n**(1/d)
# is replaced by a padded, balanced one (e.g. a prime vocabulary size).
_MAX_IMBALANCE = 4.0
# fit_ranks searches rank grids with at most this many points exhaustively when its local
# search misses the budget.
_MAX_GRID = 2**14


class Core(nnx.Param):
    """A factor or core of a tensorized layer.

    Select them with NNX filters, e.g. `nnx.state(model, tnjax.nn.Core)` for priors,
    pruning or a separate optimiser; they are also `nnx.Param`s, so plain optimisers see them.
    """


def resolve_modes(
    features: int, modes: Sequence[int] | None, num_modes: int, name: str
) -> tuple[tuple[int, ...], int]:
    """Chooses the mode sizes of a feature dimension.

    Args:
      features: size of the dimension (e.g. `in_features`).
      modes: explicit modes, whose product must equal `features`; or None.
      num_modes: number of modes when `modes` is None.
      name: argument name for error messages (e.g. "in_modes").

    Returns:
      (modes, padded_size): the modes and their product, which exceeds `features` only
      when no balanced exact factorisation exists (the layer pads with zeros and slices,
      invisibly to the caller).
    """
    if features < 1:
        raise ValueError(f"{name}: the feature size must be >= 1, got {features}")
    if modes is not None:
        modes = tuple(int(m) for m in modes)
        if any(m < 1 for m in modes) or math.prod(modes) != features:
            raise ValueError(
                f"{name}={modes} multiply to {math.prod(modes)} but the feature size is "
                f"{features}; pass modes whose product is {features} (e.g. "
                f"{modes_lib.factorize(features, len(modes) or 1)}) or leave {name}=None"
            )
        return modes, features
    if num_modes < 1:
        raise ValueError(f"{name}: num_modes must be >= 1, got {num_modes}")
    exact = tuple(modes_lib.factorize(features, num_modes))
    if max(exact) <= _MAX_IMBALANCE * features ** (1.0 / num_modes):
        return exact, features
    padded = tuple(modes_lib.padded_factorize(features, num_modes))
    return padded, math.prod(padded)


def uniform_ranks(rank: int | Sequence[int], count: int, name: str) -> tuple[int, ...]:
    """Expands an int rank to `count` ranks, or checks a sequence has `count` entries."""
    if isinstance(rank, int):
        ranks = (rank,) * count
    else:
        ranks = tuple(int(r) for r in rank)
        if len(ranks) != count:
            raise ValueError(f"{name} needs {count} ranks, got {len(ranks)}: {ranks}")
    if any(r < 1 for r in ranks):
        raise ValueError(f"{name}: ranks must be >= 1, got {ranks}")
    return ranks


def fit_ranks(
    num_params: Callable[[tuple[int, ...]], int],
    max_ranks: Sequence[int],
    budget: float,
    *,
    what: str,
    tolerance: float = 0.1,
) -> tuple[int, ...]:
    """Ranks whose parameter count is closest to `budget`.

    Ranks grow from all-ones, one position at a time round-robin (the smallest rank first),
    keeping the configuration nearest `budget` (in ratio); a local search then moves one rank
    up or down, or one up and another down, while that gets nearer. When the result is more
    than `tolerance` away a warning names the fraction actually reached.

    Args:
      num_params: parameter count of a rank tuple.
      max_ranks: largest feasible rank per position.
      budget: target parameter count.
      what: description for the warning (layer and format).
      tolerance: relative distance to the budget tolerated silently.
    """
    max_ranks = tuple(int(m) for m in max_ranks)

    def error(r: tuple[int, ...]) -> float:
        return abs(math.log(num_params(r) / budget))

    # Phase 1: balanced growth, round-robin from all-ones, until well past the budget.
    ranks = [1] * len(max_ranks)
    best = tuple(ranks)
    best_err = error(best)
    while True:
        growable = [i for i, r in enumerate(ranks) if r < max_ranks[i]]
        if not growable:
            break
        i = min(growable, key=lambda k: (ranks[k], k))
        ranks[i] += 1
        err = error(tuple(ranks))
        if err < best_err:
            best, best_err = tuple(ranks), err
        if num_params(tuple(ranks)) > budget * (1 + tolerance) * 4:
            break
    # Phase 2: local search, one rank up or down at a time, for a finer fit.
    for _ in range(64):
        neighbours = []
        n = len(best)
        moves = [(i, s) for i in range(n) for s in (1, -1)]
        moves += [(i, 1, j, -1) for i in range(n) for j in range(n) if i != j]
        for move in moves:
            r = list(best)
            for i, step in zip(move[::2], move[1::2], strict=True):
                r[i] += step
            if all(1 <= r[i] <= max_ranks[i] for i in range(n)):
                neighbours.append(tuple(r))
        if not neighbours:
            break
        cand = min(neighbours, key=error)
        if error(cand) >= best_err - 1e-12:
            break
        best, best_err = cand, error(cand)
    if abs(num_params(best) / budget - 1) > tolerance and math.prod(max_ranks) <= _MAX_GRID:
        # The local search can stall beside a feasible but unbalanced configuration (e.g.
        # Tucker-2 ranks (1, 4) of a small conv); small grids are searched exhaustively for
        # the most balanced ranks within tolerance.
        grid = itertools.product(*(range(1, m + 1) for m in max_ranks))
        within = [r for r in grid if abs(num_params(r) / budget - 1) <= tolerance]
        if within:
            best = min(within, key=lambda r: (max(r) / min(r), error(r)))
    reached = num_params(best) / budget
    if abs(reached - 1) > tolerance:
        warnings.warn(
            f"{what}: no ranks meet the parameter budget within {tolerance:.0%}; using ranks "
            f"{best} with {num_params(best)} parameters ({reached:.2f}x the budget)",
            stacklevel=3,
        )
    return best


def dense_init_std(
    kernel_init: Callable | None, shape: tuple[int, ...], fan_in: int, key: jax.Array
) -> float:
    """Standard deviation of the dense kernel that `kernel_init` would draw.

    The tensorized kernel is initialised so that its reconstruction has this standard
    deviation. With `kernel_init=None` it is Flax's default (LeCun normal: 1/sqrt(fan_in)).
    Otherwise `kernel_init` is sampled at the real shape when that has at most 2**22
    entries; for bigger kernels a slice with the same fan-in is sampled.
    """
    if kernel_init is None:
        return 1.0 / math.sqrt(fan_in)
    if math.prod(shape) > 2**22:
        shape = shape[:-1] + (max(1, 2**22 // math.prod(shape[:-1])),)
    sample = kernel_init(key, shape, jnp.float32)
    return float(jnp.std(sample))


def pad_cores(
    cores: Sequence[jax.Array],
    shapes: Sequence[Sequence[int]],
    key: jax.Array,
    rel_scale: float = 1e-3,
) -> list[jax.Array] | None:
    """Cores of a decomposition grown to the requested ranks, or None if they cannot be.

    Exact decompositions (TT-SVD, TR-SVD, HOSVD) stop at the ranks the tensor's unfoldings
    allow, e.g. a tensor ring's first two bonds multiply to at most I_1. To keep the layer at
    the size its budget asked for, each core is zero-padded along its rank axes to `shapes`
    and the new entries get small noise (`rel_scale` times the core's RMS), so training can
    use them; the reconstruction moves only to second order in that noise.

    Args:
      cores: the decomposition's cores.
      shapes: the requested core shapes (same order and rank; every dim >= the core's).
    """
    if len(cores) != len(shapes):
        return None
    out = []
    for core, shape, k in zip(cores, shapes, jax.random.split(key, len(cores)), strict=True):
        shape = tuple(int(s) for s in shape)
        if core.ndim != len(shape) or any(c > s for c, s in zip(core.shape, shape, strict=True)):
            return None
        if core.shape == shape:
            out.append(core)
            continue
        rms = jnp.sqrt(jnp.mean(jnp.square(core.astype(jnp.float32))))
        noise = rel_scale * rms * jax.random.normal(k, shape, jnp.float32)
        inside = tuple(slice(0, c) for c in core.shape)
        out.append(noise.at[inside].set(core.astype(jnp.float32)).astype(core.dtype))
    return out
