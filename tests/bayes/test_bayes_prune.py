"""Pruning: the pruned layer computes what the unpruned one did when removed slices are 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import bayes, models
from tnjax import nn as tnn


def make(cls, *args, **kwargs):
    """A layer with random NumPy cores (N(0, 0.5^2)): no eager JAX init to compile."""
    shapes = [c.shape for c in nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs)).cores]
    rng = np.random.default_rng(0)
    cores = [0.5 * rng.normal(size=s).astype(np.float32) for s in shapes]
    return cls(*args, rngs=nnx.Rngs(0), _cores=cores, **kwargs)


def forward(layer, x):
    """The layer's output, under jit (one compile instead of one per eager op)."""
    graphdef, state = nnx.split(layer)
    return _apply(graphdef, state, x)


@jax.jit(static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


L, E, C = tnn.Linear, tnn.Embed, tnn.Conv
CASES = {
    ("linear", "ttm"): (L, (24, 30), dict(format="ttm", rank=(4, 3), num_modes=3)),
    ("linear", "rtt"): (L, (17, 12), dict(format="rtt", rank=(3, 4), num_modes=3)),  # padded
    ("linear", "tt"): (L, (24, 30), dict(format="tt", rank=3, num_modes=2)),
    ("linear", "cp"): (L, (24, 30), dict(format="cp", rank=5, num_modes=3)),
    ("linear", "rcp"): (L, (24, 30), dict(format="rcp", rank=5, num_modes=3)),
    ("linear", "tucker"): (L, (24, 30), dict(format="tucker", rank=(3, 3, 2, 3), num_modes=2)),
    ("linear", "rtk"): (L, (24, 30), dict(format="rtk", rank=(3, 4, 2), num_modes=3)),
    ("embed", "ttm"): (E, (50, 12), dict(format="ttm", rank=(4, 3), num_modes=3)),  # padded
    ("embed", "cp"): (E, (60, 8), dict(format="cp", rank=5, num_modes=2)),
    ("embed", "tt"): (E, (60, 8), dict(format="tt", rank=3, num_modes=2)),
    ("embed", "tucker"): (E, (60, 8), dict(format="tucker", rank=3, num_modes=2)),
    ("conv", "tt"): (C, (4, 6, 3), dict(format="tt", rank=(3, 4, 3))),
    ("conv", "rtt"): (C, (4, 6, 3), dict(format="rtt", rank=(3, 2), num_modes=2)),
    ("conv", "cp"): (C, (4, 6, 3), dict(strides=2, format="cp", rank=5)),
    ("conv", "rcp"): (C, (4, 6, 3), dict(format="rcp", rank=5, num_modes=2)),
    ("conv", "tucker"): (C, (4, 6, 3), dict(padding="VALID", format="tucker", rank=(4, 3))),
    ("conv", "rtk"): (C, (4, 6, 3), dict(format="rtk", rank=(3, 2, 2), num_modes=2)),
}


def build(kind, fmt):
    cls, args, kwargs = CASES[(kind, fmt)]
    return make(cls, *args, **kwargs)


def _inputs(kind, layer):
    key = jax.random.key(1)
    if kind == "linear":
        return jax.random.normal(key, (3, layer.in_features))
    if kind == "embed":
        return jnp.arange(layer.num_embeddings)
    return jax.random.normal(key, (2, 5, 5, layer.in_features))


@pytest.mark.parametrize("kind,fmt", list(CASES))
def test_prune_layer_is_exact_when_removed_slices_are_zero(kind, fmt):
    layer = build(kind, fmt)
    layer.tnjax_name = "layer"
    if getattr(layer, "bias", None) is not None:
        layer.bias[...] = jnp.linspace(-1.0, 1.0, layer.bias.shape[0])
    groups = bayes.rank_groups(layer)
    rng = np.random.default_rng(0)
    keep = []
    for g in groups:  # drop about half of each group, keeping at least one index
        m = rng.random(g.size) < 0.5
        m[rng.integers(g.size)] = True
        if g.size > 1 and m.all():
            m[rng.integers(g.size)] = False
        keep.append(m)
    # zero the removed slices of the governed axes (Tucker cores keep theirs: they are
    # multiplied by a zero factor column)
    for g, m in zip(groups, keep, strict=True):
        for ci, axis in g.slices:
            c = np.moveaxis(np.array(layer.cores[ci][...]), axis, 0)
            c[~m] = 0.0
            layer.cores[ci][...] = jnp.asarray(np.moveaxis(c, 0, axis))
    before_shapes = [c.shape for c in layer.cores]
    x = _inputs(kind, layer)
    want = forward(layer, x)
    pruned = bayes.prune_layer(layer, keep)
    assert type(pruned) is type(layer) and pruned.format == fmt
    assert [c.shape for c in layer.cores] == before_shapes  # the original is untouched
    expected_ranks = list(layer.ranks)
    for g, m in zip(groups, keep, strict=True):
        expected_ranks[g.bond] = int(m.sum())
    assert pruned.ranks == tuple(expected_ranks)
    assert pruned.num_params < layer.num_params
    assert pruned.tnjax_name == "layer"
    for g in bayes.rank_groups(pruned):  # the new cores are consistent with the new ranks
        for ci, axis in g.axes:
            assert pruned.cores[ci].shape[axis] == g.size
    got = forward(pruned, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if getattr(layer, "bias", None) is not None:
        np.testing.assert_array_equal(pruned.bias[...], layer.bias[...])


def test_read_ranks_relative_threshold_keeps_one_per_group():
    lams = [jnp.array([1.0, 0.5, 1e-3]), jnp.array([1e-4, 2e-4]), jnp.array([3e-2])]
    got = bayes.read_ranks(lams, threshold=1e-2)
    np.testing.assert_array_equal(got[0], [True, True, False])
    np.testing.assert_array_equal(got[1], [False, True])  # all below: the largest survives
    np.testing.assert_array_equal(got[2], [True])
    # scale-free: the same read-out at any overall scale
    scaled = bayes.read_ranks([1e-6 * lam for lam in lams], threshold=1e-2)
    for a, b in zip(got, scaled, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="NaN"):
        bayes.read_ranks([jnp.array([1.0, jnp.nan])])
    with pytest.raises(ValueError, match="threshold"):
        bayes.read_ranks(lams, threshold=1.5)


def test_prune_layer_validates_masks():
    layer = build("linear", "ttm")
    with pytest.raises(ValueError, match="2 rank groups"):
        bayes.prune_layer(layer, [np.ones(4, bool)])
    with pytest.raises(ValueError, match="keeps no index"):
        bayes.prune_layer(layer, [np.zeros(4, bool), np.ones(3, bool)])
    with pytest.raises(ValueError, match="shape"):
        bayes.prune_layer(layer, [np.ones(5, bool), np.ones(3, bool)])


def test_prune_model_mlp():
    model = models.create_model(
        "mlp",
        rngs=nnx.Rngs(0),
        layers={"default": {"format": "ttm", "rank": 8}},
        features=(64, 32, 10),
    )
    prior = bayes.RankPrior("half_cauchy")
    lambdas = bayes.init_lambdas(model, prior)
    assert list(lambdas) == ["fc1"]  # fc2 is dense by default
    fc1 = model.layers[0]
    ranks = fc1.ranks
    # plant: bond 0 keeps 3 slices, bond 1 keeps 2 (zeroed cores, then EM drives lambda to ~0)
    keep = []
    for g in bayes.rank_groups(fc1):
        m = np.zeros(g.size, bool)
        m[: 3 if g.bond == 0 else 2] = True
        keep.append(m)
        for ci, axis in g.slices:
            c = np.moveaxis(np.array(fc1.cores[ci][...]), axis, 0)
            c[~m] = 0.0
            fc1.cores[ci][...] = jnp.asarray(np.moveaxis(c, 0, axis))
    lambdas = bayes.em_update(model, lambdas, prior)
    x = jax.random.normal(jax.random.key(0), (4, 64))
    want = forward(model, x)
    pruned, report, new_lambdas = bayes.prune_model(model, lambdas, threshold=1e-2)
    assert set(report) == {"fc1"}
    row = report["fc1"]
    assert row["format"] == "ttm"
    assert row["ranks_before"] == ranks and row["ranks_after"] == (3, 2)
    assert row["params_before"] == fc1.num_params
    assert row["params_after"] == pruned.layers[0].num_params < row["params_before"]
    assert pruned.layers[0].ranks == (3, 2) and pruned.layers[0].tnjax_name == "fc1"
    assert [lam.shape for lam in new_lambdas["fc1"]] == [(3,), (2,)]
    # the original is untouched, the pruned model computes the same function
    assert model.layers[0].ranks == ranks and model.layers[0] is fc1
    np.testing.assert_allclose(forward(model, x), want)
    np.testing.assert_allclose(forward(pruned, x), want, rtol=1e-5, atol=1e-6)
    # training can go on with the pruned lambdas
    more = bayes.em_update(pruned, new_lambdas, prior)
    assert [lam.shape for lam in more["fc1"]] == [(3,), (2,)]
    with pytest.raises(ValueError, match="does not have"):
        bayes.prune_model(model, {"fc9": lambdas["fc1"]})
