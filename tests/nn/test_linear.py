"""Tests of tnjax.nn.Linear against the dense layer built from its reconstructed kernel."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from tnjax.nn import Core, Linear
from tnjax.nn.linear import LINEAR_FORMATS, RESHAPED_LINEAR_FORMATS, linear_layout

FORMATS = list(LINEAR_FORMATS)
RESHAPED = list(RESHAPED_LINEAR_FORMATS)


# The TNN paper's reshaped formats pair input mode I_k with output mode J_k in one core.
# References for d = 3 (cores as stored, kernel tensor (I_1, I_2, I_3, J_1, J_2, J_3)):
_RESHAPED_KERNEL_SPECS = {
    "rcp": "adr,ber,cfr->abcdef",
    "rtk": "pqr,adp,beq,cfr->abcdef",
    "rtt": "xadp,pbeq,qcfy->abcdef",
    "rtr": "padq,qber,rcfp->abcdef",
}
_RESHAPED_RANKS = {"rcp": 3, "rtk": (2, 3, 4), "rtt": (2, 3), "rtr": (2, 3, 4)}


def _numpy_kernel(layer):
    cores = [np.asarray(c[...], np.float64) for c in layer.cores]
    w = np.einsum(_RESHAPED_KERNEL_SPECS[layer.format], *cores)
    w = w.reshape(layer.in_padded, layer.out_padded)
    return w[: layer.in_features, : layer.out_features]


def _dense(layer, x):
    """x @ W + b with W reconstructed by the layer (by NumPy for the reshaped formats)."""
    w = _numpy_kernel(layer) if layer.format in RESHAPED else layer.kernel()
    y = x @ jnp.asarray(w, jnp.float32)
    return y + layer.bias[...] if layer.bias is not None else y


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n_in,n_out", [(24, 30), (17, 12)])  # 17 is prime: padded modes
def test_forward_equals_dense_from_reconstructed_kernel(fmt, n_in, n_out):
    rank = _RESHAPED_RANKS.get(fmt, 3)
    layer = Linear(n_in, n_out, format=fmt, rank=rank, num_modes=3, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.arange(n_out, dtype=jnp.float32) / n_out
    if fmt in RESHAPED:  # the library's kernel against an independent NumPy reference
        np.testing.assert_allclose(layer.kernel(), _numpy_kernel(layer), rtol=1e-5, atol=1e-6)
    for shape in [(5, n_in), (2, 3, n_in), (n_in,)]:
        x = jax.random.normal(jax.random.key(1), shape)
        want = _dense(layer, x)
        if len(shape) == 2:  # eager once; jit for every shape
            np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-5)
        got = nnx.jit(lambda m, v: m(v))(layer, x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert got.shape == shape[:-1] + (n_out,)
    if fmt in RESHAPED:  # vmap over a leading axis
        x = jax.random.normal(jax.random.key(2), (2, 5, n_in))
        got = jax.jit(jax.vmap(lambda v: layer(v)))(x)
        np.testing.assert_allclose(got, _dense(layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradients_flow_to_every_core(fmt):
    layer = Linear(12, 20, format=fmt, rank=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (4, 12))

    def loss(m):
        return jnp.sum(m(x) ** 2)

    grads = nnx.grad(loss)(layer)
    core_grads = jax.tree.leaves(nnx.state(grads, Core))
    assert len(core_grads) == len(layer.cores)
    assert all(float(jnp.abs(g).max()) > 0 for g in core_grads)


def test_parameter_counts_equal_closed_forms():
    rows, cols = (4, 7, 4, 7), (4, 4, 8, 4)  # the Bayes paper's MNIST fc1
    modes = rows + cols

    def count(fmt, rank):
        return linear_layout(
            784, 512, format=fmt, rank=rank, in_modes=rows, out_modes=cols
        ).num_params

    ttm = linear_layout(784, 512, format="ttm", rank=20, in_modes=rows, out_modes=cols)
    assert ttm.ranks == (16, 20, 20)  # the first bond cannot exceed 4*4 = 16
    ranks = (1, 16, 20, 20, 1)
    assert ttm.num_params == sum(ranks[k] * rows[k] * cols[k] * ranks[k + 1] for k in range(4))
    rr = (1,) + (3,) * 7 + (1,)
    assert count("tt", 3) == sum(rr[k] * m * rr[k + 1] for k, m in enumerate(modes))
    assert count("cp", 50) == 50 * sum(modes)
    assert count("tucker", 3) == 3**8 + 3 * sum(modes)
    assert count("tr", 4) == 16 * sum(modes)
    pairs = [i * j for i, j in zip(rows, cols, strict=True)]  # (16, 28, 32, 28)
    assert count("rcp", 5) == 5 * sum(pairs)
    rtk = (3, 4, 5, 6)
    assert count("rtk", rtk) == math.prod(rtk) + sum(r * p for r, p in zip(rtk, pairs, strict=True))
    assert count("rtt", 20) == ttm.num_params
    rtr = (2, 3, 4, 5)
    assert count("rtr", rtr) == sum(rtr[k - 1] * pairs[k - 1] * rtr[k % 4] for k in range(1, 5))
    layer = Linear(784, 512, format="ttm", rank=20, in_modes=rows, out_modes=cols, rngs=nnx.Rngs(0))
    assert layer.num_params == ttm.num_params


@pytest.mark.parametrize("fmt", FORMATS)
def test_initial_kernel_std_matches_dense_initialiser(fmt):
    layer = Linear(256, 256, format=fmt, rank=4, rngs=nnx.Rngs(3))
    std = float(jnp.std(layer.kernel()))
    assert 0.6 / 16 < std < 1.6 / 16, std  # LeCun normal: 1/sqrt(256)


LENET_RESNET_LINEAR = [(400, 120), (120, 84), (84, 10), (64, 10), (784, 512), (256, 256)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("c", [0.02, 0.05, 0.1, 0.2])
def test_compression_budget(fmt, c):
    """Within 10% of the budget, or the nearest feasible with a warning naming it."""
    for n_in, n_out in LENET_RESNET_LINEAR:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layout = linear_layout(n_in, n_out, format=fmt, compression=c)
        measured = layout.num_params / (n_in * n_out)
        if abs(measured / c - 1) > 0.1:
            assert any("budget" in str(w.message) for w in caught), (n_in, n_out, measured)
            # 84x10, 64x10 only; and 120x84 at 2% in RCP, whose rank step is 74 parameters
            small = 120 * 84 if (fmt, c) == ("rcp", 0.02) else 840
            assert n_in * n_out <= small, (fmt, c, n_in, n_out, measured)


@pytest.mark.parametrize("c", [0.02, 0.05, 0.1, 0.2])
def test_compression_budget_met_on_lenet_and_mlp_layers(c):
    for fmt in FORMATS:
        for n_in, n_out in [(400, 120), (784, 512), (256, 256)]:
            layout = linear_layout(n_in, n_out, format=fmt, compression=c)
            measured = layout.num_params / (n_in * n_out)
            assert abs(measured / c - 1) <= 0.1, (fmt, c, n_in, n_out, measured, layout.ranks)


def test_compressed_layer_reports_measured_fraction():
    layer = Linear(400, 120, format="tt", compression=0.1, rngs=nnx.Rngs(0))
    cost = layer.cost((8, 400))
    assert cost["params"] == layer.num_params == layer.layout.num_params
    assert abs(cost["params"] / cost["dense_params"] / 0.1 - 1) <= 0.1
    assert cost["dense_flops"] == 2 * 8 * 400 * 120 and cost["flops"] > 0


@pytest.mark.parametrize("fmt", ["ttm", "tt", "tucker", "tr"])
def test_from_linear_full_rank_reproduces_and_error_falls_with_rank(fmt):
    dense = nnx.Linear(24, 18, rngs=nnx.Rngs(4))
    dense.bias[...] = jnp.linspace(-1, 1, 18)
    x = jax.random.normal(jax.random.key(5), (7, 24))
    probe = linear_layout(24, 18, format=fmt, rank=1)
    full = max(probe.max_ranks)
    layer = Linear.from_linear(dense, format=fmt, rank=full)
    want = dense(x)
    np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-4)
    errors = []
    for r in (1, 2, 4, 8):
        approx = Linear.from_linear(dense, format=fmt, rank=min(r, full))
        errors.append(float(jnp.linalg.norm(approx(x) - want) / jnp.linalg.norm(want)))
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:], strict=False)), errors


def test_from_linear_cp_at_full_matrix_rank_is_an_svd():
    kernel = jax.random.normal(jax.random.key(6), (10, 8))
    layer = Linear.from_linear(kernel, format="cp", rank=8, num_modes=1)
    np.testing.assert_allclose(layer.kernel(), kernel, rtol=1e-3, atol=1e-3)


BAD = [
    (dict(format="svd", rank=2), "format"),
    (dict(format="ttm"), "exactly one"),
    (dict(format="ttm", rank=2, compression=0.1), "exactly one"),
    (dict(format="ttm", rank=10_000), "maxima"),
    (dict(format="ttm", rank=2, in_modes=(4, 5), out_modes=(6, 5)), "multiply to 20"),
    (dict(format="cp", compression=1.5), "compression"),
    (dict(format="rtk", rank=(2, 2)), "one per pair"),
]


@pytest.mark.parametrize("kwargs,needle", BAD)
def test_bad_arguments_raise_value_error(kwargs, needle):
    with pytest.raises(ValueError) as err:
        Linear(24, 30, rngs=nnx.Rngs(0), **kwargs)
    assert needle in str(err.value), str(err.value)
    layer = Linear(24, 30, format="tt", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="24"):
        layer(jnp.ones((3, 25)))


def test_cores_are_selectable_with_filters():
    layer = Linear(24, 30, format="tt", rank=2, rngs=nnx.Rngs(0))
    cores = jax.tree.leaves(nnx.state(layer, Core))
    assert len(cores) == len(layer.cores)
    assert sum(math.prod(c.shape) for c in cores) == layer.num_params


# --------------------------------------------------------------------------- reshaped formats


@pytest.mark.parametrize("fmt", ["rcp", "rtk", "rtr"])
def test_reshaped_gradients_match_finite_differences(fmt):
    with jax.enable_x64(True):
        layer = Linear(
            6, 8, format=fmt, rank=2, num_modes=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
        )
        graphdef, cores, rest = nnx.split(layer, Core, ...)
        x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 6)))

        def f(cores):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, cores, rest)(x)))

        check_grads(f, (cores,), order=1, modes=("rev",))


def test_rtt_is_the_ttm_layer():
    rtt = Linear(24, 30, format="rtt", rank=3, rngs=nnx.Rngs(0))
    ttm = Linear(24, 30, format="ttm", rank=3, rngs=nnx.Rngs(0))
    assert rtt.format == "rtt" and rtt.spec == ttm.spec and rtt.ranks == ttm.ranks
    for a, b in zip(rtt.cores, ttm.cores, strict=True):
        np.testing.assert_array_equal(a[...], b[...])
    x = jnp.ones((2, 24))
    np.testing.assert_array_equal(rtt(x), ttm(x))
    kernel = jax.random.normal(jax.random.key(0), (24, 30))
    a = Linear.from_linear(kernel, format="rtt", rank=4)
    b = Linear.from_linear(kernel, format="ttm", rank=4)
    np.testing.assert_array_equal(a.kernel(), b.kernel())


@pytest.mark.parametrize("c", [0.05, 0.1, 0.2])
def test_reshaped_compression_budgets_on_lenet_and_mlp_layers(c):
    for fmt in RESHAPED:
        for n_in, n_out in [(784, 512), (400, 120), (120, 84)]:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # within 10%: no warning either
                layout = linear_layout(n_in, n_out, format=fmt, compression=c)
            measured = layout.num_params / (n_in * n_out)
            assert abs(measured / c - 1) <= 0.1, (fmt, c, n_in, n_out, measured, layout.ranks)
    layer = Linear(400, 120, format="rtr", compression=c, rngs=nnx.Rngs(0))
    cost = layer.cost((8, 400))
    assert cost["params"] == layer.num_params == layer.layout.num_params
    assert abs(cost["params"] / cost["dense_params"] / c - 1) <= 0.1 and cost["flops"] > 0


@pytest.mark.parametrize(
    "fmt,num_modes",
    [("rcp", 2), ("rtk", 3), ("rtt", 3), ("rtr", 3)],  # CP-ALS is exact on a matrix (d = 2)
)
def test_reshaped_from_linear_full_rank_reproduces_and_low_rank_approximates(fmt, num_modes):
    dense = nnx.Linear(24, 18, rngs=nnx.Rngs(4))
    dense.bias[...] = jnp.linspace(-1, 1, 18)
    kernel = dense.kernel[...]
    probe = linear_layout(24, 18, format=fmt, rank=1, num_modes=num_modes)
    full = Linear.from_linear(dense, format=fmt, rank=probe.max_ranks, num_modes=num_modes)
    rel = float(jnp.linalg.norm(full.kernel() - kernel) / jnp.linalg.norm(kernel))
    assert rel < 1e-4, rel
    x = jax.random.normal(jax.random.key(5), (7, 24))
    np.testing.assert_allclose(full(x), dense(x), rtol=1e-4, atol=1e-4)
    low = Linear.from_linear(dense, format=fmt, rank=2, num_modes=num_modes)
    low_rel = float(jnp.linalg.norm(low.kernel() - kernel) / jnp.linalg.norm(kernel))
    assert np.isfinite(low_rel) and rel < low_rel < 1.0, low_rel
    assert low.num_params < full.num_params
