"""tnjax.nn.Einsum against nnx.Einsum: einsum strings with several kernel labels, an
ellipsis, a transposed output and a label summed away; conversion exact at full rank,
jit/vmap/grad, rebuilt layers, costs, errors, and whole-model compression."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import compress as tnc
from tnjax.nn import Core, Einsum


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _numpy_init(seed):
    """An initialiser drawing with NumPy: no eager JAX initialiser to compile per shape."""
    return lambda key, shape, dtype=jnp.float32: _normal(seed, shape).astype(dtype)


# (einsum_str, kernel_shape, bias_shape, input shape). Every kernel flattens to a 6 x 4
# matrix (contracted x output labels), so the cases share layouts (and compiles).
CASES = [
    ("btd,dnh->btnh", (6, 2, 2), (2, 2), (2, 3, 6)),  # attention's query projection
    ("btd,dnh->btnh", (6, 2, 2), (4,), (2, 3, 6)),  # a flat bias, reshaped as nnx does
    ("btd,dnh->bthn", (6, 2, 2), (2, 2), (2, 3, 6)),  # output labels not in kernel order
    ("btnh,nhd->btd", (2, 3, 4), (4,), (2, 3, 2, 3)),  # its output projection
    ("bij,jki->kb", (3, 4, 2), (4,), (5, 2, 3)),  # kernel labels in another order than x's
    ("...d,dh->...h", (6, 4), (4,), (2, 3, 6)),
    ("...d,dh->h...", (6, 4), (4,), (2, 3, 6)),
    ("bd,dh->hb", (6, 4), (4,), (3, 6)),  # the output transposed
    ("xbd,dh->bh", (6, 4), (4,), (2, 3, 6)),  # x's label x summed away
    ("ab,bc->ac", (6, 4), (4,), (3, 6)),
]
FORMATS = ("ttm", "tucker", "cp", "tt", "tr")


def _source(case, seed=0):
    einsum_str, kernel_shape, bias_shape, _ = CASES[case]
    return nnx.Einsum(
        einsum_str,
        kernel_shape,
        bias_shape,
        kernel_init=_numpy_init(seed),
        bias_init=_numpy_init(seed + 10),  # a nonzero bias
        rngs=nnx.Rngs(seed),
    )


def _full_ranks(einsum_str, kernel_shape, fmt):
    return Einsum(einsum_str, kernel_shape, format=fmt, rank=1, rngs=nnx.Rngs(0)).layout.max_ranks


def _rel_err(got, want):
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


@pytest.mark.parametrize(
    "fmt, case",
    [(f, c) for f in FORMATS for c in range(len(CASES))]
    + [(f, c) for f in ("rcp", "rtk", "rtt", "rtr") for c in (0, 2)],  # the reshaped formats
)
def test_from_einsum_is_exact_at_full_rank(fmt, case):
    einsum_str, kernel_shape, bias_shape, shape = CASES[case]
    src = _source(case)
    x = _normal(case, shape)
    want = src(x)
    assert float(jnp.abs(src.bias[...]).min()) > 0
    layer = Einsum.from_einsum(src, format=fmt, rank=_full_ranks(einsum_str, kernel_shape, fmt))
    assert (layer.einsum_str, layer.kernel_shape) == (einsum_str, kernel_shape)
    assert layer.in_features * layer.out_features == np.prod(kernel_shape)
    got = nnx.jit(lambda m, x: m(x))(layer, x)
    assert got.shape == want.shape
    err = _rel_err(got, want)
    assert err < 1e-4, err
    kernel = layer.kernel()
    assert kernel.shape == src.kernel.shape == kernel_shape
    np.testing.assert_allclose(kernel, src.kernel[...], rtol=1e-4, atol=1e-4)
    assert layer.bias.shape == bias_shape
    np.testing.assert_array_equal(layer.bias[...], src.bias[...])


def test_error_falls_with_rank():
    src = _source(0)
    x = _normal(0, CASES[0][3])
    want = src(x)
    errors = [_rel_err(Einsum.from_einsum(src, format="tt", rank=r)(x), want) for r in (1, 2)]
    full = Einsum.from_einsum(src, format="tt", rank=_full_ranks(*CASES[0][:2], "tt"))
    errors.append(_rel_err(full(x), want))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-4 < errors[1], errors


def _random_layer(einsum_str, kernel_shape, bias_shape, fmt="tt", rank=2):
    """A layer with random NumPy cores and bias (no eager JAX initialiser to compile)."""
    args = (einsum_str, kernel_shape, bias_shape)
    kwargs = dict(format=fmt, rank=rank)
    shapes = [
        c.shape for c in nnx.eval_shape(lambda: Einsum(*args, rngs=nnx.Rngs(0), **kwargs)).cores
    ]
    rng = np.random.default_rng(len(shapes))
    cores = [0.7 * rng.standard_normal(s).astype(np.float32) for s in shapes]
    return Einsum(*args, bias_init=_numpy_init(3), rngs=nnx.Rngs(0), _cores=cores, **kwargs)


@pytest.mark.parametrize("fmt", ["ttm", "tucker"])
def test_forward_equals_the_reconstructed_kernel_under_jit_vmap_and_grad(fmt):
    layer = _random_layer("btd,dnh->btnh", (4, 2, 3), (2, 3), fmt=fmt)
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    cotangent = jax.random.normal(jax.random.key(1), (3, 5, 2, 3))

    def reference(m, x):
        return jnp.einsum("btd,dnh->btnh", x, m.kernel()) + m.bias[...]

    want = reference(layer, x)
    assert float(jnp.abs(layer.bias[...]).min()) > 0
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), want, rtol=1e-4, atol=1e-4)
    # vmap over the batch label equals the batched call
    batched = jax.vmap(lambda xi: layer(xi[None])[0])(x)
    np.testing.assert_allclose(batched, want, rtol=1e-4, atol=1e-4)
    # gradient with respect to the input, against the dense einsum's
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


def test_an_ellipsis_takes_any_leading_axes_and_vmap():
    layer = _random_layer("...d,dh->...h", (6, 4), (4,), fmt="tt")
    kernel, bias = layer.kernel(), layer.bias[...]
    for shape in ((6,), (3, 6), (2, 3, 6)):
        x = _normal(len(shape), shape)
        want = jnp.einsum("...d,dh->...h", x, kernel) + bias
        np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-4)
    x = _normal(9, (2, 3, 6))
    np.testing.assert_allclose(
        jax.vmap(lambda xi: layer(xi), in_axes=1, out_axes=1)(x), layer(x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "einsum_str, kernel_shape, bias_shape, shape",
    [CASES[0], ("bd,dh->hb", (6, 4), None, (3, 6))],
)
def test_replace_cores_keeps_the_einsum(einsum_str, kernel_shape, bias_shape, shape):
    layer = _random_layer(einsum_str, kernel_shape, bias_shape)
    rebuilt = layer.replace_cores([c[...] for c in layer.cores])
    assert type(rebuilt) is Einsum
    assert (rebuilt.einsum_str, rebuilt.kernel_shape) == (einsum_str, kernel_shape)
    assert rebuilt.layout == layer.layout
    if bias_shape is None:
        assert layer.bias is None and rebuilt.bias is None
    else:
        assert rebuilt.bias.shape == bias_shape
        np.testing.assert_array_equal(rebuilt.bias[...], layer.bias[...])
    x = _normal(4, shape)
    want = jnp.einsum(einsum_str, x, layer.kernel())
    if bias_shape is not None:
        want = want + layer.bias[...]
    np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rebuilt(x), layer(x), rtol=1e-6, atol=1e-6)


def test_cost_counts_the_dense_einsum():
    layer = _random_layer("btd,dnh->btnh", (4, 2, 3), (2, 3), fmt="ttm")
    cost = layer.cost((3, 5, 4))
    assert cost["dense_flops"] == 2 * 3 * 5 * (4 * 2 * 3)
    assert cost["dense_params"] == layer.dense_params == 4 * 2 * 3
    assert cost["params"] == layer.num_params == sum(int(np.prod(c.shape)) for c in layer.cores)
    assert cost["flops"] > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_compression_is_measured(fmt):
    layer = nnx.eval_shape(
        lambda: Einsum(
            "btd,dnh->btnh", (64, 4, 16), (4, 16), format=fmt, compression=0.25, rngs=nnx.Rngs(0)
        )
    )
    assert layer.dense_params == 64 * 4 * 16
    fraction = layer.num_params / layer.dense_params
    assert abs(fraction / 0.25 - 1) <= 0.1, (fmt, layer.ranks, fraction)


def test_bad_einsums_are_named():
    def make(einsum_str, kernel_shape, bias_shape=None):
        return Einsum(einsum_str, kernel_shape, bias_shape, format="tt", rank=2, rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match=r"kernel label\(s\) \['n'\] are in both the input"):
        make("btnh,nhk->btnk", (2, 3, 4))
    with pytest.raises(ValueError, match="two operands"):
        make("bd,dh,hk->bk", (4, 3))
    with pytest.raises(ValueError, match="explicit output"):
        make("bd,dh", (4, 3))
    with pytest.raises(ValueError, match="'dh' has 2 labels for a kernel of 3 dimensions"):
        make("bd,dh->bh", (4, 3, 2))
    with pytest.raises(ValueError, match=r"kernel label\(s\) \['z'\] are in neither"):
        make("bd,dzh->bh", (4, 2, 3))
    with pytest.raises(ValueError, match=r"bias_shape=\(5,\) has 5 entries"):
        make("bd,dh->bh", (4, 3), (5,))
    # an nnx.Einsum that takes its einsum string at call time
    src = nnx.Einsum("bd,dh->bh", (4, 3), kernel_init=_numpy_init(0), rngs=nnx.Rngs(0))
    src.einsum_str = None
    with pytest.raises(ValueError, match="einsum_str at call time"):
        Einsum.from_einsum(src, format="tt", rank=2)
    per_head = nnx.Einsum("bnd,ndh->bnh", (2, 4, 3), kernel_init=_numpy_init(0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="a kernel per batch index"):
        Einsum.from_einsum(per_head, format="tt", rank=2)


def test_wrong_inputs_are_named():
    layer = _random_layer("btd,dnh->btnh", (4, 2, 3), (2, 3), fmt="ttm")
    with pytest.raises(ValueError, match=r"contracted labels \('d',\) have sizes \(4,\).*\(5,\)"):
        layer(jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"labels btd, got shape \(2, 4\)"):
        layer(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"labels btd, got shape \(1, 2, 3, 4\)"):
        layer(jnp.ones((1, 2, 3, 4)))


# ---------------------------------------------------------------- whole-model compression


class _Block(nnx.Module):
    """Two einsum projections (D -> (N, H) -> D) and a final dense layer."""

    def __init__(self, rngs, d=8, n=2, h=4):
        init = dict(kernel_init=_numpy_init(1), bias_init=_numpy_init(2))
        self.q = nnx.Einsum("btd,dnh->btnh", (d, n, h), (n, h), rngs=rngs, **init)
        self.o = nnx.Einsum("btnh,nhd->btd", (n, h, d), (d,), rngs=rngs, **init)
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.o(jax.nn.relu(self.q(x))))


class _PerHead(nnx.Module):
    def __init__(self, rngs, d=8, n=2, h=4):
        init = dict(kernel_init=_numpy_init(1))
        self.q = nnx.Einsum("btd,dnh->btnh", (d, n, h), (n, h), rngs=rngs, **init)
        self.w = nnx.Einsum("btnh,nhk->btnk", (n, h, h), rngs=rngs, **init)
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        y = self.w(self.q(x))
        return self.head(y.reshape(y.shape[:2] + (-1,)))


def test_compress_model_converts_einsums():
    model = _Block(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    assert tnc.skipped_layers(model) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped, so nothing to warn about
        compressed, rows = tnc.compress_model(model, x, format="ttm", rate=0.5)
    assert [(r["name"], r["kind"], r["format"]) for r in rows] == [
        ("q", "linear", "ttm"),
        ("o", "linear", "ttm"),
    ]
    assert isinstance(compressed.q, Einsum) and isinstance(compressed.o, Einsum)
    assert isinstance(compressed.head, nnx.Linear)  # the last dense layer stays
    assert isinstance(model.q, nnx.Einsum)  # the original is left alone
    assert compressed.q.einsum_str == "btd,dnh->btnh"
    assert compressed.o.einsum_str == "btnh,nhd->btd"
    for r in rows:
        layer = getattr(compressed, r["name"])
        assert r["params"] == layer.num_params and r["dense_params"] == 64
        assert abs(r["fraction"] / 0.5 - 1) <= 0.1, r
        np.testing.assert_array_equal(layer.bias[...], getattr(model, r["name"]).bias[...])
    y = compressed(x)
    assert y.shape == model(x).shape and bool(jnp.all(jnp.isfinite(y)))
    # the decomposition is the best rank-limited approximation the format finds: it beats
    # random cores of the same structure
    random, rows_random = tnc.compress_model(model, x, format="ttm", rate=0.5, init="random")
    assert [r["ranks"] for r in rows_random] == [r["ranks"] for r in rows]
    for name in ("q", "o"):
        dec, rnd = getattr(compressed, name), getattr(random, name)
        assert isinstance(rnd, Einsum) and rnd.layout == dec.layout
        assert any(
            not np.allclose(a[...], b[...]) for a, b in zip(rnd.cores, dec.cores, strict=True)
        )
        np.testing.assert_array_equal(rnd.bias[...], dec.bias[...])
        dense = getattr(model, name).kernel[...]
        assert _rel_err(dec.kernel(), dense) < _rel_err(rnd.kernel(), dense)
    assert bool(jnp.all(jnp.isfinite(random(x))))


def test_compress_model_skips_an_einsum_with_a_kernel_per_head():
    model = _PerHead(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    skipped = tnc.skipped_layers(model)
    assert [(s["name"], s["type"]) for s in skipped] == [("w", "Einsum")]
    assert "['n']" in skipped[0]["reason"] and "batch" in skipped[0]["reason"]
    with pytest.warns(UserWarning, match="w .*in both the input and the output"):
        compressed, rows = tnc.compress_model(model, x, format="ttm", rate=0.5)
    assert [r["name"] for r in rows] == ["q"]
    assert isinstance(compressed.q, Einsum) and type(compressed.w) is nnx.Einsum
    np.testing.assert_array_equal(compressed.w.kernel[...], model.w.kernel[...])
    with pytest.raises(ValueError, match="stay dense"):
        tnc.compress_model(model, x, format="ttm", rate=0.5, on_skipped="raise")
