"""tnjax.functional: the layers as pure functions of (layout, cores, inputs), with no Flax.

Nothing here imports flax: this is how optax/equinox/haiku code uses tnjax.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tnjax import functional as tf
from tnjax.formats import weights

KEY = jax.random.key(0)


def _linear(fmt, rank=2):
    return tf.linear_layout(12, 10, format=fmt, rank=rank, num_modes=2)


def _conv(fmt, rank=2):
    return tf.conv_layout(6, 4, 3, format=fmt, rank=rank, num_modes=2)


def _embed(fmt, rank=2):
    return tf.embed_layout(29, 6, format=fmt, rank=rank, num_modes=2)


def _layouts():
    out = [("linear", f, _linear(f)) for f in weights.LINEAR_FORMATS]
    out += [("conv", f, _conv(f)) for f in weights.CONV_FORMATS]
    out += [("embed", f, _embed(f)) for f in weights.EMBED_FORMATS]
    return out


LAYOUTS = _layouts()
IDS = [f"{k}-{f}" for k, f, _ in LAYOUTS]


def _inputs(layout):
    if layout.kind == "linear":
        return jax.random.normal(jax.random.key(1), (5, layout.in_features))
    if layout.kind == "conv":
        return jax.random.normal(jax.random.key(1), (2, 7, 6, layout.in_features))
    return jnp.array([[0, 3, 28], [-1, 17, 5]])


def _apply(layout, cores, x):
    if layout.kind == "linear":
        return tf.linear(layout, cores, x)
    if layout.kind == "conv":
        return tf.conv(layout, cores, x, strides=(1, 2), padding="SAME")
    return tf.embed(layout, cores, x)


def _dense_reference(layout, kernel, x):
    """The dense layer's output from the reconstructed kernel, in NumPy / lax."""
    if layout.kind == "linear":
        return np.asarray(x) @ np.asarray(kernel)
    if layout.kind == "conv":
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    return np.asarray(kernel)[np.asarray(x)]


@pytest.mark.parametrize("kind,fmt,layout", LAYOUTS, ids=IDS)
def test_apply_equals_the_dense_layer_of_the_reconstructed_kernel(kind, fmt, layout):
    cores = tf.init(layout, KEY)
    assert [c.shape for c in cores] == list(layout.core_shapes)
    assert sum(c.size for c in cores) == layout.num_params
    kernel = tf.to_dense(layout, cores)
    assert kernel.shape == layout.dense_shape
    x = _inputs(layout)
    want = _dense_reference(layout, kernel, x)
    np.testing.assert_allclose(_apply(layout, cores, x), want, rtol=2e-4, atol=2e-5)
    got_jit = jax.jit(lambda c, x: _apply(layout, c, x))(cores, x)
    np.testing.assert_allclose(got_jit, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kind,fmt,layout", LAYOUTS, ids=IDS)
def test_vmap_over_inputs_equals_the_batched_call(kind, fmt, layout):
    cores = tf.init(layout, KEY)
    x = _inputs(layout)
    mapped = jax.vmap(lambda xi: _apply(layout, cores, xi[None]))(x)
    np.testing.assert_allclose(mapped[:, 0], _apply(layout, cores, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "layout",
    [
        _linear("ttm"),
        _linear("tucker"),
        _linear("rcp"),
        _conv("rtr"),
        _conv("tucker"),
        _embed("tr"),
    ],
    ids=["linear-ttm", "linear-tucker", "linear-rcp", "conv-rtr", "conv-tucker", "embed-tr"],
)
def test_gradients_match_finite_differences_in_float64(layout):
    with jax.enable_x64(True):
        cores = tf.init(layout, KEY, dtype=jnp.float64)
        x = _inputs(layout)
        if layout.kind != "embed":
            x = x.astype(jnp.float64)

        def f(*cores):
            return jnp.sum(jnp.sin(_apply(layout, list(cores), x)))

        check_grads(f, tuple(cores), order=1, modes=("rev",))


@pytest.mark.parametrize("kind,fmt,layout", LAYOUTS, ids=IDS)
def test_from_dense_at_full_rank_reproduces_the_kernel(kind, fmt, layout):
    full = layout.with_ranks(layout.max_ranks)
    dense = jax.random.normal(jax.random.key(2), full.dense_shape)
    cores = tf.from_dense(full, dense, jax.random.key(3))
    assert [c.shape for c in cores] == list(full.core_shapes)
    err = jnp.linalg.norm(tf.to_dense(full, cores) - dense) / jnp.linalg.norm(dense)
    assert float(err) < 2e-3, (fmt, float(err))


def test_from_dense_grows_clipped_ranks_back_to_the_layout():
    # A tensor ring's first two bonds multiply to at most I_1 = 3: TR-SVD stops short.
    layout = tf.linear_layout(9, 8, format="tr", rank=3, in_modes=(3, 3), out_modes=(2, 4))
    cores = tf.from_dense(layout, jax.random.normal(KEY, (9, 8)), jax.random.key(1))
    assert [c.shape for c in cores] == list(layout.core_shapes)


def test_init_matches_the_dense_initialiser_std():
    layout = tf.linear_layout(256, 256, format="ttm", rank=8, num_modes=2)
    kernel = tf.to_dense(layout, tf.init(layout, KEY))
    assert abs(float(jnp.std(kernel)) * 16 - 1) < 0.1  # LeCun normal: 1/sqrt(256)

    def init(key, shape, dtype):
        return 0.5 * jax.random.normal(key, shape, dtype)

    kernel = tf.to_dense(layout, tf.init(layout, KEY, kernel_init=init))
    assert abs(float(jnp.std(kernel)) / 0.5 - 1) < 0.1


def test_attend_is_query_times_table_transposed():
    layout = _embed("tr")
    cores = tf.init(layout, KEY)
    q = jax.random.normal(jax.random.key(4), (3, 6))
    np.testing.assert_allclose(
        tf.attend(layout, cores, q), q @ tf.to_dense(layout, cores).T, rtol=1e-4, atol=1e-5
    )


def test_the_contraction_is_injectable():
    layout = _linear("ttm")
    cores = tf.init(layout, KEY)
    x = _inputs(layout)
    specs = []

    def einsum(spec, *operands, **options):
        specs.append(spec)
        return jnp.einsum(spec, *operands)

    y = tf.linear(layout, cores, x, contract=einsum)
    assert specs == [layout.spec]
    np.testing.assert_allclose(y, tf.linear(layout, cores, x), rtol=1e-5, atol=1e-6)


def test_training_with_optax_and_no_flax():
    import optax

    layout = tf.linear_layout(16, 8, format="tt", rank=3, num_modes=2)
    target = jax.random.normal(jax.random.key(5), (16, 8)) / 4
    x = jax.random.normal(jax.random.key(6), (64, 16))
    cores = tf.init(layout, KEY)
    opt = optax.adam(1e-2)
    state = opt.init(cores)

    @jax.jit
    def step(cores, state):
        loss, g = jax.value_and_grad(
            lambda c: jnp.mean((tf.linear(layout, c, x) - x @ target) ** 2)
        )(cores)
        updates, state = opt.update(g, state)
        return optax.apply_updates(cores, updates), state, loss

    first = None
    for _ in range(200):
        cores, state, loss = step(cores, state)
        first = float(loss) if first is None else first
    assert float(loss) < 0.2 * first


def test_layouts_are_static_hashable_data():
    a, b = _linear("ttm"), _linear("ttm")
    assert a == b and hash(a) == hash(b)
    assert a.with_ranks((3,)) != a and a.with_ranks((3,)).ranks == (3,)
    assert a.ranks_of(tf.init(a.with_ranks((3,)), KEY)) == (3,)
    assert len(set(a.letters.values())) == len(a.letters)


def test_bad_inputs_say_what_is_wrong():
    layout = _linear("tt")
    cores = tf.init(layout, KEY)
    with pytest.raises(ValueError, match=r"\(\.\.\., 12\)"):
        tf.linear(layout, cores, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="needs a conv layout"):
        tf.conv(layout, cores, jnp.ones((1, 4, 4, 12)))
    with pytest.raises(ValueError, match="cores"):
        tf.linear(layout, cores[:-1], jnp.ones((2, 12)))
    with pytest.raises(ValueError, match="decomposes a kernel of shape"):
        tf.from_dense(layout, jnp.ones((3, 3)), KEY)
    conv = _conv("cp")
    with pytest.raises(ValueError, match="strides"):
        tf.conv(conv, tf.init(conv, KEY), jnp.ones((1, 5, 5, 6)), strides=2.5)
    with pytest.raises(ValueError, match="padding"):
        tf.conv(conv, tf.init(conv, KEY), jnp.ones((1, 5, 5, 6)), padding=(1, 2, 3))


def test_the_functional_core_does_not_import_flax():
    code = (
        "import sys; import tnjax.functional, tnjax.formats, tnjax.ops; "
        "bad = [m for m in ('flax', 'numpyro') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
