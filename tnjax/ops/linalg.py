"""Truncated and randomized SVD, and tolerance-based rank selection.

Everything here is pure JAX. `truncated_svd` is traceable (`jit`, `vmap` over leading
calls, `grad` through the full path) because the rank, method and sizes it depends on are
Python ints fixed by the arguments and the static shapes. `rank_for_tolerance` and
`svd_with_tolerance(..., rtol=...)` pick a rank from the singular values, which needs
concrete values: they are host-side helpers and do not run under `jit`.

Method choice (`method="auto"`): the randomized range finder is used when
``rank + oversample < min(m, n) / 4`` and ``min(m, n) > 512``; otherwise a full thin SVD
(`jnp.linalg.svd(full_matrices=False)`) is computed and truncated. The randomized path
keeps memory at O((m + n) * (rank + oversample)) and never forms the SVD of the whole
matrix, which is what makes decomposing a large unfolding feasible.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "truncated_svd",
    "rank_for_tolerance",
    "svd_with_tolerance",
    "choose_method",
    "flip_signs",
]

_METHODS = ("auto", "full", "randomized")


def _as_matrix(matrix: ArrayLike, fn: str) -> jax.Array:
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"{fn} expects a 2-D matrix, got an array of shape {matrix.shape}.")
    if not jnp.issubdtype(matrix.dtype, jnp.inexact):
        matrix = matrix.astype(jnp.result_type(float))
    return matrix


def _check_rank(rank: int, shape: tuple[int, ...], fn: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"{fn}: rank must be a Python int, got {rank!r} for shape {shape}.")
    if rank < 1:
        raise ValueError(f"{fn}: rank must be >= 1, got {rank} for a matrix of shape {shape}.")
    return int(rank)


def choose_method(shape: tuple[int, int], rank: int, oversample: int = 10) -> str:
    """The SVD method `truncated_svd(method="auto")` uses for a matrix of `shape`.

    Args:
      shape: (m, n) of the matrix.
      rank: requested rank.
      oversample: extra columns of the randomized range finder.

    Returns:
      ``"randomized"`` when ``rank + oversample < min(m, n) / 4`` and ``min(m, n) > 512``,
      else ``"full"``.
    """
    small = min(shape)
    if rank + oversample < small / 4 and small > 512:
        return "randomized"
    return "full"


def _orthonormalize(y: jax.Array) -> jax.Array:
    q, _ = jnp.linalg.qr(y, mode="reduced")
    return q


def _randomized_svd(
    a_MxN: jax.Array, k: int, key: jax.Array, oversample: int, n_iter: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    m, n = a_MxN.shape
    l = min(k + oversample, m, n)
    omega_NxL = jax.random.normal(key, (n, l), dtype=a_MxN.dtype)
    q_MxL = _orthonormalize(a_MxN @ omega_NxL)
    # Power iterations sharpen the spectrum; re-orthonormalising after every product keeps
    # the small singular directions from being lost to round-off.
    for _ in range(n_iter):
        z_NxL = _orthonormalize(a_MxN.T @ q_MxL)
        q_MxL = _orthonormalize(a_MxN @ z_NxL)
    b_LxN = q_MxL.T @ a_MxN
    ub_LxL, s_L, vt_LxN = jnp.linalg.svd(b_LxN, full_matrices=False)
    u_MxL = q_MxL @ ub_LxL
    return u_MxL[:, :k], s_L[:k], vt_LxN[:k]


def truncated_svd(
    matrix: ArrayLike,
    rank: int,
    *,
    key: jax.Array | None = None,
    method: str = "auto",
    oversample: int = 10,
    n_iter: int = 2,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Leading `rank` singular triplets of a matrix.

    With ``k = min(rank, m, n)`` (a rank above the matrix's size is clipped),
    ``matrix ~= U @ diag(S) @ Vt``.

    Methods:
      * ``"full"``: thin SVD by `jnp.linalg.svd(full_matrices=False)`, then truncated.
      * ``"randomized"``: Halko, Martinsson & Tropp (2011) range finder. With
        ``l = min(k + oversample, m, n)`` and a Gaussian test matrix ``Omega`` (n, l),
        ``Q = qr(A @ Omega)``, then `n_iter` power iterations
        ``Q = qr(A @ qr(A.T @ Q))``, then the SVD of the small ``Q.T @ A`` (l, n).
        Memory is O((m + n) * l).
      * ``"auto"``: randomized when ``rank + oversample < min(m, n) / 4`` and
        ``min(m, n) > 512``, else full (see `choose_method`).

    Args:
      matrix: (m, n) array.
      rank: number of singular triplets to keep, >= 1.
      key: PRNG key for the randomized method; defaults to ``jax.random.key(0)``.
      method: ``"auto"``, ``"full"`` or ``"randomized"``.
      oversample: extra columns of the randomized range finder.
      n_iter: power iterations of the randomized method.

    Returns:
      ``(U (m, k), S (k,), Vt (k, n))`` with `S` in descending order.

    Raises:
      ValueError: if `matrix` is not 2-D or empty, `rank` < 1 or `method` is unknown.
    """
    with jax.named_scope("tnjax.ops.linalg.truncated_svd"):
        a = _as_matrix(matrix, "truncated_svd")
        if 0 in a.shape:
            raise ValueError(f"truncated_svd: the matrix of shape {a.shape} is empty.")
        rank = _check_rank(rank, a.shape, "truncated_svd")
        if method not in _METHODS:
            raise ValueError(f"truncated_svd: method must be one of {_METHODS}, got {method!r}.")
        if oversample < 0 or n_iter < 0:
            raise ValueError(
                f"truncated_svd: oversample and n_iter must be >= 0, got {oversample}, {n_iter}."
            )
        m, n = a.shape
        k = min(rank, m, n)
        if method == "auto":
            method = choose_method((m, n), k, oversample)
        if method == "full":
            u, s, vt = jnp.linalg.svd(a, full_matrices=False)
            return u[:, :k], s[:k], vt[:k]
        if key is None:
            key = jax.random.key(0)
        return _randomized_svd(a, k, key, oversample, n_iter)


def flip_signs(u: ArrayLike, vt: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Deterministic SVD signs: the largest-magnitude entry of each column of U is >= 0.

    The same convention as scikit-learn's and TensorLy's ``svd_flip(u_based_decision=True)``;
    ``U @ diag(S) @ Vt`` is unchanged.

    Args:
      u: (m, k) left singular vectors.
      vt: (k, n) right singular vectors.

    Returns:
      ``(U (m, k), Vt (k, n))`` with column j of U and row j of Vt multiplied by the same sign.
    """
    with jax.named_scope("tnjax.ops.linalg.flip_signs"):
        u, vt = jnp.asarray(u), jnp.asarray(vt)
        rows = jnp.argmax(jnp.abs(u), axis=0)
        signs = jnp.sign(u[rows, jnp.arange(u.shape[1])])
        signs = jnp.where(signs == 0, 1, signs).astype(u.dtype)
        return u * signs, vt * signs[:, None]


def rank_for_tolerance(s: ArrayLike, rtol: float, *, norm: float | None = None) -> int:
    """Smallest rank whose truncation error is within a relative tolerance.

    Returns the smallest ``k >= 1`` with ``||S[k:]|| <= rtol * ||S||``; when `norm` (the
    Frobenius norm of the whole matrix) is given, the energy ``norm**2 - ||S||**2`` of the
    singular values not in `S` is added to every tail and the bound is ``rtol * norm``,
    which is correct when `S` holds only the leading singular values (the residual then
    carries the rounding error of `norm`, so tolerances below ~sqrt(eps) are not met).
    Returns ``len(S)`` when no shorter truncation meets the bound. Host-side: `s` must be
    concrete (not traced).

    Args:
      s: (r,) singular values in descending order.
      rtol: relative tolerance, >= 0.
      norm: optional Frobenius norm of the matrix `s` came from.

    Returns:
      The rank as a Python int in ``[1, len(S)]`` (0 only when `s` is empty).

    Raises:
      ValueError: if `s` is not 1-D or `rtol` < 0.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"rank_for_tolerance expects 1-D singular values, got shape {s.shape}.")
    if not rtol >= 0:
        raise ValueError(f"rank_for_tolerance: rtol must be >= 0, got {rtol}.")
    r = s.shape[0]
    if r == 0:
        return 0
    sq = s * s
    # tail2[k] = sum(S[k:]**2), summed from the small end: subtracting from the total
    # instead would lose small tails (rtol ~ 1e-4) to cancellation.
    tail2 = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
    total2 = tail2[0]
    if norm is not None:
        # Energy outside the given singular values counts as discarded.
        residual2 = max(float(norm) ** 2 - total2, 0.0)
        tail2 = tail2 + residual2
        total2 = max(float(norm) ** 2, total2)
    bound2 = (rtol**2) * total2
    ok = np.nonzero(tail2[1:] <= bound2)[0]
    if ok.size == 0:
        return r
    return int(ok[0]) + 1


def svd_with_tolerance(
    matrix: ArrayLike,
    rank: int | None = None,
    rtol: float | None = None,
    key: jax.Array | None = None,
    *,
    atol: float | None = None,
    method: str = "auto",
    oversample: int = 10,
    n_iter: int = 2,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Truncated SVD at a fixed rank, a tolerance, or both (the smaller rank wins).

    With only `rank` this is `truncated_svd` (traceable). With `rtol` (or `atol`) the
    rank is the smallest with ``||A - U S Vt||_F <= rtol * ||A||_F`` (or ``<= atol``),
    capped by `rank` when given; that choice is made on the host, so it does not run
    under `jit`. Without a rank cap the full thin SVD is computed; with one, the
    singular values come from `truncated_svd(method=method)` and the error is measured
    against the true norm of `matrix`, so the bound still holds.

    Args:
      matrix: (m, n) array.
      rank: maximal rank (clipped to ``min(m, n)``), or None.
      rtol: relative Frobenius tolerance, or None.
      key: PRNG key for the randomized method.
      atol: absolute Frobenius tolerance, or None (used when `rtol` is None).
      method: SVD method, see `truncated_svd`.
      oversample: see `truncated_svd`.
      n_iter: see `truncated_svd`.

    Returns:
      ``(U (m, k), S (k,), Vt (k, n))``.

    Raises:
      ValueError: if neither a rank nor a tolerance is given, or the inputs are invalid.
    """
    with jax.named_scope("tnjax.ops.linalg.svd_with_tolerance"):
        a = _as_matrix(matrix, "svd_with_tolerance")
        if rank is None and rtol is None and atol is None:
            raise ValueError(
                f"svd_with_tolerance: give a rank, rtol or atol for the matrix of shape {a.shape}."
            )
        kw = dict(key=key, oversample=oversample, n_iter=n_iter)
        if rtol is None and atol is None:
            return truncated_svd(a, rank, method=method, **kw)
        if rank is None:
            u, s, vt = truncated_svd(a, min(a.shape), method="full", **kw)
        else:
            _check_rank(rank, a.shape, "svd_with_tolerance")
            u, s, vt = truncated_svd(a, rank, method=method, **kw)
        norm = float(jnp.linalg.norm(a))
        if rtol is None:
            if not atol >= 0:
                raise ValueError(f"svd_with_tolerance: atol must be >= 0, got {atol}.")
            rtol = atol / norm if norm > 0 else math.inf
        # With every singular value at hand the tail is exact; only a truncated spectrum
        # needs the matrix norm for the energy it misses.
        complete = s.shape[0] == min(a.shape)
        k = max(rank_for_tolerance(s, rtol, norm=None if complete else norm), 1)
        return u[:, :k], s[:k], vt[:k]
