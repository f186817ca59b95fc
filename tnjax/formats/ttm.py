"""TT-matrix (TTM, MPO) format: a matrix whose row and column indices are both tensorized.

A matrix of shape (prod_k I_k, prod_k J_k) is stored as cores ``cores[k]`` of shape
(r_k, I_k, J_k, r_{k+1}) with ``r_0 = r_d = 1``:

``W[(i_1..i_d), (j_1..j_d)] = cores[0][:, i_1, j_1, :] @ ... @ cores[d-1][:, i_d, j_d, :]``

where the row index ``(i_1..i_d)`` and the column index ``(j_1..j_d)`` are row-major
(``i_1`` slowest). This is TensorLy's layout:
``tensorly.tt_matrix_to_tensor(cores).reshape(prod(I), prod(J))`` equals `to_dense`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from tnjax.formats import _common, tt

__all__ = ["TTMatrix", "to_dense", "to_tensor", "num_params", "random", "from_dense", "round"]


class TTMatrix(_common.TensorFormat):
    """A matrix in TT-matrix format, as a pytree whose leaves are the cores.

    Attributes:
      cores: tuple of d arrays, ``cores[k]`` of shape (r_k, I_k, J_k, r_{k+1}),
        r_0 = r_d = 1.
    """

    _fields = ("cores",)
    cores: tuple[jax.Array, ...]

    def __init__(self, cores: Sequence[ArrayLike]):
        """Builds a TT-matrix, checking that the ranks of consecutive cores agree.

        Args:
          cores: sequence of d >= 1 arrays of shapes (r_k, I_k, J_k, r_{k+1}),
            r_0 = r_d = 1.

        Raises:
          ValueError: if a shape does not fit, naming the offending shapes.
        """
        cores = tuple(_common.as_array(c) for c in cores)
        tt.check_chain(cores, "TT-matrix", 4, closed=False)
        self._set(cores=cores)

    @property
    def row_modes(self) -> tuple[int, ...]:
        """(I_1, ..., I_d)."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def col_modes(self) -> tuple[int, ...]:
        """(J_1, ..., J_d)."""
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def shape(self) -> tuple[int, int]:
        """(prod I, prod J), the shape of the matrix."""
        return (math.prod(self.row_modes), math.prod(self.col_modes))

    @property
    def ranks(self) -> tuple[int, ...]:
        """(r_0, ..., r_d), including the boundary 1s."""
        return tuple(int(c.shape[0]) for c in self.cores) + (int(self.cores[-1].shape[-1]),)

    def to_tensor(self) -> jax.Array:
        """The full tensor (I_1, ..., I_d, J_1, ..., J_d); see `ttm.to_tensor`."""
        return to_tensor(self)

    def round(self, rank: int | Sequence[int] | None = None, **kwargs: Any) -> TTMatrix:
        """TT rounding of the cores; see `ttm.round`."""
        return round(self, rank, **kwargs)


def _check(x: Any) -> TTMatrix:
    return _common.check_type(x, TTMatrix, "a TTMatrix")


def _merged_cores(cores: Sequence[jax.Array]) -> list[jax.Array]:
    return [c.reshape(c.shape[0], c.shape[1] * c.shape[2], c.shape[3]) for c in cores]


def to_tensor(x: TTMatrix) -> jax.Array:
    """Reconstructs the full tensor (I_1, ..., I_d, J_1, ..., J_d).

    Same as ``tensorly.tt_matrix_to_tensor``: contract the cores with (I_k, J_k) merged,
    giving (I_1, J_1, ..., I_d, J_d), then move all row modes before the column modes.

    Args:
      x: TT-matrix with cores (r_k, I_k, J_k, r_{k+1}).

    Returns:
      (I_1, ..., I_d, J_1, ..., J_d) array.
    """
    with jax.named_scope("tnjax.formats.ttm.to_tensor"):
        x = _check(x)
        d = len(x.cores)
        interleaved = sum(zip(x.row_modes, x.col_modes, strict=True), ())
        full = _common.tt_chain(_merged_cores(x.cores)).reshape(interleaved)
        return jnp.transpose(full, tuple(range(0, 2 * d, 2)) + tuple(range(1, 2 * d, 2)))


def to_dense(x: TTMatrix) -> jax.Array:
    """Reconstructs the full matrix (prod I, prod J), row and column indices row-major.

    Args:
      x: TT-matrix with cores (r_k, I_k, J_k, r_{k+1}).

    Returns:
      (prod_k I_k, prod_k J_k) array.
    """
    with jax.named_scope("tnjax.formats.ttm.to_dense"):
        return to_tensor(x).reshape(_check(x).shape)


def num_params(x: TTMatrix) -> int:
    """``sum_k r_k I_k J_k r_{k+1}``."""
    return _check(x).num_params


def _check_modes(row_modes: Sequence[int], col_modes: Sequence[int], what: str):
    row_modes = _common.check_shape(row_modes, f"{what} row_modes")
    col_modes = _common.check_shape(col_modes, f"{what} col_modes")
    if len(row_modes) != len(col_modes):
        raise ValueError(
            f"{what}: row_modes {row_modes} and col_modes {col_modes} need the same number "
            "of modes; pad the shorter one with 1s."
        )
    return row_modes, col_modes


def random(
    key: jax.Array,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float | None = None,
    dtype: Any = jnp.float32,
) -> TTMatrix:
    """Random TT-matrix with Gaussian cores.

    Ranks are used as given (not clipped). With ``std=None`` the cores are N(0, 1). With
    ``std=s`` they are N(0, sigma^2) with
    ``sigma = (s**2 / prod_{k=1}^{d-1} r_k) ** (1 / (2 d))`` (the TT derivation: each
    entry is a sum of ``prod r_k`` uncorrelated products of d zero-mean core entries).

    Args:
      key: PRNG key.
      row_modes: (I_1, ..., I_d).
      col_modes: (J_1, ..., J_d).
      rank: int (all inner ranks) or tuple (1, r_1, ..., r_{d-1}, 1).
      std: target standard deviation of the matrix entries, or None.
      dtype: floating dtype of the cores.

    Returns:
      TT-matrix with cores (r_k, I_k, J_k, r_{k+1}).
    """
    with jax.named_scope("tnjax.formats.ttm.random"):
        row_modes, col_modes = _check_modes(row_modes, col_modes, "ttm.random")
        d = len(row_modes)
        ranks = _common.tt_rank_tuple(rank, d, "ttm.random")
        sigma = _common.factor_std(std, math.prod(ranks), d)
        keys = jax.random.split(key, d)
        cores = [
            _common.normal(
                keys[k], (ranks[k], row_modes[k], col_modes[k], ranks[k + 1]), dtype, sigma
            )
            for k in range(d)
        ]
        return TTMatrix(cores)


def from_dense(
    matrix: ArrayLike,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    rank: int | Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    svd_method: str = "auto",
) -> TTMatrix:
    """TT-matrix decomposition of a dense matrix by TT-SVD.

    The matrix (prod I, prod J) is reshaped to (I_1..I_d, J_1..J_d), permuted to
    (I_1, J_1, ..., I_d, J_d), merged to (I_1 J_1, ..., I_d J_d) and decomposed by
    `tt.from_dense` (same rank rules and `rtol` bound); cores are split back to
    (r_k, I_k, J_k, r_{k+1}). Same algorithm as ``tensorly.decomposition.tensor_train_matrix``.

    Args:
      matrix: (prod I, prod J) matrix, or a tensor of shape (I_1..I_d, J_1..J_d).
      row_modes: (I_1, ..., I_d).
      col_modes: (J_1, ..., J_d).
      rank: int or tuple (1, r_1, ..., r_{d-1}, 1), or None.
      rtol: relative Frobenius error target, or None.
      key: PRNG key for randomized SVDs.
      svd_method: see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      TT-matrix with cores (r_k, I_k, J_k, r_{k+1}).

    Raises:
      ValueError: if the matrix shape does not match the modes, or the rank is malformed.
    """
    with jax.named_scope("tnjax.formats.ttm.from_dense"):
        row_modes, col_modes = _check_modes(row_modes, col_modes, "ttm.from_dense")
        w = _common.dense_tensor(matrix, "ttm.from_dense")
        d = len(row_modes)
        m, n = math.prod(row_modes), math.prod(col_modes)
        if w.shape != (m, n) and w.shape != row_modes + col_modes:
            raise ValueError(
                f"ttm.from_dense: matrix has shape {w.shape} but row_modes {row_modes} and "
                f"col_modes {col_modes} describe a ({m}, {n}) matrix."
            )
        w = w.reshape(row_modes + col_modes)
        perm = tuple(i for k in range(d) for i in (k, d + k))
        merged = jnp.transpose(w, perm).reshape(
            tuple(a * b for a, b in zip(row_modes, col_modes, strict=True))
        )
        cores = tt.from_dense(merged, rank, rtol=rtol, key=key, svd_method=svd_method).cores
        return TTMatrix(
            [
                c.reshape(c.shape[0], row_modes[k], col_modes[k], c.shape[2])
                for k, c in enumerate(cores)
            ]
        )


def round(
    x: TTMatrix,
    rank: int | Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    svd_method: str = "auto",
) -> TTMatrix:
    """TT rounding of a TT-matrix (cores with (I_k, J_k) merged); see `tt.round`.

    Args:
      x: TT-matrix with cores (r_k, I_k, J_k, r_{k+1}).
      rank: int or tuple (1, r_1, ..., r_{d-1}, 1) of maximal ranks, or None.
      rtol: relative Frobenius error target, or None.
      key: PRNG key for randomized SVDs.
      svd_method: see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      TT-matrix of the same modes with ranks <= the requested ones.
    """
    with jax.named_scope("tnjax.formats.ttm.round"):
        x = _check(x)
        cores = tt._round_cores(_merged_cores(x.cores), rank, rtol, key, svd_method, "ttm.round")
        return TTMatrix(
            [
                c.reshape(c.shape[0], x.row_modes[k], x.col_modes[k], c.shape[2])
                for k, c in enumerate(cores)
            ]
        )
