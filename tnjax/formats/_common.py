"""Helpers shared by the tensor formats: the pytree base class, rank checks, TT-SVD sweep."""

from __future__ import annotations

import dataclasses
import math
import string
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from tnjax.ops import linalg

# Einsum letters for tensor modes; rank letters are taken from the upper case set.
MODE_LETTERS = string.ascii_lowercase
RANK_LETTERS = string.ascii_uppercase


def as_array(x: Any) -> Any:
    """`jnp.asarray` for array-likes; jax arrays, tracers and ShapeDtypeStructs pass through."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return x
    return jnp.asarray(x)


def as_float_array(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def dense_tensor(x: ArrayLike, what: str) -> jax.Array:
    """`x` as a float array, checked before any decomposition touches it.

    Concrete inputs are checked on the host: an empty dimension, complex values and
    non-finite entries (which would make the CPU SVD hang or every factor NaN) are named
    errors. Traced inputs (inside `jit`) cannot be inspected and pass unchecked.

    Raises:
      ValueError: naming the empty dimension, the complex dtype, or the count and first
        position of the NaN/Inf entries.
    """
    x = jnp.asarray(x)
    if any(n == 0 for n in x.shape):
        raise ValueError(
            f"{what}: dimension {[n for n in x.shape].index(0)} of the tensor of shape "
            f"{tuple(x.shape)} is empty; there is nothing to decompose"
        )
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(
            f"{what}: complex input ({x.dtype}) is not supported; decompose the real and "
            "imaginary parts separately (or stack them as one more mode)"
        )
    x = as_float_array(x)
    if not isinstance(x, jax.core.Tracer):
        host = np.asarray(x)
        bad = ~np.isfinite(host)
        count = int(bad.sum())
        if count:
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), host.shape))
            raise ValueError(
                f"{what}: the tensor of shape {tuple(x.shape)} has {count} non-finite "
                f"value(s) (NaN or Inf), the first at index {first} ({host[first]}); "
                "clean the input before decomposing"
            )
    return x


def default_key(key: jax.Array | None) -> jax.Array:
    return jax.random.key(0) if key is None else key


def prod(xs: Sequence[int]) -> int:
    return int(math.prod(int(x) for x in xs))


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    """Validates a tensor shape (non-empty tuple of positive ints)."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"{what}: shape must be a tuple of ints, got {shape!r}.") from None
    if not shape or not all(is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"{what}: shape must be a non-empty tuple of ints >= 1, got {shape}.")
    return tuple(int(s) for s in shape)


def check_positive_int(value: Any, name: str, what: str) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{what}: {name} must be an int >= 1, got {value!r}.")
    return int(value)


def factor_std(std: float | None, num_paths: int, num_factors: int) -> float:
    """Per-factor standard deviation so a sum of `num_paths` products has std `std`.

    Each reconstructed entry is a sum of `num_paths` products of `num_factors` independent
    zero-mean N(0, sigma^2) entries, and distinct products are uncorrelated, so its
    variance is ``num_paths * sigma**(2 * num_factors)``. Solving for ``std**2`` gives
    ``sigma = (std**2 / num_paths) ** (1 / (2 * num_factors))``.
    """
    if std is None:
        return 1.0
    if not std >= 0:
        raise ValueError(f"std must be >= 0 or None, got {std}.")
    return float((std**2 / num_paths) ** (1.0 / (2 * num_factors)))


def normal(key: jax.Array, shape: tuple[int, ...], dtype: Any, scale: float) -> jax.Array:
    """``scale * N(0, 1)`` samples of `shape`.

    Drawn flat and reshaped: XLA:CPU compiles the sampler for a 3-D or 4-D shape several
    times slower than for a vector (seconds per core shape on a small machine).
    """
    flat = jax.random.normal(key, (prod(shape),), dtype=dtype)
    return scale * flat.reshape(shape)


def shapes_str(arrays: Sequence[Any]) -> str:
    return "[" + ", ".join(str(tuple(a.shape)) for a in arrays) + "]"


class TensorFormat:
    """Base of the format classes: an immutable pytree whose leaves are its arrays.

    Subclasses list their array fields in `_fields` (each an array or a tuple of arrays)
    and validate shapes in `__init__`. Unflattening (inside `jit`, `vmap`, `grad`)
    bypasses `__init__`, so transformed instances may carry placeholder or batched leaves;
    shape properties are meaningful on unbatched instances only.
    """

    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._tree_flatten_with_keys, cls._tree_unflatten, cls._tree_flatten
        )

    def _tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return tuple(getattr(self, f) for f in self._fields), None

    def _tree_flatten_with_keys(self) -> tuple[tuple[Any, ...], None]:
        children = tuple((jax.tree_util.GetAttrKey(f), getattr(self, f)) for f in self._fields)
        return children, None

    @classmethod
    def _tree_unflatten(cls, aux: None, children: Sequence[Any]) -> TensorFormat:
        del aux
        obj = object.__new__(cls)
        for name, child in zip(cls._fields, children, strict=True):
            object.__setattr__(obj, name, child)
        return obj

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable; build a new one instead of setting {name!r}."
        )

    # The verbs live in the format's module (`tt.random`, `tt.to_dense`, ...); the class
    # spellings delegate to them, so each is written once.

    @classmethod
    def _module(cls) -> Any:
        return sys.modules[cls.__module__]

    @classmethod
    def random(cls, *args: Any, **kwargs: Any) -> TensorFormat:
        """A random tensor of this format; see the module's `random` (e.g. `tt.random`)."""
        return cls._module().random(*args, **kwargs)

    @classmethod
    def from_dense(cls, *args: Any, **kwargs: Any) -> TensorFormat:
        """Decomposes a dense array; see the module's `from_dense` (e.g. `tt.from_dense`)."""
        return cls._module().from_dense(*args, **kwargs)

    def to_dense(self) -> jax.Array:
        """The full array; see the module's `to_dense` (e.g. `tt.to_dense`)."""
        return self._module().to_dense(self)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_params(self) -> int:
        """Number of scalars stored (sum of the sizes of all arrays)."""
        return sum(prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(self))

    @property
    def dtype(self) -> Any:
        """Result dtype of all the arrays."""
        dtypes = {jnp.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(self)}
        return dtypes.pop() if len(dtypes) == 1 else jnp.result_type(*dtypes)

    def __repr__(self) -> str:
        parts = []
        for f in self._fields:
            v = getattr(self, f)
            if isinstance(v, tuple):
                parts.append(f"{f}={shapes_str(v)}")
            else:
                parts.append(f"{f}={tuple(getattr(v, 'shape', ()))}")
        return f"{type(self).__name__}({', '.join(parts)}, dtype={self.dtype})"


def check_type(x: Any, cls: type, what: str) -> Any:
    """`x` if it is a `cls`, else a ValueError naming what was expected."""
    if not isinstance(x, cls):
        raise ValueError(f"expected {what}, got {type(x).__name__}.")
    return x


def tt_rank_tuple(rank: Any, num_cores: int, what: str) -> tuple[int, ...]:
    """TT ranks ``(1, r_1, ..., r_{d-1}, 1)`` from an int or a length d+1 tuple."""
    if is_int(rank):
        if rank < 1:
            raise ValueError(f"{what}: rank must be >= 1, got {rank}.")
        return (1,) + (int(rank),) * (num_cores - 1) + (1,)
    try:
        ranks = tuple(rank)
    except TypeError:
        raise ValueError(
            f"{what}: rank must be an int or a tuple of {num_cores + 1} ints, got {rank!r}."
        ) from None
    if len(ranks) != num_cores + 1:
        raise ValueError(
            f"{what}: a rank tuple needs {num_cores + 1} entries (r_0, ..., r_{num_cores}) "
            f"for {num_cores} cores, got {len(ranks)}: {ranks}."
        )
    if not all(is_int(r) and r >= 1 for r in ranks):
        raise ValueError(f"{what}: ranks must be ints >= 1, got {ranks}.")
    if ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(
            f"{what}: boundary TT ranks must be 1, got r_0={ranks[0]} and "
            f"r_{num_cores}={ranks[-1]} in {ranks}; set them to 1."
        )
    return tuple(int(r) for r in ranks)


def dense_input(x: ArrayLike, rank: Any, rtol: Any, what: str, num_ranks: Any) -> tuple:
    """The checked input of a `from_dense`: (x as a float array, its ndim, rtol).

    Args:
      x: the dense tensor (ndim >= 1).
      rank, rtol: the caller's arguments; at least one must be given.
      what: the function's name for messages (e.g. "tt.from_dense").
      num_ranks: how many ranks a tuple `rank` has, given ndim d (for the message).
    """
    x = dense_tensor(x, what)
    d = x.ndim
    if d < 1:
        raise ValueError(f"{what}: needs ndim >= 1, got shape {x.shape}.")
    rtol = check_rtol(rtol, what)
    if rank is None and rtol is None:
        raise ValueError(
            f"{what}: give rank (int or {num_ranks(d)}-tuple) or rtol for shape {x.shape}."
        )
    return x, d, rtol


def check_rtol(rtol: Any, what: str) -> float | None:
    if rtol is None:
        return None
    if not (isinstance(rtol, (int, float, np.floating)) and rtol >= 0):
        raise ValueError(f"{what}: rtol must be a float >= 0, got {rtol!r}.")
    return float(rtol)


def resolve_method(shape: tuple[int, int], rank: int, method: str) -> str:
    """The SVD method `truncated_svd` will use (``"auto"`` resolved from the shape)."""
    return linalg.choose_method(shape, min(rank, *shape)) if method == "auto" else method


def svd_key(key: jax.Array, index: Any, shape: tuple[int, int], rank: int, method: str):
    """``fold_in(key, index)`` if the randomized SVD will run, else None.

    Deriving keys only when they are used keeps PRNG work (and its compilation in eager
    mode) out of decompositions that only use full SVDs.
    """
    if resolve_method(shape, rank, method) != "randomized":
        return None
    return jax.random.fold_in(key, index)


def svd_step(
    matrix: jax.Array,
    max_rank: int,
    atol: float | None,
    key: jax.Array,
    method: str,
    index: int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Truncated SVD at `max_rank` (clipped to the matrix), or by absolute tolerance.

    The randomized method, if used, gets the key ``fold_in(key, index)``.
    """
    max_rank = min(max_rank, *matrix.shape)
    method = resolve_method(matrix.shape, max_rank, method)
    sub = svd_key(key, index, matrix.shape, max_rank, method)
    if atol is None:
        return linalg.truncated_svd(matrix, max_rank, key=sub, method=method)
    return linalg.svd_with_tolerance(matrix, max_rank, key=sub, atol=atol, method=method)


def tt_sweep(
    x: jax.Array,
    sizes: Sequence[int],
    first_rank: int,
    max_ranks: Sequence[int] | None,
    atol: float | None,
    key: jax.Array,
    method: str,
    last_rank: int = 1,
    index_offset: int = 0,
) -> list[jax.Array]:
    """Left-to-right TT-SVD (Oseledets 2011) of an array with ``first_rank * prod(sizes)
    * last_rank`` entries, laid out as (first_rank, sizes..., last_rank).

    Step k reshapes the remainder to ``(r_k * I_k, -1)``, keeps a truncated SVD with rank
    ``min(rows, cols, max_ranks[k + 1])`` (or the tolerance rank), stores ``U`` as core k
    and carries ``diag(S) @ Vt`` on; a randomized SVD at step k uses
    ``fold_in(key, index_offset + k)``. Returns cores ``(r_k, I_k, r_{k+1})``; the last one
    is ``(r_{d-1}, I_{d-1}, last_rank)``.
    """
    d = len(sizes)
    cores = []
    rest = x
    r_prev = first_rank
    for k in range(d - 1):
        mat = rest.reshape(r_prev * sizes[k], -1)
        cap = min(mat.shape) if max_ranks is None else max_ranks[k + 1]
        u, s, vt = svd_step(mat, cap, atol, key, method, index_offset + k)
        r = u.shape[1]
        cores.append(u.reshape(r_prev, sizes[k], r))
        rest = s[:, None] * vt
        r_prev = r
    cores.append(rest.reshape(r_prev, sizes[-1], last_rank))
    return cores


def tt_chain(cores: Sequence[jax.Array]) -> jax.Array:
    """Contracts TT-like cores (r_0, n_k, r_{k+1}) into (r_0, prod n, r_d)."""
    r0 = cores[0].shape[0]
    res = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        r, n, r_next = core.shape
        res = (res @ core.reshape(r, n * r_next)).reshape(-1, r_next)
    return res.reshape(r0, -1, cores[-1].shape[-1])


def tt_round_cores(
    cores: Sequence[jax.Array],
    max_ranks: Sequence[int] | None,
    rtol: float | None,
    key: jax.Array,
    method: str,
) -> list[jax.Array]:
    """TT rounding (Oseledets 2011, Alg. 2) of cores (r_k, n_k, r_{k+1}), r_0 = r_d = 1.

    Right-to-left QR makes cores 1..d-1 right-orthogonal, so the norm of the tensor is
    the norm of core 0; then a left-to-right sweep of truncated SVDs, each with absolute
    tolerance ``rtol / sqrt(d - 1) * ||x||`` and/or the rank caps.
    """
    d = len(cores)
    cores = list(cores)
    if d == 1:
        return cores
    for k in range(d - 1, 0, -1):
        r, n, r_next = cores[k].shape
        # QR of the transposed unfolding (n * r_next, r) gives a right-orthogonal core.
        q, rr = jnp.linalg.qr(cores[k].reshape(r, n * r_next).T, mode="reduced")
        r_new = q.shape[1]
        cores[k] = q.T.reshape(r_new, n, r_next)
        cores[k - 1] = jnp.einsum("anr,sr->ans", cores[k - 1], rr)
    atol = None
    if rtol is not None:
        norm = float(jnp.linalg.norm(cores[0]))
        atol = rtol / math.sqrt(d - 1) * norm
    for k in range(d - 1):
        r, n, r_next = cores[k].shape
        mat = cores[k].reshape(r * n, r_next)
        cap = min(mat.shape) if max_ranks is None else max_ranks[k + 1]
        u, s, vt = svd_step(mat, cap, atol, key, method, k)
        r_new = u.shape[1]
        cores[k] = u.reshape(r, n, r_new)
        cores[k + 1] = jnp.einsum("rs,sna->rna", s[:, None] * vt, cores[k + 1])
    return cores


# --------------------------------------------------------------------------- weight layouts
# What a format family says about a tensor whose modes are given (see `tnjax.formats.layout`).

Axis = tuple[str, ...]  # one axis of a core: a bond name, or the axis names a mode merges


@dataclasses.dataclass(frozen=True)
class WeightStructure:
    """A family's cores over a tensor with named modes (pure Python, no arrays).

    Attributes:
      bonds: the rank bonds, in the family's own order (TT: left to right; Tucker: one per
        factored mode; CP: the single rank; TR: r_0..r_{d-1}).
      open_bonds: size-1 boundary bonds (TT's r_0 and r_d): stored, never ranks.
      cores: each core's axes in storage order, each a bond `(name,)` or a tensor mode
        (the axis names it merges).
      fixed_cores: cores with no rank prior of their own (the Tucker core): pruned along
        with their bonds but not penalised by them.
      max_ranks: the largest useful size of each bond (same order as `bonds`).
    """

    bonds: tuple[str, ...]
    open_bonds: tuple[str, ...]
    cores: tuple[tuple[Axis, ...], ...]
    fixed_cores: tuple[int, ...]
    max_ranks: tuple[int, ...]
