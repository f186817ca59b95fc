"""Tests of tnjax.ops.convolution: both lowerings against lax.conv_general_dilated in
float64 (values, reverse- and forward-mode derivatives, second order) for strides,
dilation, padding, groups and 1/2/3 convolved dimensions, directly and through contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tnjax.ops import contract
from tnjax.ops import convolution as conv_module

IMPLS = ["xla", "gemm"]

# (x shape (n, *spatial, g, k), w shape (*kernel, g, k, o), geometry per dim
#  (kernel, stride, dilation, pad_lo, pad_hi))
CASES = {
    "1d_groups": ((2, 9, 3, 4), (3, 3, 4, 5), ((3, 1, 1, 1, 1),)),
    "1d_stride2": ((2, 9, 1, 4), (3, 1, 4, 5), ((3, 2, 1, 0, 1),)),
    "2d_dilated": ((2, 10, 7, 2, 3), (3, 2, 2, 3, 4), ((3, 1, 2, 2, 2), (2, 1, 1, 0, 1))),
    "2d_depthwise_stride_negpad": (
        (2, 10, 7, 2, 1),
        (3, 2, 2, 1, 4),
        ((3, 2, 2, 1, -1), (2, 3, 1, 0, 1)),
    ),
    "2d_depthwise": ((3, 6, 5, 4, 1), (3, 3, 4, 1, 1), ((3, 1, 1, 1, 1), (3, 1, 1, 1, 1))),
    "2d_dense": ((2, 8, 8, 1, 6), (3, 3, 1, 6, 5), ((3, 1, 1, 1, 1), (3, 1, 1, 1, 1))),
    "2d_dense_stride2": ((2, 9, 8, 1, 3), (3, 3, 1, 3, 2), ((3, 2, 1, 1, 1), (3, 2, 1, 0, 0))),
    "3d": (
        (3, 5, 6, 4, 2, 1),
        (2, 3, 2, 2, 1, 3),
        ((2, 1, 1, 0, 0), (3, 2, 1, 1, 1), (2, 1, 2, 1, 1)),
    ),
    "3d_dense": (
        (2, 4, 5, 3, 1, 2),
        (2, 2, 2, 1, 2, 3),
        ((2, 1, 1, 1, 0), (2, 1, 1, 0, 1), (2, 2, 1, 0, 0)),
    ),
}


def _reference(x, w, geometry):
    """lax.conv_general_dilated on (n, *spatial, g*k) and (*kernel, k, g*o), group-major."""
    n, *spatial, g, k = x.shape
    d = len(spatial)
    o = w.shape[-1]
    lhs = x.reshape(n, *spatial, g * k)
    rhs = jnp.swapaxes(w, d, d + 1).reshape(*w.shape[:d], k, g * o)
    chars = "DHW"[3 - d :]
    dn = jax.lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, (f"N{chars}C", f"{chars}IO", f"N{chars}C")
    )
    y = jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=[st for _, st, _, _, _ in geometry],
        padding=[(lo, hi) for _, _, _, lo, hi in geometry],
        rhs_dilation=[dil for _, _, dil, _, _ in geometry],
        dimension_numbers=dn,
        feature_group_count=g,
    )
    return y.reshape(*y.shape[:-1], g, o)


def _operands(case, dtype=np.float64, seed=0):
    x_shape, w_shape, geometry = CASES[case]
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=x_shape), dtype),
        jnp.asarray(rng.normal(size=w_shape), dtype),
        geometry,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_derivatives_equal_lax_conv_in_float64(case, impl):
    with jax.enable_x64(True):
        x, w, geometry = _operands(case)

        def ours(x, w):
            return conv_module.grouped_conv(x, w, geometry, impl=impl)

        def ref(x, w):
            return _reference(x, w, geometry)

        want = ref(x, w)
        got = jax.jit(ours)(x, w)
        assert (
            got.shape
            == want.shape
            == (
                x.shape[0],
                *conv_module.out_sizes(x.shape[1:-2], geometry),
                x.shape[-2],
                w.shape[-1],
            )
        )
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)

        def loss(f):
            return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

        for g_ours, g_ref in zip(
            jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w),
            jax.grad(loss(ref), argnums=(0, 1))(x, w),
            strict=True,
        ):
            np.testing.assert_allclose(g_ours, g_ref, rtol=1e-10, atol=1e-10)
        tangents = (0.3 * x, -0.7 * w)
        np.testing.assert_allclose(
            jax.jvp(ours, (x, w), tangents)[1],
            jax.jvp(ref, (x, w), tangents)[1],
            rtol=1e-10,
            atol=1e-10,
        )
        check_grads(ours, (x, w), order=2, modes=("rev", "fwd"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["2d_depthwise", "2d_dense_stride2", "1d_groups"])
def test_gradients_equal_under_vmap(case):
    with jax.enable_x64(True):
        x, w, geometry = _operands(case)
        xs = jnp.stack([x, 2 * x, -x])

        def loss(impl):
            def f(x, w):
                return jnp.sum(jnp.cos(conv_module.grouped_conv(x, w, geometry, impl=impl)))

            return jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(0, None))

        for a, b in zip(loss("gemm")(xs, w), loss("xla")(xs, w), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_batch_chunks_cover_any_batch_size(monkeypatch):
    # tiny chunks: the batch (7, prime) is split into single items; 6 into 2 or 3
    monkeypatch.setattr(conv_module, "CHUNK_BYTES", 600)
    with jax.enable_x64(True):
        for n in (7, 6, 1):
            rng = np.random.default_rng(n)
            x = jnp.asarray(rng.normal(size=(n, 6, 5, 1, 3)))
            w = jnp.asarray(rng.normal(size=(3, 3, 1, 3, 2)))
            geometry = ((3, 1, 1, 1, 1), (3, 1, 1, 1, 1))

            def loss(w, x=x, geometry=geometry, impl="auto"):
                return jnp.sum(conv_module.grouped_conv(x, w, geometry, impl=impl) ** 2)

            grads = [jax.grad(loss)(w, impl=impl) for impl in IMPLS]
            np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-10)


def test_auto_lowering_follows_the_backend():
    assert conv_module.resolve_impl("auto") == ("gemm" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="conv_impl='cudnn'"):
        conv_module.resolve_impl("cudnn")
    with pytest.raises(ValueError, match="conv_impl"):
        contract("ij,jk->ik", jnp.ones((2, 3)), jnp.ones((3, 4)), conv_impl="fast")


FORMAT_SPECS = {  # tensorized conv layers as contract specs (CP, TT, Tucker, RCP-like)
    "cp": ("bhws,rt,rs,rh,rw->bhwt|hw", [(2, 7, 6, 5), (4, 3), (4, 5), (4, 3), (4, 3)]),
    "tt": ("bhws,sa,ahb,bwc,ct->bhwt|hw", [(2, 7, 6, 5), (5, 3), (3, 3, 2), (2, 3, 4), (4, 6)]),
    "tucker": ("bhws,hwpq,sp,tq->bhwt|hw", [(2, 7, 6, 5), (3, 3, 2, 3), (5, 2), (4, 3)]),
    "rcp": (
        "bhwxy,uxr,vyr,hwr->bhwuv|hw",
        [(2, 6, 5, 2, 3), (2, 2, 4), (3, 3, 4), (3, 3, 4)],
    ),
}


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("optimize", ["cost", "flops", "naive"])
@pytest.mark.parametrize("fmt", sorted(FORMAT_SPECS))
def test_contract_lowerings_agree_on_format_convolutions(fmt, optimize, strides):
    spec, shapes = FORMAT_SPECS[fmt]
    with jax.enable_x64(True):
        rng = np.random.default_rng(len(fmt))
        ops = [jnp.asarray(rng.normal(size=s)) for s in shapes]

        def run(impl):
            def f(*ops):
                y = contract(
                    spec, *ops, padding="SAME", strides=strides, optimize=optimize, conv_impl=impl
                )
                return jnp.sum(jnp.tanh(y))

            return f(*ops), jax.grad(f, argnums=tuple(range(len(ops))))(*ops)

        (v_gemm, g_gemm), (v_xla, g_xla) = run("gemm"), run("xla")
        np.testing.assert_allclose(v_gemm, v_xla, rtol=1e-10)
        for a, b in zip(g_gemm, g_xla, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
