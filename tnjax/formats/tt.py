"""Tensor-train (TT) format: a chain of order-3 cores.

``x[i_1..i_d] = cores[0][:, i_1, :] @ cores[1][:, i_2, :] @ ... @ cores[d-1][:, i_d, :]``
(a 1 x 1 product). Layout follows TensorLy: ``cores[k]`` is (r_k, I_k, r_{k+1}) with
``r_0 = r_d = 1``, so ``tensorly.tt_to_tensor(cores)`` reconstructs the same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from tnjax.formats import _common

__all__ = ["TT", "to_dense", "num_params", "random", "from_dense", "round", "add"]


def check_chain(cores: Sequence[Any], name: str, core_ndim: int, closed: bool) -> None:
    """Validates the ranks of a chain of cores (shared by TT, TT-matrix and TR).

    Each core has `core_ndim` dims, rank first and last. For an open chain (TT) the outer
    ranks must be 1; for a ring (TR) the last rank must equal the first.
    """
    if not cores:
        raise ValueError(f"{name} needs at least one core, got none.")
    layout = "(r_k, I_k, r_k+1)" if core_ndim == 3 else "(r_k, I_k, J_k, r_k+1)"
    for k, c in enumerate(cores):
        if c.ndim != core_ndim:
            raise ValueError(
                f"{name} core {k} has shape {tuple(c.shape)} but {name} cores must be "
                f"{core_ndim}-D {layout}. Core shapes: {_common.shapes_str(cores)}."
            )
    for k in range(1, len(cores)):
        prev, cur = cores[k - 1], cores[k]
        if cur.shape[0] != prev.shape[-1]:
            raise ValueError(
                f"{name} core {k} has shape {tuple(cur.shape)} but core {k - 1} ends with rank "
                f"{prev.shape[-1]}. Core shapes: {_common.shapes_str(cores)}."
            )
    first, last = cores[0], cores[-1]
    if closed:
        if last.shape[-1] != first.shape[0]:
            raise ValueError(
                f"{name} core {len(cores) - 1} has shape {tuple(last.shape)} but the ring "
                f"closes on core 0 of shape {tuple(first.shape)}: its last rank must be "
                f"{first.shape[0]}."
            )
    else:
        if first.shape[0] != 1:
            raise ValueError(
                f"{name} core 0 has shape {tuple(first.shape)} but the first rank must be 1."
            )
        if last.shape[-1] != 1:
            raise ValueError(
                f"{name} core {len(cores) - 1} has shape {tuple(last.shape)} but the last "
                "rank must be 1."
            )


class TT(_common.TensorFormat):
    """A tensor in TT format, as a pytree whose leaves are the cores.

    Attributes:
      cores: tuple of d arrays, ``cores[k]`` of shape (r_k, I_k, r_{k+1}), r_0 = r_d = 1.
    """

    _fields = ("cores",)
    cores: tuple[jax.Array, ...]

    def __init__(self, cores: Sequence[ArrayLike]):
        """Builds a TT tensor, checking that the ranks of consecutive cores agree.

        Args:
          cores: sequence of d >= 1 arrays of shapes (r_k, I_k, r_{k+1}), r_0 = r_d = 1.

        Raises:
          ValueError: if a shape does not fit, naming the offending shapes.
        """
        cores = tuple(_common.as_array(c) for c in cores)
        check_chain(cores, "TT", 3, closed=False)
        self._set(cores=cores)

    @property
    def shape(self) -> tuple[int, ...]:
        """(I_1, ..., I_d)."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """(r_0, ..., r_d), including the boundary 1s."""
        return tuple(int(c.shape[0]) for c in self.cores) + (int(self.cores[-1].shape[-1]),)

    def round(self, rank: int | Sequence[int] | None = None, **kwargs: Any) -> TT:
        """TT rounding; see `tt.round`."""
        return round(self, rank, **kwargs)


def _check(x: Any) -> TT:
    return _common.check_type(x, TT, "a TT tensor")


def to_dense(x: TT) -> jax.Array:
    """Reconstructs the full tensor by contracting the cores left to right.

    Each step multiplies the running (prod_{j<k} I_j, r_k) matrix by core k reshaped to
    (r_k, I_k * r_{k+1}).

    Args:
      x: TT tensor with cores (r_k, I_k, r_{k+1}).

    Returns:
      (I_1, ..., I_d) array.
    """
    with jax.named_scope("tnjax.formats.tt.to_dense"):
        x = _check(x)
        return _common.tt_chain(x.cores).reshape(x.shape)


def num_params(x: TT) -> int:
    """``sum_k r_k I_k r_{k+1}``."""
    return _check(x).num_params


def random(
    key: jax.Array,
    shape: Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float | None = None,
    dtype: Any = jnp.float32,
) -> TT:
    """Random TT tensor with Gaussian cores.

    Ranks are used as given (not clipped). With ``std=None`` the cores are N(0, 1). With
    ``std=s`` they are N(0, sigma^2) with
    ``sigma = (s**2 / prod_{k=1}^{d-1} r_k) ** (1 / (2 d))``: each entry is a sum over
    the ``prod r_k`` inner index paths of products of d independent zero-mean core
    entries, distinct paths are uncorrelated, so the variance is
    ``prod r_k * sigma**(2 d) = s**2``.

    Args:
      key: PRNG key.
      shape: (I_1, ..., I_d).
      rank: int (all inner ranks) or tuple (1, r_1, ..., r_{d-1}, 1).
      std: target standard deviation of the reconstructed entries, or None.
      dtype: floating dtype of the cores.

    Returns:
      TT tensor with cores (r_k, I_k, r_{k+1}).
    """
    with jax.named_scope("tnjax.formats.tt.random"):
        shape = _common.check_shape(shape, "tt.random")
        ranks = _common.tt_rank_tuple(rank, len(shape), "tt.random")
        sigma = _common.factor_std(std, math.prod(ranks), len(shape))
        keys = jax.random.split(key, len(shape))
        cores = [
            _common.normal(keys[k], (ranks[k], n, ranks[k + 1]), dtype, sigma)
            for k, n in enumerate(shape)
        ]
        return TT(cores)


def from_dense(
    x: ArrayLike,
    rank: int | Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    svd_method: str = "auto",
) -> TT:
    """TT-SVD (Oseledets 2011): sequential truncated SVDs of the unfoldings.

    Step k reshapes the remainder to (r_k I_k, prod_{j>k} I_j), keeps a truncated SVD and
    passes ``diag(S) Vt`` on. Ranks are clipped to what each unfolding allows
    (``r_{k+1} <= min(r_k I_k, prod_{j>k} I_j)``), as in TensorLy. With `rtol`, each of the
    d - 1 SVDs discards at most ``delta = rtol / sqrt(d - 1) * ||x||``, so
    ``||x - tt|| <= rtol * ||x||``; `rank` then caps the ranks. Jittable with a fixed
    `rank` and no `rtol`.

    Args:
      x: (I_1, ..., I_d) tensor.
      rank: int (all inner ranks) or tuple (1, r_1, ..., r_{d-1}, 1), or None.
      rtol: relative Frobenius error target, or None.
      key: PRNG key for randomized SVDs (large unfoldings).
      svd_method: see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      TT tensor with left-orthogonal cores 0..d-2.

    Raises:
      ValueError: if neither `rank` nor `rtol` is given, or `rank` is malformed.
    """
    with jax.named_scope("tnjax.formats.tt.from_dense"):
        x, d, rtol = _common.dense_input(x, rank, rtol, "tt.from_dense", lambda d: d + 1)
        ranks = None if rank is None else _common.tt_rank_tuple(rank, d, "tt.from_dense")
        atol = None
        if rtol is not None and d > 1:
            atol = rtol / math.sqrt(d - 1) * float(jnp.linalg.norm(x))
        key = _common.default_key(key)
        cores = _common.tt_sweep(x, x.shape, 1, ranks, atol, key, svd_method)
        return TT(cores)


def round(
    x: TT,
    rank: int | Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    svd_method: str = "auto",
) -> TT:
    """TT rounding (Oseledets 2011, Alg. 2): recompress a TT to lower ranks.

    Right-to-left QR orthogonalisation makes cores 1..d-1 right-orthogonal (so the norm of
    the tensor is the norm of core 0), then a left-to-right sweep of truncated SVDs with
    rank caps `rank` and/or absolute tolerance ``rtol / sqrt(d - 1) * ||x||`` per SVD,
    so ``||x - round(x)|| <= rtol * ||x||``. Never forms the dense tensor. Jittable with a
    fixed `rank` and no `rtol`.

    Args:
      x: TT tensor with cores (r_k, I_k, r_{k+1}).
      rank: int or tuple (1, r_1, ..., r_{d-1}, 1) of maximal ranks, or None.
      rtol: relative Frobenius error target, or None.
      key: PRNG key for randomized SVDs.
      svd_method: see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      TT tensor of the same shape with ranks <= the requested ones.

    Raises:
      ValueError: if neither `rank` nor `rtol` is given, or `rank` is malformed.
    """
    with jax.named_scope("tnjax.formats.tt.round"):
        x = _check(x)
        cores = _round_cores(x.cores, rank, rtol, key, svd_method, "tt.round")
        return TT(cores)


def _round_cores(
    cores: Sequence[jax.Array],
    rank: Any,
    rtol: float | None,
    key: jax.Array | None,
    svd_method: str,
    what: str,
) -> list[jax.Array]:
    rtol = _common.check_rtol(rtol, what)
    d = len(cores)
    if rank is None and rtol is None:
        raise ValueError(
            f"{what}: give rank (int or {d + 1}-tuple) or rtol; the TT has ranks "
            f"{tuple(c.shape[0] for c in cores) + (1,)}."
        )
    ranks = None if rank is None else _common.tt_rank_tuple(rank, d, what)
    return _common.tt_round_cores(cores, ranks, rtol, _common.default_key(key), svd_method)


def add(x: TT, y: TT) -> TT:
    """Sum of two TT tensors of the same shape, with ranks ``r_k(x) + r_k(y)``.

    Cores are stacked block-diagonally (the first along its last rank, the last along its
    first rank), so no dense tensor is formed; follow with `round` to recompress.

    Args:
      x: TT tensor with cores (r_k, I_k, r_{k+1}).
      y: TT tensor of the same shape with cores (s_k, I_k, s_{k+1}).

    Returns:
      TT tensor with cores (r_k + s_k, I_k, r_{k+1} + s_{k+1}) (boundary ranks stay 1).

    Raises:
      ValueError: if the shapes differ.
    """
    with jax.named_scope("tnjax.formats.tt.add"):
        x, y = _check(x), _check(y)
        if x.shape != y.shape:
            raise ValueError(f"tt.add: shapes differ: {x.shape} and {y.shape}.")
        d = len(x.cores)
        if d == 1:
            return TT([x.cores[0] + y.cores[0]])
        cores = []
        for k, (a, b) in enumerate(zip(x.cores, y.cores, strict=True)):
            if k == 0:
                cores.append(jnp.concatenate([a, b], axis=2))
            elif k == d - 1:
                cores.append(jnp.concatenate([a, b], axis=0))
            else:
                top = jnp.pad(a, ((0, 0), (0, 0), (0, b.shape[2])))
                bottom = jnp.pad(b, ((0, 0), (0, 0), (a.shape[2], 0)))
                cores.append(jnp.concatenate([top, bottom], axis=0))
        return TT(cores)


# --------------------------------------------------------------------------- as a layer weight
# The TT family of `tnjax.formats.layout`: a chain of cores (r_{k-1}, mode_k..., r_k) with open
# boundary bonds r_0 = r_d = 1. Over paired modes (I_k J_k) this is the TT-matrix.


def weight_structure(
    modes: Sequence[_common.Axis], shape: Sequence[int], absorbed: Sequence[int] = ()
) -> _common.WeightStructure:
    """Core k is (r{k}, mode k, r{k+1}); r0 and r{d} are open; r_k <= min(both sides)."""
    if absorbed:
        raise ValueError("TT keeps no mode uncompressed (absorbed modes are a Tucker notion)")
    d = len(modes)
    names = [f"r{k}" for k in range(d + 1)]
    return _common.WeightStructure(
        bonds=tuple(names[1:d]),
        open_bonds=(names[0], names[d]),
        cores=tuple(((names[k],), tuple(modes[k]), (names[k + 1],)) for k in range(d)),
        fixed_cores=(),
        max_ranks=tuple(
            min(_common.prod(shape[: k + 1]), _common.prod(shape[k + 1 :])) for k in range(d - 1)
        ),
    )


def weight_rank(shape: Sequence[int], ranks: Sequence[int], absorbed: Sequence[int] = ()) -> Any:
    """`random`/`from_dense`'s rank: (1, r_1, ..., r_{d-1}, 1)."""
    return (1, *(int(r) for r in ranks), 1)


def weight_cores(x: TT, absorbed: Sequence[int] = ()) -> list[jax.Array]:
    """The cores of a TT tensor, as a layer stores them."""
    return list(x.cores)
