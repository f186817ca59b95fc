"""CP (CANDECOMP/PARAFAC) format: a sum of R rank-one tensors.

``x[i_1, ..., i_d] = sum_r weights[r] * factors[0][i_1, r] * ... * factors[d-1][i_d, r]``

Layout follows TensorLy: ``weights`` (R,), ``factors[n]`` (I_n, R), so
``tensorly.cp_to_tensor((weights, factors))`` reconstructs the same tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from tnjax.formats import _common

__all__ = ["CP", "to_dense", "num_params", "random", "from_dense"]


class CP(_common.TensorFormat):
    """A tensor in CP format, as a pytree with leaves ``weights`` and ``factors``.

    Attributes:
      weights: (R,) weights of the rank-one terms.
      factors: tuple of d arrays, ``factors[n]`` of shape (I_n, R).
    """

    _fields = ("weights", "factors")
    weights: jax.Array
    factors: tuple[jax.Array, ...]

    def __init__(self, weights: ArrayLike, factors: Sequence[ArrayLike]):
        """Builds a CP tensor, checking that all shapes agree.

        Args:
          weights: (R,) array.
          factors: sequence of d >= 1 arrays of shapes (I_n, R).

        Raises:
          ValueError: if a shape does not fit, naming the offending shapes.
        """
        weights = _common.as_array(weights)
        factors = tuple(_common.as_array(f) for f in factors)
        if weights.ndim != 1:
            raise ValueError(f"CP weights must have shape (R,), got shape {tuple(weights.shape)}.")
        if not factors:
            raise ValueError("CP needs at least one factor, got none.")
        rank = weights.shape[0]
        for n, f in enumerate(factors):
            if f.ndim != 2 or f.shape[1] != rank:
                raise ValueError(
                    f"CP factor {n} has shape {tuple(f.shape)} but weights have shape ({rank},); "
                    f"every factor must have shape (I_n, {rank}). "
                    f"Factor shapes: {_common.shapes_str(factors)}."
                )
        self._set(weights=weights, factors=factors)

    @property
    def shape(self) -> tuple[int, ...]:
        """(I_1, ..., I_d)."""
        return tuple(int(f.shape[0]) for f in self.factors)

    @property
    def rank(self) -> int:
        """R, the number of rank-one terms."""
        return int(self.weights.shape[0])

    @property
    def ranks(self) -> int:
        """R, the number of rank-one terms (same as `rank`)."""
        return self.rank


def _check(x: Any) -> CP:
    return _common.check_type(x, CP, "a CP tensor")


def _einsum_spec(d: int) -> str:
    modes = _common.MODE_LETTERS[:d]
    return "Z," + ",".join(f"{m}Z" for m in modes) + "->" + modes


def to_dense(x: CP) -> jax.Array:
    """Reconstructs the full tensor.

    ``out[i_1..i_d] = sum_r weights[r] * prod_n factors[n][i_n, r]``.

    Args:
      x: CP tensor with weights (R,) and factors (I_n, R).

    Returns:
      (I_1, ..., I_d) array.
    """
    with jax.named_scope("tnjax.formats.cp.to_dense"):
        x = _check(x)
        return jnp.einsum(_einsum_spec(len(x.factors)), x.weights, *x.factors)


def num_params(x: CP) -> int:
    """``R + R * sum_n I_n``."""
    return _check(x).num_params


def random(
    key: jax.Array,
    shape: Sequence[int],
    rank: int,
    *,
    std: float | None = None,
    dtype: Any = jnp.float32,
) -> CP:
    """Random CP tensor with unit weights and Gaussian factors.

    With ``std=None`` the factors are N(0, 1). With ``std=s`` they are N(0, sigma^2) with
    ``sigma = (s**2 / R) ** (1 / (2 d))``: each entry is a sum of R uncorrelated products
    of d independent zero-mean factors, so its variance is ``R * sigma**(2 d) = s**2``.

    Args:
      key: PRNG key.
      shape: (I_1, ..., I_d).
      rank: R >= 1.
      std: target standard deviation of the reconstructed entries, or None.
      dtype: floating dtype of the arrays.

    Returns:
      CP tensor with weights (R,) and factors (I_n, R).
    """
    with jax.named_scope("tnjax.formats.cp.random"):
        shape = _common.check_shape(shape, "cp.random")
        rank = _common.check_positive_int(rank, "rank", "cp.random")
        sigma = _common.factor_std(std, rank, len(shape))
        keys = jax.random.split(key, len(shape))
        factors = [
            _common.normal(k, (n, rank), dtype, sigma) for k, n in zip(keys, shape, strict=True)
        ]
        return CP(jnp.ones((rank,), dtype), factors)


def _mttkrp(x: jax.Array, factors: Sequence[jax.Array], mode: int) -> jax.Array:
    """``X_(mode) @ khatri_rao(other factors)`` (I_mode, R), without forming the product."""
    d = x.ndim
    letters = _common.MODE_LETTERS[:d]
    operands = [x]
    specs = [letters]
    for m in range(d):
        if m != mode:
            operands.append(factors[m])
            specs.append(letters[m] + "Z")
    return jnp.einsum(",".join(specs) + "->" + letters[mode] + "Z", *operands)


def _hadamard_gram(grams: Sequence[jax.Array], skip: int | None = None) -> jax.Array:
    out = None
    for m, g in enumerate(grams):
        if m == skip:
            continue
        out = g if out is None else out * g
    return out


def _normalize_columns(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    norms = jnp.linalg.norm(a, axis=0)
    safe = jnp.where(norms > 0, norms, 1.0)
    return a / safe, norms


def _init_factors(
    x: jax.Array, rank: int, init: str, key: jax.Array, method: str
) -> list[jax.Array]:
    factors = []
    d = x.ndim
    for n, size in enumerate(x.shape):
        if init == "svd":
            u, _, _ = _common.svd_step(
                jnp.moveaxis(x, n, 0).reshape(size, -1), rank, None, key, method, n
            )
            if u.shape[1] < rank:
                # Not enough singular vectors in this mode: pad with random columns, as
                # TensorLy does.
                pad_key = jax.random.fold_in(key, d + n)
                extra = jax.random.normal(pad_key, (size, rank - u.shape[1]), x.dtype)
                u = jnp.concatenate([u, extra], axis=1)
            factors.append(u)
        else:
            factors.append(jax.random.normal(jax.random.fold_in(key, n), (size, rank), x.dtype))
    return factors


def from_dense(
    x: ArrayLike,
    rank: int | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    init: str = "svd",
    n_iter_max: int = 100,
    tol: float = 1e-8,
    svd_method: str = "auto",
) -> CP:
    """CP decomposition by alternating least squares (CP-ALS).

    Each sweep updates every factor in turn by the least-squares solution
    ``A_n = MTTKRP_n @ pinv(hadamard_{m != n} (A_m^T A_m))`` where
    ``MTTKRP_n = X_(n) @ khatri_rao(A_m, m != n)`` is computed by one einsum, then moves
    the column norms of ``A_n`` into the weights (factors stay unit-norm). The relative
    reconstruction error is tracked from the Gram matrices without reconstructing; the
    loop (a `jax.lax.while_loop`) stops after `n_iter_max` sweeps or when the error
    changes by less than `tol`. Jittable for fixed `rank`, `init`, `n_iter_max`.

    Args:
      x: (I_1, ..., I_d) tensor.
      rank: R >= 1 (required; CP has no tolerance-based rank).
      rtol: not supported for CP; must be None.
      key: PRNG key for random initialisation, padding and randomized SVDs.
      init: ``"svd"`` (leading left singular vectors of each unfolding, padded with random
        columns when R > I_n) or ``"random"`` (Gaussian).
      n_iter_max: maximal number of ALS sweeps.
      tol: stop when the relative error changes by less than this between sweeps.
      svd_method: SVD method for ``init="svd"``; see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      CP tensor with unit-norm factor columns and weights (R,).

    Raises:
      ValueError: if `rank` is missing or < 1, `rtol` is given, `init` is unknown or
        `x` has fewer than 2 modes.
    """
    with jax.named_scope("tnjax.formats.cp.from_dense"):
        x = _common.dense_tensor(x, "cp.from_dense")
        if rtol is not None:
            raise ValueError(
                "cp.from_dense: CP has no tolerance-based rank; pass rank=R instead of rtol."
            )
        if rank is None:
            raise ValueError(f"cp.from_dense: rank is required for a tensor of shape {x.shape}.")
        rank = _common.check_positive_int(rank, "rank", "cp.from_dense")
        if init not in ("svd", "random"):
            raise ValueError(f"cp.from_dense: init must be 'svd' or 'random', got {init!r}.")
        if x.ndim < 2:
            raise ValueError(f"cp.from_dense: needs a tensor with ndim >= 2, got shape {x.shape}.")
        key = _common.default_key(key)
        d = x.ndim
        factors = _init_factors(x, rank, init, key, svd_method)
        norm_x2 = jnp.sum(x * x)
        norm_x = jnp.sqrt(norm_x2)
        dtype = x.dtype

        def sweep(factors):
            factors = list(factors)
            grams = [f.T @ f for f in factors]
            weights = jnp.ones((rank,), dtype)
            for n in range(d):
                v = _hadamard_gram(grams, skip=n)
                mttkrp = _mttkrp(x, factors, n)
                a = mttkrp if v is None else mttkrp @ jnp.linalg.pinv(v, hermitian=True)
                unnormalized = a
                factors[n], weights = _normalize_columns(a)
                grams[n] = factors[n].T @ factors[n]
            # <x, x_hat> and ||x_hat||^2 from the last update, so no reconstruction.
            inner = jnp.sum(mttkrp * unnormalized)
            all_gram = _hadamard_gram(grams)
            norm_hat2 = weights @ all_gram @ weights
            err2 = jnp.maximum(norm_x2 - 2 * inner + norm_hat2, 0.0)
            err = jnp.sqrt(err2) / jnp.where(norm_x > 0, norm_x, 1.0)
            return tuple(factors), weights, err

        def cond(state):
            i, _, _, _, change, _ = state
            return (i < n_iter_max) & (change >= tol)

        def body(state):
            i, factors, _, err, _, best = state
            factors, weights, new_err = sweep(factors)
            # keep the best sweep: ALS with a singular Gram matrix can step away from it
            better = new_err < best[2]
            best = jax.tree.map(
                lambda new, old: jnp.where(better, new, old), (factors, weights, new_err), best
            )
            return i + 1, factors, weights, new_err, jnp.abs(err - new_err), best

        start = tuple(_normalize_columns(f)[0] for f in factors)
        ones = jnp.ones((rank,), dtype)
        inf = jnp.asarray(jnp.inf, dtype)
        init_state = (jnp.asarray(0, jnp.int32), start, ones, inf, inf, (start, ones, inf))
        *_, (factors, weights, _) = jax.lax.while_loop(cond, body, init_state)
        return CP(_best_scale(x, CP(weights, factors)) * weights, factors)


def _best_scale(x: jax.Array, approx: CP) -> jax.Array:
    """The scalar c minimising ||x - c approx|| (0 for a zero approximation): applied to the
    weights, the result is never further from x than the zero tensor is."""
    x_hat = to_dense(approx)
    norm2 = jnp.sum(x_hat * x_hat)
    return jnp.where(norm2 > 0, jnp.sum(x * x_hat) / jnp.where(norm2 > 0, norm2, 1.0), 0.0)


# --------------------------------------------------------------------------- as a layer weight
# The CP family of `tnjax.formats.layout`: one factor (mode..., R) per tensor mode, one rank R
# shared by all of them; the weights vector is folded into a factor.


def weight_structure(
    modes: Sequence[_common.Axis], shape: Sequence[int], absorbed: Sequence[int] = ()
) -> _common.WeightStructure:
    """Factor k holds tensor mode k and the shared bond "r"; R <= prod(shape) / max(shape)."""
    if absorbed:
        raise ValueError("CP keeps no mode uncompressed (absorbed modes are a Tucker notion)")
    total = _common.prod(shape)
    return _common.WeightStructure(
        bonds=("r",),
        open_bonds=(),
        cores=tuple((tuple(m), ("r",)) for m in modes),
        fixed_cores=(),
        max_ranks=(max(1, total // max(shape)),),
    )


def _folded(x: CP, into: int = 0) -> list[jax.Array]:
    """The factors with the weights folded into factor `into`."""
    factors = list(x.factors)
    factors[into] = factors[into] * x.weights[None, :]
    return factors


def weight_rank(shape: Sequence[int], ranks: Sequence[int], absorbed: Sequence[int] = ()) -> int:
    """`random`/`from_dense`'s rank: R."""
    return int(ranks[0])


def weight_cores(x: CP, absorbed: Sequence[int] = ()) -> list[jax.Array]:
    """The factors with the weights folded into the first one, as a layer stores them."""
    return _folded(x)


def weight_from_dense(
    x: jax.Array,
    ranks: Sequence[int],
    key: jax.Array,
    absorbed: Sequence[int] = (),
    *,
    refit_largest: bool = False,
    fold_last: bool = False,
) -> list[jax.Array]:
    """CP factors (I_k, R) of `x` (the weights folded into the first factor, or the last).

    CP overrides the layout's generic decomposition (`from_dense` then `weight_cores`).

    Below the maximal rank: CP-ALS (`from_dense`). With `refit_largest`, ALS runs on `x`
    with its largest mode last and that mode's factor is then re-solved by a QR-based
    least-squares fit against the Khatri-Rao product of the others (ALS solves normal
    equations, which square the condition number), which can only lower that run's error.
    At the maximal rank (R >= the product of all modes but the largest) the Khatri-Rao
    product is square, so that fit is exact for generic factors of the other modes: ALS is
    skipped and random ones are used (SVD-initialised ALS drives the spare columns together,
    to condition numbers ~1e6, too many for float32).
    """
    rank = int(ranks[0])
    d = x.ndim
    order = sorted(range(d), key=lambda k: (x.shape[k], k))
    permuted = jnp.transpose(x, order)
    full = rank >= _common.prod(permuted.shape[:-1])
    if not (full or refit_largest):
        return _folded(from_dense(x, rank=rank, key=key), d - 1 if fold_last else 0)
    if full:
        t = random(key, permuted.shape, rank, dtype=permuted.dtype)
    else:
        t = from_dense(permuted, rank=rank, key=key)
    factors = _folded(t)
    letters = _common.MODE_LETTERS[: d - 1]
    kr = jnp.einsum(",".join(f"{c}Z" for c in letters) + f"->{letters}Z", *factors[:-1])
    a = kr.reshape(-1, rank)
    b = permuted.reshape(-1, permuted.shape[-1])
    last = jnp.linalg.lstsq(a, b)[0]
    # One step of iterative refinement squares the relative residual of an ill-conditioned
    # (square) system.
    last = last + jnp.linalg.lstsq(a, b - a @ last)[0]
    factors[-1] = last.T
    stored: list[jax.Array] = [factors[0]] * d
    for pos, k in enumerate(order):
        stored[k] = factors[pos]
    return stored
