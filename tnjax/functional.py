"""Tensorized layers as pure functions of (layout, cores, inputs): no Flax needed.

This is the way to use tnjax inside other JAX code (optax, equinox, haiku, plain `jax.jit`):
a layout is static data (hashable; close over it or mark it static), the cores are a list of
arrays (a pytree), and every function here is traceable under `jit`, `vmap` and `grad`::

    import jax, optax
    from tnjax import functional as tf

    layout = tf.linear_layout(784, 512, format="ttm", rank=8)     # static structure
    cores = tf.init(layout, jax.random.key(0))                     # list of arrays
    y = tf.linear(layout, cores, x)                                 # (..., 784) -> (..., 512)
    grads = jax.grad(lambda c: tf.linear(layout, c, x).sum())(cores)

`tnjax.nn.Linear`, `Conv` and `Embed` are thin NNX wrappers over these functions. The
contraction is injectable (`contract=`, default `tnjax.ops.contract`), as `nnx.Linear` takes
`dot_general`: any function with `contract`'s signature (spec, *operands, **options).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tnjax import ops
from tnjax.formats.layout import BATCH, Layout, init_std
from tnjax.formats.weights import SPATIAL_DIM_NAMES, conv_layout, embed_layout, linear_layout

__all__ = [
    "linear_layout",
    "conv_layout",
    "embed_layout",
    "init",
    "from_dense",
    "to_dense",
    "operands",
    "linear",
    "conv",
    "embed",
    "attend",
    "cost",
    "conv_padding",
    "conv_output_size",
]

_PADDING_STRINGS = ("SAME", "VALID", "CIRCULAR", "REFLECT")
Cores = Sequence[jax.Array]


def _check_kind(layout: Layout, kind: str, fn: str) -> None:
    if not isinstance(layout, Layout):
        raise TypeError(f"{fn} takes a tnjax Layout first, got {type(layout).__name__}")
    if layout.kind != kind:
        raise ValueError(f"{fn} needs a {kind} layout, got a {layout.kind} one")


def init(
    layout: Layout,
    key: jax.Array,
    *,
    kernel_init: Callable | None = None,
    dtype: Any = jnp.float32,
) -> list[jax.Array]:
    """Random cores whose reconstructed kernel has the dense initialiser's variance.

    Args:
      layout: the weight's layout.
      key: PRNG key.
      kernel_init: the dense initialiser to match (default Flax's: LeCun normal for Linear
        and Conv, std 1/sqrt(E) for Embed).
      dtype: dtype of the cores.

    Returns:
      Cores of shapes `layout.core_shapes`.
    """
    std = init_std(layout, kernel_init, jax.random.fold_in(key, 1))
    return layout.random(key, std, dtype)


def from_dense(
    layout: Layout,
    kernel: jax.typing.ArrayLike,
    key: jax.Array,
    *,
    grow_key: jax.Array | None = None,
) -> list[jax.Array]:
    """Cores decomposing a dense kernel (`layout.dense_shape`); see `Layout.from_dense`."""
    return layout.from_dense(kernel, key, grow_key)


def to_dense(layout: Layout, cores: Cores) -> jax.Array:
    """The reconstructed dense kernel (`layout.dense_shape`): (in, out), (kh, kw, in, out) or
    the (V, E) table. Materialises it."""
    with jax.named_scope("tnjax.functional.to_dense"):
        return layout.to_dense(list(cores))


def operands(layout: Layout, cores: Cores) -> list[jax.Array]:
    """The cores as `contract` operands: merged modes split (free under jit)."""
    if len(cores) != len(layout.core_shapes):
        raise ValueError(
            f"{layout.format} layout has {len(layout.core_shapes)} cores, got {len(cores)}"
        )
    return [jnp.reshape(c, s) for c, s in zip(cores, layout.operand_shapes, strict=True)]


def linear(
    layout: Layout,
    cores: Cores,
    x: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    *,
    contract: Callable = ops.contract,
    optimize: Any = "cost",
    precision: Any = None,
) -> jax.Array:
    """y = x @ W + b with W stored as `cores`: (..., in_features) -> (..., out_features).

    One contraction of x (Z, I_1..I_d) with the cores into (Z, J_1..J_d) (`layout.spec`);
    the planner picks the order for the actual batch, including "reconstruct W first".
    """
    _check_kind(layout, "linear", "linear")
    with jax.named_scope("tnjax.functional.linear"):
        x = jnp.asarray(x)
        n_in, n_out = layout.in_features, layout.out_features
        if x.ndim < 1 or x.shape[-1] != n_in:
            raise ValueError(f"Linear expects inputs (..., {n_in}), got shape {x.shape}")
        lead = x.shape[:-1]
        x = x.reshape((-1, n_in))
        if layout.in_padded != n_in:
            x = jnp.pad(x, ((0, 0), (0, layout.in_padded - n_in)))
        x = x.reshape((x.shape[0], *layout.in_modes))
        y = contract(
            layout.spec, x, *operands(layout, cores), optimize=optimize, precision=precision
        )
        y = y.reshape((y.shape[0], layout.out_padded))[:, :n_out]
        if bias is not None:
            y = y + jnp.asarray(bias, y.dtype)
        return y.reshape((*lead, n_out))


def _ints(value: Any, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    try:
        out = tuple(value)
    except TypeError:
        out = ()
    if len(out) != n or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in out
    ):
        raise ValueError(f"{name} must be an int or {n} ints for this convolution, got {value!r}")
    return tuple(int(v) for v in out)


def conv_padding(
    padding: Any, kernel_size: Sequence[int], dilation: Sequence[int]
) -> tuple[Any, Any]:
    """(padding for `contract`, input pre-padding or None) from an `nnx.Conv` padding.

    "CIRCULAR" and "REFLECT" pad the input as `nnx.Conv` does, then convolve "VALID".
    """
    n = len(kernel_size)
    if isinstance(padding, str):
        p = padding.upper()
        if p not in _PADDING_STRINGS:
            raise ValueError(
                f"padding={padding!r} is not supported; use one of {_PADDING_STRINGS}, an int, "
                "or a sequence of ints or (low, high) pairs"
            )
        if p in ("CIRCULAR", "REFLECT"):
            dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
            return "VALID", (p, tuple(((k - 1) // 2, k // 2) for k in dilated))
        return p, None
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        return ((int(padding), int(padding)),) * n, None
    try:
        pads = []
        for p in padding:
            if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
                pads.append((int(p), int(p)))
            else:
                lo, hi = p
                pads.append((int(lo), int(hi)))
    except (TypeError, ValueError):
        pads = []
    if len(pads) != n:
        raise ValueError(
            f"padding={padding!r} is not valid for a {n}-D convolution; use 'SAME', 'VALID', "
            f"'CIRCULAR', 'REFLECT', an int, or {n} ints or (low, high) pairs"
        )
    return tuple(pads), None


def conv_output_size(n: int, k: int, stride: int, dilation: int, pad: Any) -> int:
    """Output length of one convolved dimension (`pad`: "SAME", "VALID" or (low, high))."""
    k_eff = dilation * (k - 1) + 1
    if pad == "SAME":
        return -(-n // stride)
    lo, hi = (0, 0) if pad == "VALID" else pad
    return max((n + lo + hi - k_eff) // stride + 1, 0)


def _pre_pad(x: jax.Array, pre_pad: Any) -> jax.Array:
    if pre_pad is None:
        return x
    mode, pads = pre_pad
    widths = ((0, 0), *pads, (0, 0))
    return jnp.pad(x, widths, mode="wrap" if mode == "CIRCULAR" else "reflect")


def conv(
    layout: Layout,
    cores: Cores,
    x: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: Any = "SAME",
    dilation: int | Sequence[int] = 1,
    contract: Callable = ops.contract,
    optimize: Any = "cost",
    precision: Any = None,
) -> jax.Array:
    """Cross-correlation with the kernel stored as `cores` (NHWC, as `nnx.Conv`).

    Args:
      layout: a conv layout.
      cores: the cores (`layout.core_shapes`).
      x: (..., H, W, in_features); leading dims are flattened into one batch and restored,
        an unbatched (H, W, in_features) input gives (H', W', out_features).
      bias: (out_features,) or None.
      strides, padding, dilation: as in `nnx.Conv` (`padding`: "SAME", "VALID",
        "CIRCULAR", "REFLECT", an int, or per-dimension ints or (low, high) pairs;
        `dilation` is the kernel dilation).

    Returns:
      (..., H', W', out_features).
    """
    _check_kind(layout, "conv", "conv")
    with jax.named_scope("tnjax.functional.conv"):
        x = jnp.asarray(x)
        n = len(layout.spatial)
        if x.ndim < n + 1 or x.shape[-1] != layout.in_features:
            raise ValueError(
                f"Conv expects inputs (..., {SPATIAL_DIM_NAMES[n]}, {layout.in_features}) for "
                f"a kernel {layout.dense_shape}, got shape {x.shape}"
            )
        strides = _ints(strides, n, "strides")
        dilation = _ints(dilation, n, "dilation")
        pad, pre_pad = conv_padding(padding, layout.kernel_size, dilation)
        lead = x.shape[: -(n + 1)]
        x = _pre_pad(x.reshape((-1, *x.shape[-(n + 1) :])), pre_pad)
        if layout.groups == 1 and layout.in_padded != layout.in_features:  # (grouped: unpadded)
            widths = ((0, 0),) * (n + 1) + ((0, layout.in_padded - layout.in_features),)
            x = jnp.pad(x, widths)
        x = x.reshape((*x.shape[: n + 1], *layout.x_modes))
        y = contract(
            layout.spec,
            x,
            *operands(layout, cores),
            padding=pad,
            strides=strides,
            dilation=dilation,
            optimize=optimize,
            precision=precision,
        )
        y = y.reshape((*y.shape[: n + 1], layout.out_padded))[..., : layout.out_features]
        if bias is not None:
            y = y + jnp.asarray(bias, y.dtype)
        return y.reshape((*lead, *y.shape[1:]))


def _digits(flat: jax.Array, modes: Sequence[int]) -> list[jax.Array]:
    """Row-major digits (i_1..i_d) of flat indices in [0, prod modes), i_1 slowest."""
    digits, stride = [], math.prod(modes)
    for v in modes:
        stride //= v
        digits.append((flat // stride) % v if stride > 1 else flat % v)
    return digits


def _normalise_ids(idx: jax.Array, vocab: int, padded: int) -> tuple[jax.Array, jax.Array]:
    """Wraps negative ids; returns int32/64 ids in [0, V) and the valid mask."""
    info = jnp.iinfo(idx.dtype)
    if info.max < vocab:  # a narrow dtype: every value fits in int32 and compares to V
        idx, info = idx.astype(jnp.int32), jnp.iinfo(jnp.int32)
    signed = info.min < 0
    valid = ((idx >= -vocab) & (idx < vocab)) if signed else (idx < vocab)
    if signed:
        idx = jnp.where(idx < 0, idx + vocab, idx)
    idx = jnp.where(valid, idx, 0)
    wide = padded > np.iinfo(np.int32).max
    return idx.astype(jnp.int64 if wide else jnp.int32), valid


def _vocab_slots(layout: Layout) -> list[tuple[int, int]]:
    """(core, operand axis) holding each vocabulary mode."""
    slots = []
    for name in layout.inputs:
        for ci, axes in enumerate(layout.operand_axes):
            if name in axes:
                slots.append((ci, axes.index(name)))
                break
    return slots


def lookup_spec(layout: Layout) -> str:
    """Spec of a lookup: the gathered core slices (each vocabulary mode replaced by the
    lookup mode Z) -> (Z, feature modes...)."""
    terms = layout.core_terms(dict.fromkeys(layout.inputs, BATCH))
    return f"{','.join(terms)}->{BATCH}{layout.term(layout.outputs)}"


def embed(
    layout: Layout,
    cores: Cores,
    ids: jax.typing.ArrayLike,
    *,
    contract: Callable = ops.contract,
    optimize: Any = "cost",
) -> jax.Array:
    """Rows of the table stored as `cores`, without building the table.

    Each id is split into its digits (i_1..i_d) over the vocabulary modes; only the core
    slices `core_k[..., i_k, ...]` are gathered and contracted, batched over the lookups,
    so a lookup costs O(n r^2 E) and gradients touch only the gathered slices.

    Args:
      layout: an embed layout.
      cores: the cores.
      ids: integer array (...) with values in [-V, V) (negative from the end).

    Returns:
      (..., features); NaN rows for out-of-range ids, as `nnx.Embed`.
    """
    _check_kind(layout, "embed", "embed")
    with jax.named_scope("tnjax.functional.embed"):
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"Embed indices must have an integer dtype, got {ids.dtype} with shape "
                f"{ids.shape}; cast them, e.g. indices.astype(jnp.int32)"
            )
        ops_ = operands(layout, cores)
        lead = ids.shape
        n = math.prod(lead)
        if n == 0:
            return jnp.zeros((*lead, layout.out_features), ops_[0].dtype)
        flat, valid = _normalise_ids(ids.reshape(n), layout.in_features, layout.in_padded)
        # The barrier keeps XLA from fusing the digit arithmetic into the gathers: fused,
        # XLA:CPU keeps extra copies of the gathered slices alive (12.6 MB more working
        # memory in the 4096-id TT-matrix case of scripts/bench.py, 64.1 -> 51.5 MB).
        digits = jax.lax.optimization_barrier(_digits(flat, layout.in_modes))
        for (ci, axis), digit in zip(_vocab_slots(layout), digits, strict=True):
            # Gather only the slices of the requested rows; clip: digits are in range.
            ops_[ci] = jnp.take(ops_[ci], digit, axis=axis, mode="clip")
        y = contract(lookup_spec(layout), *ops_, optimize=optimize)
        y = y.reshape(n, layout.out_padded)[:, : layout.out_features]
        y = jnp.where(valid[:, None], y, jnp.asarray(jnp.nan, y.dtype))
        return y.reshape(*lead, layout.out_features)


def attend(
    layout: Layout,
    cores: Cores,
    query: jax.typing.ArrayLike,
    *,
    contract: Callable = ops.contract,
    optimize: Any = "cost",
) -> jax.Array:
    """Inner products of queries with every row of the table: query @ table.T.

    Args:
      query: (..., features).

    Returns:
      (..., num_embeddings).
    """
    _check_kind(layout, "embed", "attend")
    with jax.named_scope("tnjax.functional.attend"):
        query = jnp.asarray(query)
        e = layout.out_features
        if query.ndim < 1 or query.shape[-1] != e:
            raise ValueError(f"Embed.attend expects a query (..., {e}), got shape {query.shape}")
        lead = query.shape[:-1]
        n = math.prod(lead)
        q = query.reshape(n, e)
        if layout.out_padded != e:
            q = jnp.pad(q, ((0, 0), (0, layout.out_padded - e)))
        q = q.reshape(n, *layout.out_modes)
        terms = ",".join(layout.core_terms())
        spec = f"{BATCH}{layout.term(layout.outputs)},{terms}->{BATCH}{layout.term(layout.inputs)}"
        y = contract(spec, q, *operands(layout, cores), optimize=optimize)
        y = y.reshape(n, layout.in_padded)[:, : layout.in_features]
        return y.reshape(*lead, layout.in_features)


def cost(
    layout: Layout,
    input_shape: Sequence[int],
    *,
    optimize: Any = "cost",
    strides: int | Sequence[int] = 1,
    padding: Any = "SAME",
    dilation: int | Sequence[int] = 1,
) -> dict[str, Any]:
    """Parameters and forward FLOPs of the planned contraction for inputs of `input_shape`.

    Linear (..., in), Conv (..., H, W, in), Embed: the ids' shape (a lookup; dense FLOPs 0,
    a dense lookup is a gather).

    Returns:
      dict with params, dense_params, flops, dense_flops, path (the chosen candidate),
      steps (the pairwise contractions) and ranks.
    """
    input_shape = tuple(int(n) for n in input_shape)
    optimize = "cost" if optimize == "autotune" else optimize
    kw: dict[str, Any] = {}
    if layout.kind == "embed":
        n = max(1, math.prod(input_shape))
        shapes = [list(s) for s in layout.operand_shapes]
        for ci, axis in _vocab_slots(layout):
            shapes[ci][axis] = n
        spec, shapes, dense_flops = lookup_spec(layout), [tuple(s) for s in shapes], 0
    elif layout.kind == "linear":
        if not input_shape or input_shape[-1] != layout.in_features:
            raise ValueError(
                f"cost expects an input shape (..., {layout.in_features}), got {input_shape}"
            )
        batch = math.prod(input_shape[:-1])
        spec = layout.spec
        shapes = [(batch, *layout.in_modes), *layout.operand_shapes]
        dense_flops = 2 * batch * layout.dense_params
    else:
        n = len(layout.spatial)
        if len(input_shape) < n + 1 or input_shape[-1] != layout.in_features:
            raise ValueError(
                f"cost expects an input shape (..., {SPATIAL_DIM_NAMES[n]}, "
                f"{layout.in_features}), got {input_shape}"
            )
        strides = _ints(strides, n, "strides")
        dilation = _ints(dilation, n, "dilation")
        pad, pre_pad = conv_padding(padding, layout.kernel_size, dilation)
        batch = math.prod(input_shape[: -(n + 1)])
        spatial = list(input_shape[-(n + 1) : -1])
        if pre_pad is not None:
            spatial = [s + lo + hi for s, (lo, hi) in zip(spatial, pre_pad[1], strict=True)]
        spec = layout.spec
        shapes = [(batch, *spatial, *layout.x_modes), *layout.operand_shapes]
        kw = dict(padding=pad, strides=strides, dilation=dilation)
        per_dim = (pad,) * n if isinstance(pad, str) else pad
        out = [
            conv_output_size(*args)
            for args in zip(spatial, layout.kernel_size, strides, dilation, per_dim, strict=True)
        ]
        dense_flops = 2 * batch * math.prod(out) * layout.dense_params
    plan = ops.contract_path(spec, *shapes, optimize=optimize, **kw)
    return {
        "params": layout.num_params,
        "dense_params": layout.dense_params,
        "flops": plan.cost.flops,
        "dense_flops": dense_flops,
        "path": plan.chosen,
        "steps": plan.steps,
        "ranks": layout.ranks,
    }
