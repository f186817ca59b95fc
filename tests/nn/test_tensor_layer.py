"""What Linear, Conv and Embed share through their base: from_cores, replace_cores, contract=."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import bayes, functional
from tnjax import nn as tnn


def test_from_cores_round_trips_a_functional_layout():
    layout = functional.linear_layout(12, 10, format="rtr", rank=2, num_modes=2)
    cores = functional.init(layout, jax.random.key(0))
    bias = jnp.arange(10.0)
    layer = tnn.Linear.from_cores(layout, cores, bias)
    x = jax.random.normal(jax.random.key(1), (3, 12))
    np.testing.assert_allclose(layer(x), functional.linear(layout, cores, x, bias), rtol=1e-6)
    assert layer.layout == layout and layer.ranks == layout.ranks
    with pytest.raises(ValueError, match="needs a linear layout"):
        tnn.Linear.from_cores(functional.embed_layout(20, 4, format="tt", rank=2), cores)
    with pytest.raises(ValueError, match="no bias"):
        emb = functional.embed_layout(20, 4, format="tt", rank=2)
        tnn.Embed.from_cores(emb, functional.init(emb, jax.random.key(0)), jnp.zeros(4))


def test_replace_cores_keeps_every_other_setting():
    conv = tnn.Conv(
        6,
        8,
        (3, 3),
        strides=2,
        padding="VALID",
        kernel_dilation=(1, 2),
        format="rtt",
        rank=3,
        num_modes=2,
        dtype=jnp.float32,
        optimize="flops",
        rngs=nnx.Rngs(0),
    )
    conv.tnjax_name = "block.conv"
    smaller = [np.asarray(c[...]) for c in conv.cores]
    smaller[0], smaller[1] = smaller[0][..., :2], smaller[1][:2]
    new = conv.replace_cores(smaller)
    assert new.ranks == (2, 3) and conv.ranks == (3, 3)  # the original is untouched
    assert (new.strides, new.padding, new.kernel_dilation) == ((2, 2), "VALID", (1, 2))
    assert new.optimize == "flops" and new.tnjax_name == "block.conv"
    np.testing.assert_array_equal(new.bias[...], conv.bias[...])
    x = jax.random.normal(jax.random.key(2), (1, 9, 9, 6))
    want = functional.conv(
        new.layout, smaller, x, new.bias[...], strides=2, padding="VALID", dilation=(1, 2)
    )
    np.testing.assert_allclose(new(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cores have shapes"):
        conv.replace_cores(smaller[:1] + [np.zeros((5, 5, 5))] + smaller[2:])


@pytest.mark.parametrize("cls", ["linear", "conv", "embed"])
def test_the_contraction_is_injectable_into_the_modules(cls):
    calls = []

    def counting_contract(spec, *operands, **options):
        calls.append(spec)
        from tnjax.ops import contract

        return contract(spec, *operands, **options)

    rngs = nnx.Rngs(0)
    if cls == "linear":
        layer = tnn.Linear(8, 6, format="tt", rank=2, contract=counting_contract, rngs=rngs)
        layer(jnp.ones((2, 8)))
    elif cls == "conv":
        layer = tnn.Conv(4, 6, 3, format="cp", rank=2, contract=counting_contract, rngs=rngs)
        layer(jnp.ones((1, 5, 5, 4)))
    else:
        layer = tnn.Embed(30, 4, format="tr", rank=2, contract=counting_contract, rngs=rngs)
        layer(jnp.array([1, 2]))
    assert len(calls) == 1


def test_embed_tensor_ring_looks_up_rows_and_prunes():
    emb = tnn.Embed(50, 8, format="tr", rank=3, rngs=nnx.Rngs(0))
    table = emb.table()
    ids = jnp.array([[0, 49], [-1, 7]])
    np.testing.assert_allclose(emb(ids), table[ids], rtol=1e-5, atol=1e-6)
    groups = bayes.rank_groups(emb)
    assert len(groups) == len(emb.ranks) == len(emb.cores)
    keep = [np.array([True, False, True])] + [np.ones(3, bool)] * (len(groups) - 1)
    pruned = bayes.prune_layer(emb, keep)
    assert pruned.ranks[0] == 2 and pruned.num_params < emb.num_params
    assert pruned.layout.core_shapes[0][0] == 2 and pruned.layout.core_shapes[-1][-1] == 2


@pytest.mark.parametrize("fmt", tnn.EMBED_FORMATS)
def test_from_embed_at_full_rank_reproduces_the_table(fmt):
    table = jax.random.normal(jax.random.key(3), (30, 6))
    probe = functional.embed_layout(30, 6, format=fmt, rank=1, num_modes=2)
    emb = tnn.Embed.from_embed(table, format=fmt, rank=probe.max_ranks, num_modes=2)
    err = jnp.linalg.norm(emb.table() - table) / jnp.linalg.norm(table)
    assert float(err) < 2e-3, (fmt, float(err))
    assert emb.ranks == probe.max_ranks  # clipped ranks grown back, as Linear and Conv


def test_pruning_a_tensor_ring_linear_keeps_its_output_when_slices_are_zero():
    layer = tnn.Linear(16, 12, format="tr", rank=3, num_modes=2, rngs=nnx.Rngs(0))
    groups = bayes.rank_groups(layer)
    cores = [np.array(c[...]) for c in layer.cores]
    g = groups[0]  # the closing bond r_0: last core's trailing axis, first core's leading
    for ci, axis in g.slices:
        idx = [slice(None)] * cores[ci].ndim
        idx[axis] = 2
        cores[ci][tuple(idx)] = 0.0
    zeroed = layer.replace_cores(cores)
    keep = [np.array([True, True, False])] + [np.ones(s, bool) for s in layer.ranks[1:]]
    pruned = bayes.prune_layer(zeroed, keep)
    x = jax.random.normal(jax.random.key(4), (4, 16))
    np.testing.assert_allclose(pruned(x), zeroed(x), rtol=1e-5, atol=1e-6)
    assert pruned.ranks == (2,) + layer.ranks[1:]


@pytest.mark.parametrize("cls", [tnn.Linear, tnn.Conv, tnn.Embed])
def test_every_constructor_option_is_kept_by_replace_cores(cls):
    """A constructor argument that is neither structural nor init-only must be an option,
    or pruning (which rebuilds layers through replace_cores) would silently drop it."""
    import inspect

    from tnjax.nn._common import STRUCTURAL_ARGS

    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if cls is tnn.Linear:
        layer = cls(8, 6, format="tt", rank=2, rngs=nnx.Rngs(0))
    elif cls is tnn.Conv:
        layer = cls(4, 6, 3, format="cp", rank=2, rngs=nnx.Rngs(0))
    else:
        layer = cls(30, 4, format="tt", rank=2, rngs=nnx.Rngs(0))
    assert {name for name, _ in layer._options} == params - STRUCTURAL_ARGS
    layer.extra_state = nnx.Variable(jnp.zeros(3))  # attached by other code, e.g. priors
    new = layer.replace_cores([c[...] for c in layer.cores])
    assert not hasattr(new, "extra_state")
    assert new._options == layer._options
