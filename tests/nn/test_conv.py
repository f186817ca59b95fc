"""Tests of tnjax.nn.Conv against lax.conv_general_dilated with its reconstructed kernel."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax.nn._common import Core
from tnjax.nn.conv import CONV_FORMATS, RESHAPED_CONV_FORMATS, Conv, conv_layout

FORMATS = list(CONV_FORMATS)
_DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed, shape):
    """Test data from NumPy: eager jax.random would compile once per shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _reference(layer, x, strides, padding, dilation=(1, 1)):
    """Dense conv with the layer's reconstructed kernel, for (..., H, W, C) inputs."""
    lead = x.shape[:-3]
    x4 = x.reshape((-1, *x.shape[-3:]))
    y = jax.lax.conv_general_dilated(
        x4, layer.kernel(), strides, padding, rhs_dilation=dilation, dimension_numbers=_DN
    )
    if layer.bias is not None:
        y = y + layer.bias[...]
    return y.reshape((*lead, *y.shape[1:]))


def _loss_and_core_grads(layer, x):
    def loss(m):
        return jnp.sum(m(x) ** 2)

    return nnx.grad(loss, argnums=nnx.DiffState(0, Core))(layer)


@pytest.mark.parametrize("fmt", FORMATS)
def test_forward_equals_conv_with_reconstructed_kernel_and_grads_flow(fmt):
    # (in, out, kernel, strides, Conv padding, lax padding, dilation, leading input shape):
    # channel counts that are not powers of two, strides 1 and 2, SAME/VALID/explicit
    # padding, a 1x1 kernel, a dilated non-square kernel, several and no batch dimensions.
    cases = [
        (6, 10, 3, 1, "SAME", "SAME", 1, (3, 2, 6, 6)),
        (12, 16, 1, 2, "VALID", "VALID", 1, (2, 7, 6)),
        (16, 12, (3, 2), 2, ((1, 0), 2), [(1, 0), (2, 2)], 2, (9, 8)),
    ]
    xs = [_normal(i, (*c[7], c[0])) for i, c in enumerate(cases)]

    @nnx.jit
    def build_and_run(xs):  # one compilation per format: layers, outputs, references, grads
        layers = []
        for i, (n_in, n_out, k, s, pad, _, dil, _) in enumerate(cases):
            layer = Conv(
                n_in,
                n_out,
                k,
                s,
                padding=pad,
                kernel_dilation=dil,
                format=fmt,
                rank=3,
                rngs=nnx.Rngs(i),
            )
            layer.bias[...] = jnp.linspace(-1.0, 1.0, n_out)
            layers.append(layer)
        outs = [
            (layer(x), _reference(layer, x, (c[3], c[3]), c[5], (c[6], c[6])))
            for layer, x, c in zip(layers, xs, cases, strict=True)
        ]
        return layers, outs, _loss_and_core_grads(layers[0], xs[0])

    layers, outs, grads = build_and_run(xs)
    for (got, want), x, c in zip(outs, xs, cases, strict=True):
        assert got.shape == want.shape, c
        assert got.shape[:-3] == x.shape[:-3] and got.shape[-1] == c[1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    np.testing.assert_allclose(layers[0](xs[0]), outs[0][1], rtol=1e-4, atol=1e-5)  # eager
    grads = jax.tree.leaves(grads)
    assert len(grads) == len(layers[0].cores)
    assert all(float(jnp.abs(g).max()) > 0 for g in grads)


def test_circular_padding_and_no_bias_like_nnx_conv():
    layer = Conv(
        6, 10, 3, 2, padding="CIRCULAR", format="rtt", rank=2, use_bias=False, rngs=nnx.Rngs(0)
    )
    x = _normal(0, (2, 7, 7, 6))
    wrapped = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")  # what nnx.Conv does
    got, want = nnx.jit(lambda m: (m(x), _reference(m, wrapped, (2, 2), "VALID")))(layer)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert layer.bias is None


def test_jax_grad_on_split_state():
    layer = nnx.jit(lambda: Conv(6, 10, 3, format="rtk", rank=2, rngs=nnx.Rngs(0)))()
    x = _normal(2, (2, 6, 6, 6))
    graphdef, cores, rest = nnx.split(layer, Core, ...)

    def loss(cores):
        return jnp.sum(nnx.merge(graphdef, cores, rest)(x) ** 2)

    grads = jax.tree.leaves(jax.jit(jax.grad(loss))(cores))
    assert len(grads) == len(layer.cores)
    assert all(float(jnp.abs(g).max()) > 0 for g in grads)


def test_core_filter_selects_exactly_the_cores():
    layer = nnx.eval_shape(lambda: Conv(6, 10, 3, format="rtk", rank=2, rngs=nnx.Rngs(0)))
    cores = jax.tree.leaves(nnx.state(layer, Core))
    assert len(cores) == len(layer.cores) == 5  # Tucker core + 3 channel + 1 spatial factor
    assert sum(c.size for c in cores) == layer.num_params
    params = jax.tree.leaves(nnx.state(layer, nnx.Param))
    assert len(params) == len(cores) + 1  # plus the bias, an nnx.Param but not a Core


def _closed_form(fmt, kh, kw, s, t, r, ins, outs):
    hw = kh * kw
    ts = [a * b for a, b in zip(outs, ins, strict=True)]
    if fmt == "cp":
        return r[0] * (t + s + kh + kw)
    if fmt == "tucker":
        return r[0] * t + r[1] * s + r[0] * r[1] * hw
    if fmt == "tt":
        return r[0] * t + r[0] * r[1] * kh + r[1] * r[2] * kw + r[2] * s
    if fmt == "tr":
        return r[0] * r[1] * t + r[1] * r[2] * kh + r[2] * r[3] * kw + r[3] * r[0] * s
    if fmt == "rcp":
        return r[0] * (sum(ts) + hw)
    if fmt == "rtk":  # r = (R0, R1..RM)
        return sum(rm * n for rm, n in zip(r[1:], ts, strict=True)) + r[0] * hw + math.prod(r)
    if fmt == "rtt":  # r = (R1..RM)
        inner = sum(r[m - 1] * r[m] * ts[m] for m in range(1, len(ts)))
        return ts[0] * r[0] + inner + r[-1] * hw
    if fmt == "rtr":  # r = (R0..RM), R_{-1} wraps to R_M only for the spatial core
        return sum(r[m] * r[m + 1] * ts[m] for m in range(len(ts))) + r[-1] * r[0] * hw
    raise AssertionError(fmt)


RANK_EXAMPLES = {
    "cp": [(1,), (7,)],
    "tucker": [(1, 1), (5, 3)],
    "tt": [(1, 1, 1), (4, 6, 2)],
    "tr": [(1, 1, 1, 1), (2, 3, 4, 5)],
    "rcp": [(1,), (9,)],
    "rtk": [(1, 1, 1, 1), (3, 4, 2, 2)],
    "rtt": [(1, 1, 1), (4, 3, 2)],
    "rtr": [(1, 1, 1, 1), (2, 3, 4, 2)],
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_counts_equal_closed_forms(fmt):
    for kh, kw, s, t, ins, outs in [
        (5, 5, 6, 16, (3, 2, 1), (4, 2, 2)),
        (3, 3, 32, 64, (4, 4, 2), (4, 4, 4)),
        (3, 1, 12, 10, (3, 2, 2), (5, 2, 1)),
    ]:
        for r in RANK_EXAMPLES[fmt]:
            modes = {"in_modes": ins, "out_modes": outs} if fmt in RESHAPED_CONV_FORMATS else {}
            layout = conv_layout(s, t, (kh, kw), format=fmt, rank=r, **modes)
            assert layout.ranks == r
            if fmt not in RESHAPED_CONV_FORMATS:
                ins, outs = (s,), (t,)
            assert layout.num_params == _closed_form(fmt, kh, kw, s, t, r, ins, outs), r
    layer = nnx.eval_shape(
        lambda: Conv(6, 16, 5, format=fmt, rank=RANK_EXAMPLES[fmt][1], rngs=nnx.Rngs(0))
    )
    assert layer.num_params == layer.layout.num_params
    assert layer.dense_params == 5 * 5 * 6 * 16


def test_reshaped_modes_and_core_shapes():
    layer = nnx.eval_shape(
        lambda: Conv(6, 10, 3, format="rtr", rank=(2, 3, 4, 2), rngs=nnx.Rngs(0))
    )
    assert layer.in_modes == (3, 2, 1) and layer.out_modes == (5, 2, 1)
    shapes = [tuple(c.shape) for c in layer.cores]
    assert shapes == [(2, 15, 3), (3, 4, 4), (4, 1, 2), (2, 9, 2)]
    layer = nnx.eval_shape(
        lambda: Conv(16, 12, 3, format="rtt", rank=2, num_modes=2, rngs=nnx.Rngs(0))
    )
    assert [tuple(c.shape) for c in layer.cores] == [(1, 16, 2), (2, 12, 2), (2, 9, 1)]


LENET_RESNET = [(5, 6, 16), (3, 16, 16), (3, 32, 32), (3, 64, 64), (3, 16, 32), (3, 32, 64)]


@pytest.mark.parametrize("c", [0.02, 0.05, 0.1, 0.2])
def test_compression_within_ten_percent(c):
    for k, s, t in LENET_RESNET:
        dense = k * k * s * t
        for fmt in FORMATS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                layout = conv_layout(s, t, k, format=fmt, compression=c)
            measured = layout.num_params / dense
            if abs(measured / c - 1) > 0.1:
                # Only a budget finer than one rank step (a single-rank format or a tiny
                # layer at 2%) may miss, and then with a warning naming the fraction reached.
                assert any("budget" in str(w.message) for w in caught), (fmt, c, k, s, t)
                assert c == 0.02 or (fmt in ("cp", "rcp") and dense <= 2304), (fmt, c, k, s, t)
    layer = Conv(16, 32, 3, format="rtt", compression=c, rngs=nnx.Rngs(0))
    assert layer.ranks == layer.layout.ranks
    assert abs(layer.num_params / layer.dense_params / c - 1) <= 0.1


def test_compression_infeasible_for_tiny_layer_warns():
    with pytest.warns(UserWarning, match="budget"):
        conv_layout(6, 16, 5, format="cp", compression=0.02)  # 2400 * 2% = 48; R*32


def _decaying_kernel(shape, seed):
    """Kernel sum_r 0.6^r a_r(h) b_r(w) c_r(s) d_r(t) plus a little noise."""
    rng = np.random.default_rng(seed)
    r = 12
    factors = [rng.standard_normal((n, r)) for n in shape]
    kernel = np.einsum("r,hr,wr,sr,tr->hwst", 0.6 ** np.arange(r), *factors)
    return jnp.asarray(kernel + 1e-3 * rng.standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_conv_exact_at_full_rank_and_error_falls_with_rank(fmt):
    src = nnx.Conv(6, 10, (3, 3), strides=2, padding="VALID", rngs=nnx.Rngs(0))
    src.kernel[...] = _decaying_kernel((3, 3, 6, 10), 3)
    src.bias[...] = jnp.linspace(0.0, 1.0, 10)
    x = _normal(1, (2, 9, 9, 6))
    want = src(x)
    full = conv_layout(6, 10, 3, format=fmt, rank=1).max_ranks
    errors = []
    for rank in [1, 3, full]:
        layer = Conv.from_conv(src, format=fmt, rank=rank)
        got = nnx.jit(lambda m: m(x))(layer)
        assert got.shape == want.shape == (2, 4, 4, 10)  # strides and padding from the conv
        errors.append(float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-4, errors
    np.testing.assert_allclose(layer.bias[...], src.bias[...])


def test_from_kernel_array_with_compression_and_keywords():
    kernel = _decaying_kernel((3, 3, 12, 16), 0)
    # also shows that conversion at fixed ranks traces under jit
    convert = nnx.jit(
        lambda k: Conv.from_conv(k, format="tt", compression=0.2, strides=2, padding="VALID")
    )
    layer = convert(kernel)
    assert layer.bias is None and layer.strides == (2, 2)
    assert abs(layer.num_params / layer.dense_params / 0.2 - 1) <= 0.1
    x = _normal(1, (1, 7, 7, 12))
    assert layer(x).shape == (1, 3, 3, 16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_init_matches_dense_initialiser_std(fmt):
    """Mean over seeds of the kernel's variance is the dense initialiser's (1/fan_in)."""
    target = 1.0 / (5 * 5 * 32)  # LeCun normal variance
    mean_square = nnx.jit(lambda m: jnp.mean(m.kernel() ** 2))
    var = [
        float(mean_square(Conv(32, 32, 5, format=fmt, rank=8, rngs=nnx.Rngs(s)))) for s in range(12)
    ]
    # Per-seed relative spread is <= 0.4 for these shapes, so 12 seeds give ~0.12.
    assert 0.65 < np.mean(var) / target < 1.35, np.mean(var) / target
    custom = Conv(
        32, 32, 5, format=fmt, rank=8, kernel_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0)
    )
    assert 0.4 < float(mean_square(custom)) ** 0.5 < 2.5


def test_cost_reports_params_and_flops():
    layer = Conv(16, 16, 3, 2, format="cp", compression=0.1, rngs=nnx.Rngs(0))
    cost = layer.cost((8, 32, 32, 16))
    assert cost["params"] == layer.num_params and cost["dense_params"] == 3 * 3 * 16 * 16
    assert cost["dense_flops"] == 2 * 8 * 16 * 16 * 3 * 3 * 16 * 16
    assert 0 < cost["flops"] < cost["dense_flops"]
    assert cost["ranks"] == layer.ranks and isinstance(cost["path"], str)
    valid = Conv(16, 16, 3, padding="VALID", format="tt", rank=2, rngs=nnx.Rngs(0))
    assert valid.cost((32, 32, 16))["dense_flops"] == 2 * 30 * 30 * 3 * 3 * 16 * 16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(format="svd", rank=2), "one of"),
        (dict(format="cp"), "exactly one"),
        (dict(format="cp", rank=2, compression=0.1), "exactly one"),
        (dict(format="cp", compression=1.5), "compression"),
        (dict(format="cp", rank=10**6), "maxima"),
        (dict(format="tucker", rank=(17, 2)), r"maxima .* are \(16, 12\)"),
        (dict(format="tt", rank=(2, 2)), "needs 3 ranks"),
        (dict(format="rcp", rank=2, in_modes=(2, 7)), "multiply to 14"),
        (dict(format="rtt", rank=2, in_modes=(3, 4), out_modes=(2, 2, 4)), "same number"),
        (dict(format="tt", rank=2, in_modes=(3, 4)), "reshaped formats"),
        (dict(format="cp", rank=2, padding="CAUSAL"), "padding"),
        (dict(format="cp", rank=2, strides=(1, 2, 3)), "strides"),
    ],
)
def test_bad_arguments_raise_helpful_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv(12, 16, 3, rngs=nnx.Rngs(0), **kwargs)


def test_wrong_input_channels_name_the_shapes():
    layer = nnx.eval_shape(lambda: Conv(6, 10, 3, format="cp", rank=2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 6\).*\(2, 8, 8, 5\)"):
        layer(jnp.zeros((2, 8, 8, 5)))


def test_badly_factoring_channels_are_padded_invisibly():
    src = nnx.Conv(13, 11, (3, 3), rngs=nnx.Rngs(0))
    full = conv_layout(13, 11, 3, format="rtt", rank=1).max_ranks
    layer = Conv.from_conv(src, format="rtt", rank=full)
    assert layer.layout.in_padded > 13 and layer.layout.out_padded > 11  # 7*2*1, 3*2*2
    x = _normal(0, (2, 6, 6, 13))
    got, want, kernel = nnx.jit(lambda m, s: (m(x), s(x), m.kernel()))(layer, src)
    assert got.shape == (2, 6, 6, 11) and kernel.shape == (3, 3, 13, 11)
    np.testing.assert_allclose(kernel, src.kernel[...], atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
