"""tnjax.nn.Conv with feature_group_count: grouped and depthwise convolutions in every
format, against nnx.Conv and lax.conv_general_dilated with the reconstructed kernel, the
group structure itself, jit/vmap/grad, rebuilt and pruned layers, budgets, costs, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import bayes
from tnjax.nn._common import Core
from tnjax.nn.conv import CONV_FORMATS, RESHAPED_CONV_FORMATS, Conv, conv_layout

# dimension numbers of channels-last inputs and (spatial..., in / G, out) kernels
_DN = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _numpy_init(seed):
    """An initialiser drawing with NumPy: no eager JAX initialiser to compile per shape."""
    return lambda key, shape, dtype=jnp.float32: _normal(seed, shape).astype(dtype)


def _grouped_conv(x, kernel, groups, strides=1, padding="SAME", dilation=1):
    n = x.ndim - 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (strides,) * n if isinstance(strides, int) else strides,
        padding,
        rhs_dilation=(dilation,) * n if isinstance(dilation, int) else dilation,
        dimension_numbers=_DN[n],
        feature_group_count=groups,
    )


def _modes(fmt, in_modes, out_modes):
    """in_modes/out_modes for the reshaped formats (the plain ones take none)."""
    if fmt in RESHAPED_CONV_FORMATS and in_modes is not None:
        return {"in_modes": in_modes, "out_modes": out_modes}
    return {}


# name: (in, out, kernel, G, strides, padding, input shape, reshaped in_modes, out_modes)
# per-group channels: grouped_2d 4 -> 8 (explicit modes), depthwise_x2_2d 1 -> 2 (a channel
# multiplier), depthwise_1d 1 -> 1, grouped_3d 2 -> 3
CASES = {
    "grouped_2d": (8, 16, (3, 3), 2, 1, "SAME", (2, 5, 5, 8), (2, 2), (2, 4)),
    "depthwise_x2_2d": (4, 8, (3, 3), 4, (2, 1), ((1, 1), (0, 2)), (2, 6, 5, 4), None, None),
    "depthwise_1d": (4, 4, (3,), 4, 2, "VALID", (2, 9, 4), None, None),
    "grouped_3d": (4, 6, (2, 3, 2), 2, 1, "SAME", (1, 3, 4, 4, 4), None, None),
}
# every format in 2-D (TR and RTR, whose full-rank decompositions are the slowest to
# compile, in one case each), and in 1-D and 3-D a few formats: to keep the file fast
FULL_RANK_CASES = [
    *(("grouped_2d", fmt) for fmt in CONV_FORMATS if fmt != "tr"),
    *(("depthwise_x2_2d", fmt) for fmt in CONV_FORMATS if fmt != "rtr"),
    *(("depthwise_1d", fmt) for fmt in ("tucker", "rtt")),
    *(("grouped_3d", fmt) for fmt in ("tt", "rcp", "rtk")),
]


def _source(case):
    n_in, n_out, k, g, s, pad, _, _, _ = CASES[case]
    return nnx.Conv(
        n_in,
        n_out,
        k,
        s,
        padding=pad,
        feature_group_count=g,
        kernel_init=_numpy_init(1),
        bias_init=_numpy_init(2),
        rngs=nnx.Rngs(0),
    )


@pytest.mark.parametrize("case, fmt", FULL_RANK_CASES)
def test_from_grouped_conv_is_exact_at_full_rank(case, fmt):
    n_in, n_out, k, g, s, _, shape, in_modes, out_modes = CASES[case]
    src = _source(case)
    assert src.kernel.shape == (*k, n_in // g, n_out)
    modes = _modes(fmt, in_modes, out_modes)
    full = conv_layout(n_in, n_out, k, format=fmt, rank=1, feature_group_count=g, **modes)
    layer = Conv.from_conv(src, format=fmt, rank=full.max_ranks, **modes)
    assert layer.feature_group_count == g and layer.layout.groups == g
    assert layer.ranks == full.max_ranks
    if modes:
        assert layer.in_modes == in_modes
    x = _normal(3, shape)
    want = src(x)
    got = nnx.jit(lambda m, x: m(x))(layer, x)
    assert got.shape == want.shape  # strides and padding come from the conv
    err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
    assert err < 1e-4, err
    kernel = layer.kernel()
    assert kernel.shape == src.kernel.shape
    np.testing.assert_allclose(kernel, src.kernel[...], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.bias[...], src.bias[...])


# a random grouped layer: 8 -> 12 channels in G = 4 groups of 2 -> 3
G, N_IN, N_OUT = 4, 8, 12


def _numpy_layer(*args, **kwargs):
    """A Conv with random NumPy cores and bias (no eager JAX initialiser to compile)."""
    shapes = [
        c.shape for c in nnx.eval_shape(lambda: Conv(*args, rngs=nnx.Rngs(0), **kwargs)).cores
    ]
    rng = np.random.default_rng(len(shapes))
    cores = [0.7 * rng.standard_normal(s).astype(np.float32) for s in shapes]
    return Conv(*args, bias_init=_numpy_init(4), rngs=nnx.Rngs(0), _cores=cores, **kwargs)


def _random_layer(fmt, rank=2, **kwargs):
    return _numpy_layer(N_IN, N_OUT, (3, 3), feature_group_count=G, format=fmt, rank=rank, **kwargs)


@pytest.mark.parametrize("fmt", CONV_FORMATS)
def test_random_grouped_layer_is_a_grouped_conv_of_its_kernel(fmt):
    layer = _random_layer(fmt, strides=(2, 1), padding="VALID", kernel_dilation=(1, 2))
    x = jax.random.normal(jax.random.key(0), (2, 7, 8, N_IN))
    kernel = layer.kernel()
    assert kernel.shape == (3, 3, N_IN // G, N_OUT)
    want = _grouped_conv(x, kernel, G, (2, 1), "VALID", (1, 2)) + layer.bias[...]
    forward = nnx.jit(lambda m, x: m(x))
    got = forward(layer, x)
    assert got.shape == want.shape == (2, 3, 4, N_OUT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the same through nnx.Conv holding the reconstructed kernel
    dense = nnx.Conv(
        N_IN,
        N_OUT,
        (3, 3),
        (2, 1),
        padding="VALID",
        kernel_dilation=(1, 2),
        feature_group_count=G,
        kernel_init=_numpy_init(0),
        rngs=nnx.Rngs(0),
    )
    dense.kernel[...] = kernel
    dense.bias[...] = layer.bias[...]
    np.testing.assert_allclose(got, dense(x), rtol=1e-4, atol=1e-4)
    # the outputs of group g depend on its inputs alone: perturbing the inputs of the first
    # (last) group changes every output channel of that group and no other
    per_in, per_out = N_IN // G, N_OUT // G
    for g in (0, G - 1):
        noise = jax.random.normal(jax.random.key(2 + g), x.shape[:-1] + (per_in,))
        xg = x.at[..., g * per_in : (g + 1) * per_in].add(noise)
        diff = jnp.abs(forward(layer, xg) - got).max(axis=(0, 1, 2))  # (N_OUT,)
        mine = np.zeros(N_OUT, bool)
        mine[g * per_out : (g + 1) * per_out] = True
        np.testing.assert_allclose(diff[~mine], 0.0, atol=1e-5)
        assert float(diff[mine].min()) > 1e-2, (g, diff)


# a plain and a reshaped format (the forward of every format is checked above)
@pytest.mark.parametrize("fmt", ["tucker", "rtr"])
def test_grouped_conv_under_jit_vmap_and_grad(fmt):
    layer = _random_layer(fmt, rank=3)
    x = jax.random.normal(jax.random.key(3), (2, 5, 6, N_IN))
    cotangent = jax.random.normal(jax.random.key(4), (2, 5, 6, N_OUT))

    def reference(m, x):
        return _grouped_conv(x, m.kernel(), G) + m.bias[...]

    want = reference(layer, x)
    np.testing.assert_allclose(jax.jit(lambda x: layer(x))(x), want, rtol=1e-4, atol=1e-4)
    # vmap over single (H, W, C) images equals the batched call
    np.testing.assert_allclose(jax.vmap(lambda xi: layer(xi))(x), want, rtol=1e-4, atol=1e-4)
    # gradient with respect to the input, against the dense grouped conv's
    dx = jax.grad(lambda x: jnp.sum(layer(x) * cotangent))(x)
    dx_want = jax.grad(lambda x: jnp.sum(reference(layer, x) * cotangent))(x)
    assert float(jnp.abs(dx_want).max()) > 0
    np.testing.assert_allclose(dx, dx_want, rtol=1e-4, atol=1e-4)
    # gradients with respect to the cores: finite, nonzero, and those of the dense path
    cores = nnx.DiffState(0, Core)
    grads = nnx.grad(lambda m: jnp.sum(m(x) * cotangent), argnums=cores)(layer)
    grads_want = nnx.grad(lambda m: jnp.sum(reference(m, x) * cotangent), argnums=cores)(layer)
    leaves, leaves_want = jax.tree.leaves(grads), jax.tree.leaves(grads_want)
    assert len(leaves) == len(layer.cores) == len(leaves_want)
    for g, g_want in zip(leaves, leaves_want, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
        scale = float(jnp.abs(g_want).max())
        np.testing.assert_allclose(g, g_want, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("fmt", CONV_FORMATS)
def test_replace_cores_keeps_the_feature_groups(fmt):
    layer = _random_layer(fmt, strides=2, padding="VALID")
    rebuilt = layer.replace_cores([c[...] for c in layer.cores])
    assert type(rebuilt) is Conv
    assert rebuilt.feature_group_count == G and rebuilt.layout.groups == G
    assert (rebuilt.strides, rebuilt.padding) == ((2, 2), "VALID")
    assert rebuilt.layout == layer.layout
    x = jax.random.normal(jax.random.key(5), (1, 7, 7, N_IN))
    np.testing.assert_allclose(rebuilt(x), layer(x), rtol=1e-6, atol=1e-6)


def test_prune_model_keeps_the_feature_groups():
    """Pruning a Tucker-2 grouped conv (its group axis is in the output factor)."""

    class Model(nnx.Module):
        def __init__(self, layer):
            self.conv = layer

        def __call__(self, x):
            return self.conv(x)

    model = Model(_random_layer("tucker", rank=3))
    layer = model.conv
    groups = bayes.rank_groups(layer)
    assert len(groups) == len(layer.ranks)
    lambdas, keep = [], []
    for i, g in enumerate(groups):  # drop the last index of every group that has two
        mask = np.ones(g.size, bool)
        mask[-1] = g.size == 1
        keep.append(mask)
        lambdas.append(jnp.where(jnp.asarray(mask), 1.0 + i, 1e-6))
        for ci, axis in g.slices:  # zero the removed slices so the output is unchanged
            c = np.moveaxis(np.array(layer.cores[ci][...]), axis, 0)
            c[~mask] = 0.0
            layer.cores[ci][...] = jnp.asarray(np.moveaxis(c, 0, axis))
    assert any(not m.all() for m in keep)
    x = jax.random.normal(jax.random.key(6), (2, 5, 5, N_IN))
    want = layer(x)
    pruned, report, _ = bayes.prune_model(model, {"conv": lambdas})
    new = pruned.conv
    assert type(new) is Conv
    assert new.feature_group_count == G and new.layout.groups == G
    assert new.ranks == tuple(int(m.sum()) for m in keep) == report["conv"]["ranks_after"]
    assert new.num_params < layer.num_params
    assert new.kernel().shape == (3, 3, N_IN // G, N_OUT)
    np.testing.assert_allclose(new(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", CONV_FORMATS)
def test_compression_of_a_grouped_conv_is_measured_per_group_kernel(fmt):
    modes = _modes(fmt, (4, 4), (4, 4))  # per group 16 -> 16
    layer = nnx.eval_shape(
        lambda: Conv(
            64,
            64,
            (3, 3),
            feature_group_count=4,
            format=fmt,
            compression=0.2,
            rngs=nnx.Rngs(0),
            **modes,
        )
    )
    assert layer.dense_params == 3 * 3 * 16 * 64
    assert layer.num_params == sum(int(np.prod(c.shape)) for c in layer.cores)
    fraction = layer.num_params / layer.dense_params
    assert abs(fraction / 0.2 - 1) <= 0.1, (fmt, layer.ranks, fraction)


def test_initial_kernel_scale_follows_the_per_group_fan_in():
    """A grouped kernel (3, 3, 16, 64) has the fan-in 3*3*16 of its input group, like an
    ungrouped conv with that kernel, not 3*3*64 (which would halve its scale)."""
    grouped = Conv(
        64,
        64,
        (3, 3),
        feature_group_count=4,
        format="rtk",
        rank=6,
        in_modes=(4, 4),
        out_modes=(4, 4),
        rngs=nnx.Rngs(0),
    )
    plain = Conv(
        16, 64, (3, 3), format="rtk", rank=6, in_modes=(4, 4), out_modes=(8, 8), rngs=nnx.Rngs(0)
    )
    assert grouped.kernel().shape == plain.kernel().shape
    ratio = float(grouped.kernel().std() / plain.kernel().std())
    assert 0.8 < ratio < 1.25, ratio


@pytest.mark.parametrize(
    "n_in, n_out, k, g, strides, padding, shape, positions",
    [
        (8, 12, (3, 3), 4, 2, "VALID", (2, 9, 9, 8), 2 * 4 * 4),
        (6, 6, (3, 3), 6, 1, "SAME", (3, 5, 4, 6), 3 * 5 * 4),  # depthwise
        (4, 8, (5,), 2, (2,), ((2, 1),), (2, 11, 4), 2 * 5),  # (11 + 2 + 1 - 5) // 2 + 1
    ],
)
def test_dense_flops_are_those_of_the_grouped_kernel(
    n_in, n_out, k, g, strides, padding, shape, positions
):
    layer = _numpy_layer(
        n_in, n_out, k, strides, padding=padding, feature_group_count=g, format="tt", rank=2
    )
    y = jax.eval_shape(lambda x: layer(x), jax.ShapeDtypeStruct(shape, jnp.float32))
    assert y.shape[-1] == n_out and int(np.prod(y.shape[:-1])) == positions
    kernel = (*k, n_in // g, n_out)
    cost = layer.cost(shape)
    assert cost["dense_flops"] == 2 * positions * int(np.prod(kernel))
    assert cost["dense_params"] == layer.dense_params == int(np.prod(kernel))
    assert cost["params"] == layer.num_params
    assert cost["flops"] > 0


def test_feature_group_count_must_divide_the_channels():
    for n_in, n_out, g in ((4, 6, 4), (6, 4, 4), (6, 6, 4), (4, 4, 0)):
        with pytest.raises(ValueError, match=f"feature_group_count={g}"):
            Conv(n_in, n_out, (3, 3), feature_group_count=g, format="tt", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature_group_count=3"):
        conv_layout(6, 8, (3, 3), format="cp", rank=2, feature_group_count=3)
    kernel = jnp.zeros((3, 3, 2, 6))  # (k, in / G, out) with G = 4: 6 outputs do not split
    with pytest.raises(ValueError, match="feature_group_count=4"):
        Conv.from_conv(kernel, format="tt", rank=2, feature_group_count=4)


def test_reshaped_formats_refuse_padded_group_modes():
    # 17 -> 17 channels per group: the balanced default modes would pad them
    src = nnx.Conv(
        34, 34, (3, 3), feature_group_count=2, kernel_init=_numpy_init(0), rngs=nnx.Rngs(0)
    )
    for fmt in RESHAPED_CONV_FORMATS:
        with pytest.raises(ValueError, match="grouped.*feature_group_count=2.*in_modes/out_modes"):
            Conv(34, 34, (3, 3), feature_group_count=2, format=fmt, rank=2, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="grouped"):
            Conv.from_conv(src, format=fmt, rank=2)
        # the same channels ungrouped are padded silently
        assert conv_layout(34, 34, (3, 3), format=fmt, rank=2).in_padded > 34
        # modes of the whole channel count are not those of a group (4 per group)
        with pytest.raises(ValueError, match=r"in_modes=\(2, 4\) multiply to 8.* is 4"):
            conv_layout(
                8,
                8,
                (3, 3),
                format=fmt,
                rank=2,
                feature_group_count=2,
                in_modes=(2, 4),
                out_modes=(2, 2),
            )
        # exact per-group modes are fine
        layout = conv_layout(
            34,
            34,
            (3, 3),
            format=fmt,
            rank=2,
            feature_group_count=2,
            in_modes=(17, 1),
            out_modes=(17, 1),
        )
        assert layout.dense_shape == (3, 3, 17, 34)
        assert layout.in_padded == 17


def test_a_grouped_layer_checks_its_input_channels():
    layer = _random_layer("tt")
    with pytest.raises(ValueError, match=rf"\(\.\.\., H, W, {N_IN}\)"):
        layer(jnp.ones((1, 5, 5, N_IN // G)))  # one group's channels, not all of them


def test_from_conv_refuses_a_group_count_other_than_the_convs():
    src = nnx.Conv(8, 16, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="differs from the conv's 2"):
        Conv.from_conv(src, format="tucker", rank=2, feature_group_count=1)
