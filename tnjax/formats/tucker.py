"""Tucker format: a core tensor multiplied by a factor matrix along every mode.

``x[i_1..i_d] = sum_{r_1..r_d} core[r_1..r_d] * prod_n factors[n][i_n, r_n]``

Layout follows TensorLy: ``core`` (R_1, ..., R_d), ``factors[n]`` (I_n, R_n), so
``tensorly.tucker_to_tensor((core, factors))`` reconstructs the same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from tnjax.formats import _common
from tnjax.ops import linalg

__all__ = ["Tucker", "to_dense", "num_params", "random", "from_dense"]


class Tucker(_common.TensorFormat):
    """A tensor in Tucker format, as a pytree with leaves ``core`` and ``factors``.

    Attributes:
      core: (R_1, ..., R_d) core tensor.
      factors: tuple of d arrays, ``factors[n]`` of shape (I_n, R_n).
    """

    _fields = ("core", "factors")
    core: jax.Array
    factors: tuple[jax.Array, ...]

    def __init__(self, core: ArrayLike, factors: Sequence[ArrayLike]):
        """Builds a Tucker tensor, checking that all shapes agree.

        Args:
          core: (R_1, ..., R_d) array.
          factors: sequence of d arrays of shapes (I_n, R_n).

        Raises:
          ValueError: if a shape does not fit, naming the offending shapes.
        """
        core = _common.as_array(core)
        factors = tuple(_common.as_array(f) for f in factors)
        if not factors:
            raise ValueError("Tucker needs at least one factor, got none.")
        if core.ndim != len(factors):
            raise ValueError(
                f"Tucker core has shape {tuple(core.shape)} ({core.ndim} modes) but there are "
                f"{len(factors)} factors with shapes {_common.shapes_str(factors)}; "
                "give one factor per core mode."
            )
        for n, f in enumerate(factors):
            if f.ndim != 2 or f.shape[1] != core.shape[n]:
                raise ValueError(
                    f"Tucker factor {n} has shape {tuple(f.shape)} but the core has shape "
                    f"{tuple(core.shape)}; factor {n} must have shape (I_{n}, {core.shape[n]})."
                )
        self._set(core=core, factors=factors)

    @property
    def shape(self) -> tuple[int, ...]:
        """(I_1, ..., I_d)."""
        return tuple(int(f.shape[0]) for f in self.factors)

    @property
    def ranks(self) -> tuple[int, ...]:
        """(R_1, ..., R_d), the core shape."""
        return tuple(int(r) for r in self.core.shape)


def _check(x: Any) -> Tucker:
    return _common.check_type(x, Tucker, "a Tucker tensor")


def to_dense(x: Tucker) -> jax.Array:
    """Reconstructs the full tensor.

    ``out[i_1..i_d] = sum_{r} core[r_1..r_d] prod_n factors[n][i_n, r_n]``.

    Args:
      x: Tucker tensor with core (R_1..R_d) and factors (I_n, R_n).

    Returns:
      (I_1, ..., I_d) array.
    """
    with jax.named_scope("tnjax.formats.tucker.to_dense"):
        x = _check(x)
        d = len(x.factors)
        modes, ranks = _common.MODE_LETTERS[:d], _common.RANK_LETTERS[:d]
        spec = (
            ranks
            + ","
            + ",".join(f"{m}{r}" for m, r in zip(modes, ranks, strict=True))
            + "->"
            + modes
        )
        return jnp.einsum(spec, x.core, *x.factors)


def num_params(x: Tucker) -> int:
    """``prod_n R_n + sum_n I_n R_n``."""
    return _check(x).num_params


def _rank_tuple(rank: Any, d: int, what: str) -> tuple[int, ...]:
    if _common.is_int(rank):
        if rank < 1:
            raise ValueError(f"{what}: rank must be >= 1, got {rank}.")
        return (int(rank),) * d
    try:
        ranks = tuple(rank)
    except TypeError:
        raise ValueError(
            f"{what}: rank must be an int or a tuple of {d} ints, got {rank!r}."
        ) from None
    if len(ranks) != d or not all(_common.is_int(r) and r >= 1 for r in ranks):
        raise ValueError(
            f"{what}: rank must be an int or a tuple of {d} ints >= 1 (one per mode), got {ranks}."
        )
    return tuple(int(r) for r in ranks)


def _clip_ranks(ranks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Clips R_n to I_n and to prod_{m != n} R_m (larger ranks cannot be realised)."""
    ranks = [min(r, n) for r, n in zip(ranks, shape, strict=True)]
    changed = len(ranks) > 1
    while changed:
        changed = False
        for n in range(len(ranks)):
            cap = math.prod(ranks[:n] + ranks[n + 1 :])
            if ranks[n] > cap:
                ranks[n] = cap
                changed = True
    return tuple(ranks)


def random(
    key: jax.Array,
    shape: Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float | None = None,
    dtype: Any = jnp.float32,
) -> Tucker:
    """Random Tucker tensor with Gaussian core and factors.

    Ranks are used as given (not clipped). With ``std=None`` everything is N(0, 1). With
    ``std=s`` the core and the factors are N(0, sigma^2) with
    ``sigma = (s**2 / prod_n R_n) ** (1 / (2 (d + 1)))``: each entry is a sum of
    ``prod_n R_n`` uncorrelated products of d + 1 independent zero-mean numbers (a core
    entry and one entry of each factor), so its variance is
    ``prod_n R_n * sigma**(2 (d + 1)) = s**2``.

    Args:
      key: PRNG key.
      shape: (I_1, ..., I_d).
      rank: int (same for every mode) or tuple (R_1, ..., R_d).
      std: target standard deviation of the reconstructed entries, or None.
      dtype: floating dtype of the arrays.

    Returns:
      Tucker tensor with core (R_1..R_d) and factors (I_n, R_n).
    """
    with jax.named_scope("tnjax.formats.tucker.random"):
        shape = _common.check_shape(shape, "tucker.random")
        ranks = _rank_tuple(rank, len(shape), "tucker.random")
        sigma = _common.factor_std(std, math.prod(ranks), len(shape) + 1)
        keys = jax.random.split(key, len(shape) + 1)
        core = _common.normal(keys[0], ranks, dtype, sigma)
        factors = [
            _common.normal(k, (n, r), dtype, sigma)
            for k, n, r in zip(keys[1:], shape, ranks, strict=True)
        ]
        return Tucker(core, factors)


def _project(x: jax.Array, factors: Sequence[jax.Array], skip: int | None = None) -> jax.Array:
    """``x`` multiplied by ``factors[m].T`` along every mode m != skip; mode `skip` first."""
    d = x.ndim
    modes, ranks = _common.MODE_LETTERS[:d], _common.RANK_LETTERS[:d]
    out = [modes[m] if m == skip else ranks[m] for m in range(d)]
    if skip is not None:
        out = [out[skip]] + out[:skip] + out[skip + 1 :]
    specs = [modes] + [f"{modes[m]}{ranks[m]}" for m in range(d) if m != skip]
    operands = [x] + [factors[m] for m in range(d) if m != skip]
    return jnp.einsum(",".join(specs) + "->" + "".join(out), *operands)


def from_dense(
    x: ArrayLike,
    rank: int | Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    key: jax.Array | None = None,
    n_iter_max: int = 100,
    tol: float = 1e-6,
    svd_method: str = "auto",
) -> Tucker:
    """Tucker decomposition: truncated HOSVD, refined by HOOI.

    HOSVD: ``factors[n]`` = leading R_n left singular vectors of the mode-n unfolding.
    HOOI (higher-order orthogonal iteration): repeatedly set ``factors[n]`` to the leading
    left singular vectors of the unfolding of ``x`` projected on all other factors; the
    core is ``x`` projected on all factors. With orthonormal factors the relative error is
    ``sqrt(||x||^2 - ||core||^2) / ||x||``; the loop (a `jax.lax.while_loop`) stops after
    `n_iter_max` sweeps or when that error changes by less than `tol`.

    Ranks: an int (same for all modes) or a tuple (R_1, ..., R_d), each clipped to I_n and
    to the product of the other ranks. With `rtol`, each mode's HOSVD rank is the
    smallest with truncation error ``<= rtol / sqrt(d) * ||x||`` (capped by `rank` if
    given), which bounds the HOSVD error by ``rtol * ||x||``; HOOI then runs at those
    ranks. With `rtol` the ranks are chosen on the host (not jittable); with a fixed
    `rank` the whole decomposition is jittable.

    Args:
      x: (I_1, ..., I_d) tensor.
      rank: int or tuple of d ints, or None (then `rtol` is required).
      rtol: relative Frobenius error target for the HOSVD truncation, or None.
      key: PRNG key for randomized SVDs (large unfoldings).
      n_iter_max: maximal number of HOOI sweeps (0 gives the HOSVD).
      tol: stop when the relative error changes by less than this between sweeps.
      svd_method: see `tnjax.ops.linalg.truncated_svd`.

    Returns:
      Tucker tensor with orthonormal factors (I_n, R_n) and core (R_1..R_d).

    Raises:
      ValueError: if neither `rank` nor `rtol` is given, or `rank` is malformed.
    """
    with jax.named_scope("tnjax.formats.tucker.from_dense"):
        x, d, rtol = _common.dense_input(x, rank, rtol, "tucker.from_dense", lambda d: d)
        ranks = x.shape if rank is None else _rank_tuple(rank, d, "tucker.from_dense")
        ranks = _clip_ranks(ranks, x.shape)
        key = _common.default_key(key)

        factors = []
        atol = None
        if rtol is not None:
            atol = rtol / math.sqrt(d) * float(jnp.linalg.norm(x))
        for n in range(d):
            unfolding = jnp.moveaxis(x, n, 0).reshape(x.shape[n], -1)
            u, _, _ = _common.svd_step(unfolding, ranks[n], atol, key, svd_method, n)
            factors.append(u)
        if rtol is not None:
            ranks = _clip_ranks(tuple(f.shape[1] for f in factors), x.shape)
            factors = [f[:, :r] for f, r in zip(factors, ranks, strict=True)]

        norm_x = jnp.linalg.norm(x)
        safe_norm = jnp.where(norm_x > 0, norm_x, 1.0)

        def body(state):
            i, factors, err, _ = state
            factors = list(factors)
            for n in range(d):
                y = _project(x, factors, skip=n).reshape(x.shape[n], -1)
                sub = _common.svd_key(key, d + n, y.shape, ranks[n], svd_method)
                if sub is not None:
                    sub = jax.random.fold_in(sub, i)
                u, _, _ = linalg.truncated_svd(y, ranks[n], key=sub, method=svd_method)
                factors[n] = u
            core = _project(x, factors)
            new_err = jnp.sqrt(jnp.abs(norm_x**2 - jnp.sum(core * core))) / safe_norm
            return i + 1, tuple(factors), new_err, jnp.abs(err - new_err)

        def cond(state):
            i, _, _, change = state
            return (i < n_iter_max) & (change >= tol)

        inf = jnp.asarray(jnp.inf, x.dtype)
        state = (jnp.asarray(0, jnp.int32), tuple(factors), inf, inf)
        _, factors, _, _ = jax.lax.while_loop(cond, body, state)
        core = _project(x, factors)
        return Tucker(core, factors)


# --------------------------------------------------------------------------- as a layer weight
# The Tucker family of `tnjax.formats.layout`: a core with one axis per tensor mode and a
# factor (mode..., R_k) per factored mode. Modes listed in `absorbed` keep no factor: their
# full-size axis stays in the core (the Tucker-2 convolution keeps kh, kw there).


def weight_structure(
    modes: Sequence[_common.Axis], shape: Sequence[int], absorbed: Sequence[int] = ()
) -> _common.WeightStructure:
    """Core (R_1..R_d, absorbed modes at full size) first, then factor k with bond "r{k}"."""
    total = _common.prod(shape)
    factored = [k for k in range(len(modes)) if k not in absorbed]
    core = tuple(tuple(modes[k]) if k in absorbed else (f"r{k}",) for k in range(len(modes)))
    return _common.WeightStructure(
        bonds=tuple(f"r{k}" for k in factored),
        open_bonds=(),
        cores=(core,) + tuple((tuple(modes[k]), (f"r{k}",)) for k in factored),
        fixed_cores=(0,),
        max_ranks=tuple(min(shape[k], total // shape[k]) for k in factored),
    )


def weight_rank(shape: Sequence[int], ranks: Sequence[int], absorbed: Sequence[int] = ()):
    """`random`/`from_dense`'s rank: the bond sizes, absorbed modes at their full size."""
    it = iter(ranks)
    return tuple(int(n) if k in absorbed else int(next(it)) for k, n in enumerate(shape))


def weight_cores(x: Tucker, absorbed: Sequence[int] = ()) -> list[jax.Array]:
    """[core, factors of the factored modes], the absorbed factors multiplied into the core."""
    if not absorbed:
        return [x.core, *x.factors]
    d = x.core.ndim
    old, new = _common.MODE_LETTERS[:d], _common.RANK_LETTERS[:d]
    out = "".join(new[k] if k in absorbed else old[k] for k in range(d))
    spec = ",".join([old] + [new[k] + old[k] for k in absorbed]) + "->" + out
    core = jnp.einsum(spec, x.core, *(x.factors[k] for k in absorbed))
    return [core] + [f for k, f in enumerate(x.factors) if k not in absorbed]
