"""One convolution step of `contract`, lowered for the backend it runs on.

`contract` brings every pairwise step that convolves to one grouped convolution in
channels-last layout,

    x: (n, *spatial, g, k)   w: (*kernel, g, k, o)   ->   y: (n, *out, g, o)

(n: the signal's other modes; g: modes shared and kept, e.g. a CP rank; k: modes
contracted; o: the filter's other modes), with one `(kernel, stride, dilation, pad_lo,
pad_hi)` tuple per convolved dimension. Two lowerings compute it:

* `"xla"`: `lax.conv_general_dilated`.
* `"gemm"` (what `"auto"` picks on the CPU): XLA:CPU's convolution is fast forward and for
  the input gradient, but slow for the kernel gradient and for depthwise steps. Measured
  on the project's 2-core CPU (B=128, 32x32): a 3x3 conv 24->24 takes 10 ms forward, 10 ms
  for the input gradient and 110 ms for the kernel gradient; a depthwise 3-tap conv of 28
  channels 62 ms forward. So here
  - a step with nothing contracted (k = 1: the depthwise steps of CP-like formats) is a
    sum of shifted, strided slices times the filter taps, which XLA fuses into one loop
    (2-3 ms for that depthwise step, forward or backward);
  - any other step runs XLA's convolution forward and has a `custom_jvp` whose tangent in
    the kernel is the same convolution written as one GEMM per filter tap over chunks of
    the batch (rematerialised), so reverse mode transposes it into GEMMs that read each
    chunk from cache (the 24->24 kernel gradient: 22-29 ms). Forward mode, `vmap` and
    higher derivatives keep working (it is a `custom_jvp`, not a `custom_vjp`).

Both lowerings compute the same function; tests compare them (values and float64
gradients) against `lax.conv_general_dilated` for strides, dilation, padding, groups and
1/2/3 convolved dimensions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = ["IMPLS", "grouped_conv", "out_sizes", "resolve_impl"]

IMPLS = ("auto", "xla", "gemm")
Geometry = Sequence[tuple[int, int, int, int, int]]  # (kernel, stride, dilation, lo, hi)

CHUNK_BYTES = 1 << 20  # batch chunk of the kernel-gradient GEMMs: about one L2 cache
SHIFT_MAX_TAPS = 64  # depthwise steps with more taps than this go to XLA's convolution
FLAT_MAX_WASTE = 2.0  # flat-offset GEMMs compute the padded grid; at most 2x the outputs


def resolve_impl(impl: str) -> str:
    """`"auto"` -> `"gemm"` on the CPU, `"xla"` elsewhere; checks the name."""
    if impl not in IMPLS:
        raise ValueError(f"conv_impl={impl!r}: use one of {IMPLS}")
    if impl == "auto":
        return "gemm" if jax.default_backend() == "cpu" else "xla"
    return impl


def out_sizes(spatial: Sequence[int], geometry: Geometry) -> tuple[int, ...]:
    """Output size of each convolved dimension."""
    return tuple(
        (s + lo + hi - (dil * (k - 1) + 1)) // st + 1
        for s, (k, st, dil, lo, hi) in zip(spatial, geometry, strict=True)
    )


def grouped_conv(
    x: jax.Array,
    w: jax.Array,
    geometry: Geometry,
    *,
    precision=None,
    preferred=None,
    impl: str = "auto",
) -> jax.Array:
    """x: (n, *spatial, g, k), w: (*kernel, g, k, o) -> (n, *out, g, o), cross-correlation."""
    geometry = tuple(tuple(int(v) for v in g) for g in geometry)
    impl = resolve_impl(impl)
    with jax.named_scope(f"tnjax.ops.convolution.{impl}"):
        if impl == "xla":
            return _xla_conv(x, w, geometry, precision, preferred)
        if x.shape[-1] == 1 and math.prod(g[0] for g in geometry) <= SHIFT_MAX_TAPS:
            return _shift_conv(x, w, geometry, preferred)
        return _conv_with_gemm_kernel_grad(x, w, geometry, precision, preferred)


# --------------------------------------------------------------------------- lowerings


def _xla_conv(x, w, geometry, precision, preferred):
    n, *spatial, g, k = x.shape
    d = len(spatial)
    *kernel, _, _, o = w.shape
    lhs = x.reshape(n, *spatial, g * k)
    rhs = jnp.swapaxes(w, d, d + 1).reshape(*kernel, k, g * o)  # outputs group-major
    spec = (0, d + 1, *range(1, d + 1))
    dn = lax.ConvDimensionNumbers(lhs_spec=spec, rhs_spec=(d + 1, d, *range(d)), out_spec=spec)
    y = lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=tuple(st for _, st, _, _, _ in geometry),
        padding=tuple((lo, hi) for _, _, _, lo, hi in geometry),
        rhs_dilation=tuple(dil for _, _, dil, _, _ in geometry),
        dimension_numbers=dn,
        feature_group_count=g,
        precision=precision,
        preferred_element_type=preferred,
    )
    return y.reshape(*y.shape[:-1], g, o)


def _pad_spatial(x: jax.Array, geometry: Geometry) -> jax.Array:
    """Pads (or, for negative padding, crops) dims 1..d of x by each dimension's (lo, hi)."""
    config = [(0, 0, 0)] + [(lo, hi, 0) for _, _, _, lo, hi in geometry]
    config += [(0, 0, 0)] * (x.ndim - 1 - len(geometry))
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _taps(geometry: Geometry) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(g[0]) for g in geometry)))


def _tap_slice(xp: jax.Array, tap: tuple[int, ...], geometry: Geometry, out: tuple[int, ...]):
    """The padded-input positions that filter tap `tap` meets: (n, *Sp, ...) -> (n, *out, ...)."""
    d = len(geometry)
    rest = xp.ndim - 1 - d
    start = [0] + [t * dil for t, (_, _, dil, _, _) in zip(tap, geometry, strict=True)] + [0] * rest
    limit = (
        [xp.shape[0]]
        + [
            s + (q - 1) * st + 1
            for s, q, (_, st, _, _, _) in zip(start[1 : 1 + d], out, geometry, strict=True)
        ]
        + list(xp.shape[1 + d :])
    )
    strides = [1] + [st for _, st, _, _, _ in geometry] + [1] * rest
    return lax.slice(xp, start, limit, strides)


def _accumulator_dtype(dtype) -> jnp.dtype:
    """Sums of low-precision floats accumulate in float32 (as convolutions do)."""
    dtype = jnp.dtype(dtype)
    return jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.inexact) else dtype


def _shift_sum(x, w, geometry, preferred):
    """y[n, q, g, o] = sum_taps sum_k x_tap[n, q, g, k] * w[tap, g, k, o], elementwise.

    Meant for small k (the depthwise steps have k = 1); XLA fuses the taps into one loop.
    """
    n, *spatial, g, k = x.shape
    out = out_sizes(spatial, geometry)
    dtype = jnp.dtype(preferred) if preferred is not None else jnp.result_type(x, w)
    acc = _accumulator_dtype(dtype)
    xp = _pad_spatial(x, geometry)  # (n, *Sp, g, k)
    w = w.astype(acc)
    y = None
    for tap in _taps(geometry):
        patch = _tap_slice(xp, tap, geometry, out).astype(acc)
        term = jnp.sum(patch[..., None] * w[tap], axis=-2)  # (n, *out, g, o)
        y = term if y is None else y + term
    return y.astype(dtype)


def _shift_sum_input_transpose(ct, w, geometry, spatial, preferred):
    """The input cotangent of `_shift_sum`, gathered: (n, *out, g, o) -> (n, *spatial, g, k).

    The cotangent dilated by the strides, correlated with the flipped filter (k and o
    swapped) under the padding that gives back the input size. (Autodiff of the slices
    would instead pad the cotangent once per tap and sum the copies.)
    """
    d = len(geometry)
    out = ct.shape[1 : 1 + d]
    dilated = lax.pad(
        ct,
        jnp.zeros((), ct.dtype),
        [(0, 0, 0)] + [(0, 0, st - 1) for _, st, _, _, _ in geometry] + [(0, 0, 0)] * 2,
    )
    flipped = jnp.swapaxes(jnp.flip(w, axis=tuple(range(d))), -1, -2)  # (*kernel, g, o, k)
    back = tuple(
        (kk, 1, dil, (kk - 1) * dil - lo, s - (q - 1) * st - 1 + lo)
        for (kk, st, dil, lo, _), s, q in zip(geometry, spatial, out, strict=True)
    )
    return _shift_sum(dilated, flipped, back, preferred)


def _shift_conv(x, w, geometry, preferred):
    """`_shift_sum` with a `custom_jvp` whose input tangent transposes into a gather (see
    `_shift_sum_input_transpose`) and whose kernel tangent runs over batch chunks."""
    spatial = x.shape[1:-2]

    def input_tangent(dx, w):  # linear in dx; written as the transpose of the gather
        ct_shape = jax.ShapeDtypeStruct(
            (x.shape[0], *out_sizes(spatial, geometry), x.shape[-2], w.shape[-1]),
            jnp.result_type(x, w) if preferred is None else jnp.dtype(preferred),
        )

        def gather(ct):
            return _shift_sum_input_transpose(ct, w, geometry, spatial, preferred)

        (y,) = jax.linear_transpose(gather, ct_shape)(dx.astype(ct_shape.dtype))
        return y

    def kernel_tangent(x, dw):
        n = x.shape[0]
        chunk = _chunk(n, math.prod(x.shape[1:]) * x.dtype.itemsize)
        step = jax.checkpoint(lambda xc, dw: _shift_sum(xc, dw, geometry, preferred))
        ys = lax.map(lambda xc: step(xc, dw), x.reshape(n // chunk, chunk, *x.shape[1:]))
        return ys.reshape(n, *ys.shape[2:])

    @jax.custom_jvp
    def run(x, w):
        return _shift_sum(x, w, geometry, preferred)

    def run_jvp(primals, tangents):
        x, w = primals
        dx, dw = tangents
        y = run(x, w)
        parts = []
        if not isinstance(dx, SymbolicZero):
            parts.append(input_tangent(dx, w).astype(y.dtype))
        if not isinstance(dw, SymbolicZero):
            parts.append(kernel_tangent(x, dw).astype(y.dtype))
        return y, (sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y))

    run.defjvp(run_jvp, symbolic_zeros=True)
    return run(x, w)


def _chunk(n: int, bytes_per_item: int) -> int:
    """The largest divisor of n whose items fit in CHUNK_BYTES (at least 1)."""
    fit = max(1, CHUNK_BYTES // max(bytes_per_item, 1))
    return max(c for c in range(1, min(n, fit) + 1) if n % c == 0)


def _gemm_conv(x, w, geometry, precision, preferred):
    """The same convolution as `_xla_conv`, as one GEMM per filter tap over batch chunks.

    Linear in `w`; used as the kernel tangent of `_conv_with_gemm_kernel_grad`, whose
    transpose (the kernel gradient) is then one GEMM per tap per chunk. With unit strides
    the taps are row offsets of the flattened padded chunk (contiguous slices, outputs on
    the padded grid, cropped after); otherwise strided slices.
    """
    n, *spatial, g, k = x.shape
    *kernel, _, _, o = w.shape
    out = out_sizes(spatial, geometry)
    dtype = jnp.dtype(preferred) if preferred is not None else jnp.result_type(x, w)
    xp = _pad_spatial(x, geometry)  # (n, *Sp, g, k)
    padded = xp.shape[1:-2]
    chunk = _chunk(n, math.prod(padded) * g * k * xp.dtype.itemsize)
    taps = _taps(geometry)
    flat = all(st == 1 for _, st, _, _, _ in geometry) and math.prod(padded) <= (
        FLAT_MAX_WASTE * math.prod(out)
    )

    def tap_dot(patch, wt):  # patch (rows..., g, k), wt (g, k, o) -> (g, rows..., o)
        nd = patch.ndim
        dims = (((nd - 1,), (1,)), ((nd - 2,), (0,)))
        return lax.dot_general(
            patch, wt, dims, precision=precision, preferred_element_type=preferred
        )

    if flat:
        rows = chunk * math.prod(padded)
        row_strides = [math.prod(padded[i + 1 :]) for i in range(len(padded))]
        offsets = [
            sum(
                t * dil * s
                for t, (_, _, dil, _, _), s in zip(tap, geometry, row_strides, strict=True)
            )
            for tap in taps
        ]
        xs = xp.reshape(n // chunk, rows, g, k)
        xs = jnp.pad(xs, ((0, 0), (0, max(offsets)), (0, 0), (0, 0)))

        @jax.checkpoint
        def step(xc, w):
            parts = [
                tap_dot(lax.slice_in_dim(xc, off, off + rows, axis=0), w[tap])
                for tap, off in zip(taps, offsets, strict=True)
            ]
            return sum(parts[1:], parts[0])  # (g, rows, o)

        ys = lax.map(lambda xc: step(xc, w), xs)  # (n/chunk, g, rows, o)
        ys = jnp.moveaxis(ys, 1, -2).reshape(n, *padded, g, o)
        y = ys[(slice(None), *(slice(0, q) for q in out))]
    else:
        xs = xp.reshape(n // chunk, chunk, *padded, g, k)

        @jax.checkpoint
        def step(xc, w):
            parts = [tap_dot(_tap_slice(xc, tap, geometry, out), w[tap]) for tap in taps]
            return sum(parts[1:], parts[0])  # (g, chunk, *out, o)

        ys = lax.map(lambda xc: step(xc, w), xs)
        y = jnp.moveaxis(ys, 1, -2).reshape(n, *out, g, o)
    return y.astype(dtype)


def _conv_with_gemm_kernel_grad(x, w, geometry, precision, preferred):
    """XLA's convolution, differentiated in the kernel through `_gemm_conv` (custom_jvp)."""

    def conv(x, w):
        return _xla_conv(x, w, geometry, precision, preferred)

    @jax.custom_jvp
    def run(x, w):
        return conv(x, w)

    def run_jvp(primals, tangents):
        x, w = primals
        dx, dw = tangents
        y = conv(x, w)
        parts = []
        if not isinstance(dx, SymbolicZero):
            parts.append(conv(dx, w))
        if not isinstance(dw, SymbolicZero):
            parts.append(_gemm_conv(x, dw, geometry, precision, preferred).astype(y.dtype))
        dy = sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)
        return y, dy

    run.defjvp(run_jvp, symbolic_zeros=True)
    return run(x, w)
