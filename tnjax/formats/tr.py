"""Tensor-ring (TR) format: a closed chain of order-3 cores.

``x[i_1..i_d] = trace(cores[0][:, i_1, :] @ cores[1][:, i_2, :] @ ... @ cores[d-1][:, i_d, :])``

Layout follows TensorLy: ``cores[k]`` is (r_k, I_k, r_{k+1}) with ``r_d = r_0``, so
``tensorly.tr_to_tensor(cores)`` reconstructs the same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from tnjax.formats import _common, modes, tt
from tnjax.ops import linalg

__all__ = ["TR", "to_dense", "num_params", "random", "from_dense"]


class TR(_common.TensorFormat):
    """A tensor in TR format, as a pytree whose leaves are the cores.

    Attributes:
      cores: tuple of d arrays, ``cores[k]`` of shape (r_k, I_k, r_{k+1}), r_d = r_0.
    """

    _fields = ("cores",)
    cores: tuple[jax.Array, ...]

    def __init__(self, cores: Sequence[ArrayLike]):
        """Builds a TR tensor, checking that the ranks of consecutive cores agree.

        Args:
          cores: sequence of d >= 1 arrays of shapes (r_k, I_k, r_{k+1}), r_d = r_0.

        Raises:
          ValueError: if a shape does not fit, naming the offending shapes.
        """
        cores = tuple(_common.as_array(c) for c in cores)
        tt.check_chain(cores, "TR", 3, closed=True)
        self._set(cores=cores)

    @property
    def shape(self) -> tuple[int, ...]:
        """(I_1, ..., I_d)."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """(r_0, ..., r_{d-1}); the ring closes with r_d = r_0."""
        return tuple(int(c.shape[0]) for c in self.cores)


def _check(x: Any) -> TR:
    return _common.check_type(x, TR, "a TR tensor")


def to_dense(x: TR) -> jax.Array:
    """Reconstructs the full tensor: chain the cores to (r_0, prod I, r_0), then trace.

    Args:
      x: TR tensor with cores (r_k, I_k, r_{k+1}), r_d = r_0.

    Returns:
      (I_1, ..., I_d) array.
    """
    with jax.named_scope("tnjax.formats.tr.to_dense"):
        x = _check(x)
        chain = _common.tt_chain(x.cores)
        return jnp.einsum("aia->i", chain).reshape(x.shape)


def num_params(x: TR) -> int:
    """``sum_k r_k I_k r_{k+1}``."""
    return _check(x).num_params


def _rank_tuple(rank: Any, d: int, what: str) -> tuple[int, ...]:
    """(r_0, ..., r_{d-1}) from an int, a d-tuple, or a TensorLy-style (d+1)-tuple."""
    if _common.is_int(rank):
        if rank < 1:
            raise ValueError(f"{what}: rank must be >= 1, got {rank}.")
        return (int(rank),) * d
    try:
        ranks = tuple(rank)
    except TypeError:
        raise ValueError(f"{what}: rank must be an int or a tuple of ints, got {rank!r}.") from None
    if not all(_common.is_int(r) and r >= 1 for r in ranks):
        raise ValueError(f"{what}: ranks must be ints >= 1, got {ranks}.")
    if len(ranks) == d + 1:
        if ranks[0] != ranks[-1]:
            raise ValueError(
                f"{what}: a ring closes with r_{d} = r_0, but rank {ranks} has r_0={ranks[0]} "
                f"and r_{d}={ranks[-1]}; make them equal or pass the {d} ranks (r_0..r_{d - 1})."
            )
        ranks = ranks[:-1]
    if len(ranks) != d:
        raise ValueError(
            f"{what}: a TR rank tuple needs {d} entries (r_0..r_{d - 1}) or {d + 1} with "
            f"r_{d} = r_0 for {d} cores, got {len(ranks)}: {ranks}."
        )
    return tuple(int(r) for r in ranks)


def random(
    key: jax.Array,
    shape: Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float | None = None,
    dtype: Any = jnp.float32,
) -> TR:
    """Random TR tensor with Gaussian cores.

    Ranks are used as given (not clipped). With ``std=None`` the cores are N(0, 1). With
    ``std=s`` they are N(0, sigma^2) with
    ``sigma = (s**2 / prod_{k=0}^{d-1} r_k) ** (1 / (2 d))``: the trace is a sum over the
    ``prod r_k`` closed index paths of products of d independent zero-mean core entries,
    distinct paths are uncorrelated, so the variance is ``prod r_k * sigma**(2 d) = s**2``.

    Args:
      key: PRNG key.
      shape: (I_1, ..., I_d).
      rank: int, tuple (r_0, ..., r_{d-1}), or tuple (r_0, ..., r_d) with r_d = r_0.
      std: target standard deviation of the reconstructed entries, or None.
      dtype: floating dtype of the cores.

    Returns:
      TR tensor with cores (r_k, I_k, r_{k+1}).
    """
    with jax.named_scope("tnjax.formats.tr.random"):
        shape = _common.check_shape(shape, "tr.random")
        d = len(shape)
        ranks = _rank_tuple(rank, d, "tr.random")
        sigma = _common.factor_std(std, math.prod(ranks), d)
        keys = jax.random.split(key, d)
        cores = [
            _common.normal(keys[k], (ranks[k], n, ranks[(k + 1) % d]), dtype, sigma)
            for k, n in enumerate(shape)
        ]
        return TR(cores)


def split_rank(limit: int, cap0: int, cap1: int) -> tuple[int, int]:
    """(r_0, r_1) with r_0 <= cap0, r_1 <= cap1 and the largest product <= limit.

    Among pairs with the largest product the most balanced is chosen, with r_0 <= r_1 on
    ties. Host-side helper of TR-SVD.
    """
    best = (1, 1)
    best_key = (1, 0, 0)
    for r0 in range(1, min(cap0, limit) + 1):
        r1 = min(cap1, limit // r0)
        if r1 < 1:
            break
        key = (r0 * r1, -abs(r0 - r1), -r0)
        if key > best_key:
            best, best_key = (r0, r1), key
    return best


def from_dense(
    x: ArrayLike,
    rank: int | Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    svd_method: str = "auto",
) -> TR:
    """TR-SVD (Zhao et al. 2016): one SVD fixes the ring ranks, then a TT-SVD.

    1. The mode-1 unfolding (I_1, prod_{k>1} I_k) gets a truncated SVD of rank
       ``r_0 r_1``; ``U`` (I_1, r_0 r_1) becomes core 0 (r_0, I_1, r_1).
    2. ``diag(S) Vt`` is reshaped to (r_0, r_1, I_2..I_d), r_0 moved last, and decomposed
       by TT-SVD with first rank r_1 and last rank r_0 (cores (r_k, I_k, r_{k+1})).

    Ranks: an int R means ``r_k = R`` for all k; a tuple is (r_0, ..., r_{d-1}) or the
    TensorLy form (r_0, ..., r_d) with r_d = r_0. All ranks are clipped to what the
    unfoldings allow; if ``r_0 r_1`` exceeds ``min(I_1, prod_{k>1} I_k)`` the pair is
    shrunk to the largest feasible product within the caps, as balanced as possible (where
    TensorLy raises). With `rtol`, the first SVD keeps error at most
    ``sqrt(2) rtol ||x|| / sqrt(d)`` and the others ``rtol ||x|| / sqrt(d)`` (Zhao et al.),
    and the first rank ``k`` is split into ``r_0 r_1 = k`` exactly, as balanced as possible
    (via `modes.factorize(k, 2)`, r_0 <= r_1), capped by `rank` when given. Jittable with a
    fixed `rank` and no `rtol`.

    The first split is not invariant to the signs of the singular vectors; they are fixed
    by `tnjax.ops.linalg.flip_signs` (TensorLy's convention), so for ranks TensorLy accepts
    the result equals ``tensorly.decomposition.tensor_ring`` up to floating-point error.

    Args:
      x: (I_1, ..., I_d) tensor.
      rank: int or tuple of ranks, or None.
      rtol: relative Frobenius error target, or None.
      key: PRNG key for randomized SVDs.
      svd_method: see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      TR tensor with cores (r_k, I_k, r_{k+1}), r_d = r_0.

    Raises:
      ValueError: if neither `rank` nor `rtol` is given, or `rank` is malformed.
    """
    with jax.named_scope("tnjax.formats.tr.from_dense"):
        x, d, rtol = _common.dense_input(x, rank, rtol, "tr.from_dense", lambda d: d)
        if d == 1:
            # A one-core ring is a trace; rank 1 represents any vector exactly.
            return TR([x.reshape(1, x.shape[0], 1)])
        ranks = None if rank is None else _rank_tuple(rank, d, "tr.from_dense")
        key = _common.default_key(key)
        shape = x.shape
        unfolding = x.reshape(shape[0], -1)
        limit = min(unfolding.shape)
        norm = float(jnp.linalg.norm(x)) if rtol is not None else None

        if rtol is None:
            r0, r1 = split_rank(limit, ranks[0], ranks[1])
            u, s, vt = _common.svd_step(unfolding, r0 * r1, None, key, svd_method, 0)
        else:
            cap = limit if ranks is None else min(limit, ranks[0] * ranks[1])
            atol1 = math.sqrt(2) * rtol * norm / math.sqrt(d)
            u, s, vt = _common.svd_step(unfolding, cap, atol1, key, svd_method, 0)
            k = u.shape[1]
            if ranks is None:
                r1, r0 = modes.factorize(k, 2)
            else:
                r0, r1 = split_rank(k, ranks[0], ranks[1])
            u, s, vt = u[:, : r0 * r1], s[: r0 * r1], vt[: r0 * r1]

        # The split of the first rank into (r_0, r_1) is not invariant to the signs of the
        # singular vectors, so fix them as TensorLy does to get the same decomposition.
        u, vt = linalg.flip_signs(u, vt)
        core0 = jnp.transpose(u.reshape(shape[0], r0, r1), (1, 0, 2))
        rest = jnp.transpose((s[:, None] * vt).reshape(r0, r1, -1), (1, 2, 0))
        max_ranks = None
        if ranks is not None:
            # tt_sweep indexes caps as max_ranks[k + 1] for the sweep's k-th SVD.
            max_ranks = (r1,) + tuple(ranks[2:]) + (r0,)
        atol = None if rtol is None else rtol * norm / math.sqrt(d)
        cores = _common.tt_sweep(
            rest, shape[1:], r1, max_ranks, atol, key, svd_method, last_rank=r0, index_offset=1
        )
        return TR([core0, *cores])


# --------------------------------------------------------------------------- as a layer weight
# The TR family of `tnjax.formats.layout`: a closed ring of cores (r_k, mode_k..., r_{k+1}),
# r_d = r_0; every bond, the closing one included, is a rank.


def weight_structure(
    modes: Sequence[_common.Axis], shape: Sequence[int], absorbed: Sequence[int] = ()
) -> _common.WeightStructure:
    """Core k is (r{k}, mode k, r{k+1 mod d}); cutting bonds 0 and k bounds r_0 r_k."""
    if absorbed:
        raise ValueError("TR keeps no mode uncompressed (absorbed modes are a Tucker notion)")
    d = len(modes)
    names = [f"r{k}" for k in range(d)]
    n0 = int(shape[0])
    return _common.WeightStructure(
        bonds=tuple(names),
        open_bonds=(),
        cores=tuple(((names[k],), tuple(modes[k]), (names[(k + 1) % d],)) for k in range(d)),
        fixed_cores=(),
        max_ranks=(n0,)
        + tuple(n0 * min(_common.prod(shape[:k]), _common.prod(shape[k:])) for k in range(1, d)),
    )


def weight_rank(shape: Sequence[int], ranks: Sequence[int], absorbed: Sequence[int] = ()) -> Any:
    """`random`/`from_dense`'s rank: (r_0, ..., r_{d-1})."""
    return tuple(int(r) for r in ranks)


def weight_cores(x: TR, absorbed: Sequence[int] = ()) -> list[jax.Array]:
    """The cores of a TR tensor, as a layer stores them."""
    return list(x.cores)
