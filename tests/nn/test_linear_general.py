"""tnjax.nn.LinearGeneral against nnx.LinearGeneral: several input/output axes, any axis,
conversion exact at full rank, jit/vmap/grad, rebuilt layers keep their shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax.formats.weights import linear_layout
from tnjax.nn import LINEAR_FORMATS, Core, LinearGeneral


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (in_features, out_features, axis, input shape): attention's query (features) -> (heads,
# head_dim), its output (heads, head_dim) -> features, and a contraction of a middle axis
CASES = [
    (24, (4, 6), -1, (2, 5, 24)),
    ((4, 6), 24, (-2, -1), (2, 5, 4, 6)),
    (6, (2, 5), 1, (3, 6, 7)),
]


def _source(case, seed=0):
    n_in, n_out, axis, _ = case
    src = nnx.LinearGeneral(n_in, n_out, axis=axis, rngs=nnx.Rngs(seed))
    src.bias[...] = _normal(seed + 10, src.bias.shape)
    return src


# the formats whose decomposition is exact at full rank (CP-ALS is not, as for Linear)
EXACT_FORMATS = ("tt", "ttm", "tucker", "tr", "rtt", "rtk")


@pytest.mark.parametrize("fmt", EXACT_FORMATS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_from_linear_general_is_exact_at_full_rank(fmt, case):
    src = _source(CASES[case])
    x = _normal(case, CASES[case][3])
    want = src(x)
    n_in, n_out = int(np.prod(src.in_features)), int(np.prod(src.out_features))
    full = linear_layout(n_in, n_out, format=fmt, rank=1).max_ranks
    layer = LinearGeneral.from_linear_general(src, format=fmt, rank=full)
    got = nnx.jit(lambda m, x: m(x))(layer, x)
    assert got.shape == want.shape
    err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
    assert err < 1e-4, err
    np.testing.assert_allclose(layer.kernel(), src.kernel[...], rtol=1e-3, atol=1e-4)
    low = LinearGeneral.from_linear_general(src, format=fmt, rank=1)
    assert float(jnp.linalg.norm(low(x) - want) / jnp.linalg.norm(want)) > err


@pytest.mark.parametrize("fmt", sorted(set(LINEAR_FORMATS) - set(EXACT_FORMATS)))
def test_cp_formats_error_falls_with_rank(fmt):
    src = _source(CASES[0])
    x = _normal(0, CASES[0][3])
    want = src(x)
    errors = [
        float(jnp.linalg.norm(LinearGeneral.from_linear_general(src, format=fmt, rank=r)(x) - want))
        for r in (1, 8)
    ]
    assert errors[1] < errors[0], errors


def test_forward_equals_the_reconstructed_kernel_under_jit_vmap_and_grad():
    layer = LinearGeneral((4, 6), 10, axis=(1, 2), format="tt", rank=3, rngs=nnx.Rngs(0))
    x = _normal(1, (3, 4, 6, 5))  # contracted axes in the middle; output features last
    want = jnp.einsum("bijt,ijo->bto", x, layer.kernel()) + layer.bias[...]
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), want, rtol=1e-4, atol=1e-5)
    batched = jax.vmap(lambda xi: layer(xi[None])[0])(x)
    np.testing.assert_allclose(batched, want, rtol=1e-4, atol=1e-5)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2), argnums=nnx.DiffState(0, Core))(layer)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    cost = layer.cost(x.shape)
    assert cost["dense_flops"] == 2 * 3 * 5 * 24 * 10


def test_rebuilt_layers_keep_their_feature_shapes_and_axes():
    src = _source(CASES[1])
    layer = LinearGeneral.from_linear_general(src, format="tt", rank=4)
    rebuilt = layer.replace_cores([c[...] for c in layer.cores])
    assert (rebuilt.in_shape, rebuilt.out_shape, rebuilt.axis) == ((4, 6), (24,), (-2, -1))
    x = _normal(2, CASES[1][3])
    np.testing.assert_allclose(rebuilt(x), layer(x), rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_named():
    layer = LinearGeneral(24, (4, 6), format="ttm", rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"axes \(-1,\) of sizes \(24,\).*\(2, 23\)"):
        layer(jnp.ones((2, 23)))
    with pytest.raises(ValueError, match="one axis per input feature size"):
        LinearGeneral((4, 6), 3, axis=-1, format="tt", rank=2, rngs=nnx.Rngs(0))
    batched = nnx.LinearGeneral(4, 3, batch_axis={0: 2}, axis=-1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="batch_axis"):
        LinearGeneral.from_linear_general(batched, format="tt", rank=2)
