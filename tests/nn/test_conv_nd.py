"""tnjax.nn.Conv in 1 and 3 spatial dimensions: against lax.conv_general_dilated with the
reconstructed kernel and against the nnx.Conv it is converted from, under jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax.formats.weights import SPATIAL_AXES
from tnjax.nn._common import Core
from tnjax.nn.conv import CONV_FORMATS, Conv, conv_layout

# dimension numbers of channels-last inputs and (spatial..., in, out) kernels
_DN = {1: ("NWC", "WIO", "NWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _reference(layer, x, strides, padding, dilation):
    y = jax.lax.conv_general_dilated(
        x,
        layer.kernel(),
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=_DN[x.ndim - 2],
    )
    return y + layer.bias[...]


# (in, out, kernel, strides, Conv padding, lax padding, dilation, input shape)
CASES = {
    1: (6, 10, (3,), (2,), ((1, 0),), [(1, 0)], (2,), (2, 17, 6)),
    3: (4, 6, (3, 2, 3), (1, 2, 1), "SAME", "SAME", (1, 1, 2), (2, 5, 6, 7, 4)),
}


@pytest.mark.parametrize("fmt", CONV_FORMATS)
@pytest.mark.parametrize("dims", [1, 3])
def test_forward_equals_lax_conv_with_the_reconstructed_kernel(fmt, dims):
    n_in, n_out, k, s, pad, lax_pad, dil, shape = CASES[dims]
    layer = Conv(
        n_in,
        n_out,
        k,
        s,
        padding=pad,
        kernel_dilation=dil,
        format=fmt,
        rank=2,
        bias_init=nnx.initializers.normal(1.0),
        rngs=nnx.Rngs(dims),
    )
    x = _normal(dims, shape)
    got = nnx.jit(lambda m, x: m(x))(layer, x)
    want = _reference(layer, x, s, lax_pad, dil)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    assert layer.layout.spatial == SPATIAL_AXES[dims]
    # vmap over an extra leading axis equals the batched call
    stacked = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(
        jax.vmap(lambda xi: layer(xi))(stacked)[1], layer(2 * x), rtol=1e-4, atol=1e-4
    )
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2), argnums=nnx.DiffState(0, Core))(layer)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


@pytest.mark.parametrize("fmt", CONV_FORMATS)
@pytest.mark.parametrize("dims", [1, 3])
def test_from_conv_is_exact_at_full_rank_and_error_falls_with_rank(fmt, dims):
    n_in, n_out, k, s, pad, _, dil, shape = CASES[dims]
    src = nnx.Conv(n_in, n_out, k, s, padding=pad, kernel_dilation=dil, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(dims)
    # a kernel with decaying spectrum along every mode, so that rank matters
    factors = [rng.standard_normal((n, 8)) for n in src.kernel.shape]
    letters = "abcdefg"[: len(factors)]
    spec = ",".join(f"{c}r" for c in letters) + f",r->{letters}"
    src.kernel[...] = jnp.asarray(np.einsum(spec, *factors, 0.5 ** np.arange(8)), jnp.float32)
    x = _normal(7, shape)
    want = src(x)
    full = conv_layout(n_in, n_out, k, format=fmt, rank=1).max_ranks
    errors = []
    for rank in (1, full):
        layer = Conv.from_conv(src, format=fmt, rank=rank)
        got = nnx.jit(lambda m: m(x))(layer)
        assert got.shape == want.shape  # strides, padding and dilation from the conv
        errors.append(float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)))
    assert errors[1] < 1e-4 < errors[0], errors
    assert layer.strides == s and layer.kernel_dilation == dil


def test_nd_arguments_are_checked():
    with pytest.raises(ValueError, match="kernel_size=.*1, 2 or 3 ints"):
        Conv(4, 4, (3, 3, 3, 3), format="tt", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"strides=\(1, 1\): use an int or 3 ints"):
        Conv(4, 4, (3, 3, 3), (1, 1), format="tt", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not valid for a 1-D convolution"):
        Conv(4, 4, (3,), padding=((1, 1), (1, 1)), format="cp", rank=2, rngs=nnx.Rngs(0))
    layer = Conv(4, 4, (3,), format="cp", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(\.\.\., L, 4\)"):
        layer(jnp.ones((4,)))
    with pytest.raises(ValueError, match="n = 1, 2 or 3"):
        Conv.from_conv(jnp.ones((3, 3, 3, 3, 4, 4)), format="tt", rank=2)


def test_rank_names_follow_the_spatial_dimensions():
    with pytest.raises(ValueError, match=r"\(R1, R2\)"):
        conv_layout(4, 6, (3,), format="tt", rank=(1, 2, 3))
    with pytest.raises(ValueError, match=r"\(R0, R1, R2, R3, R4\)"):
        conv_layout(4, 6, (3, 3, 3), format="tr", rank=(1, 2, 3))
    assert len(conv_layout(4, 6, (3, 3, 3), format="tt", rank=2).ranks) == 4


@pytest.mark.parametrize("dims", [1, 3])
def test_replace_cores_keeps_every_option_of_an_nd_conv(dims):
    """Pruning rebuilds a layer from its options (replace_cores); strides, padding and
    dilation of a 1-D or 3-D conv survive it."""
    n_in, n_out, k, s, pad, _, dil, shape = CASES[dims]
    layer = Conv(
        n_in,
        n_out,
        k,
        s,
        padding=pad,
        kernel_dilation=dil,
        format="tt",
        rank=2,
        rngs=nnx.Rngs(0),
    )
    rebuilt = layer.replace_cores([c[...] for c in layer.cores])
    assert (rebuilt.strides, rebuilt.padding, rebuilt.kernel_dilation) == (s, pad, dil)
    x = _normal(3, shape)
    np.testing.assert_allclose(rebuilt(x), layer(x), rtol=1e-6, atol=1e-6)
