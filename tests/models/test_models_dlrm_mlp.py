"""DLRM (dot interaction, tensorized tables) and MLP: shapes, names, forward and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_test_helpers import random_inputs
from model_test_helpers import rbg_rngs as _rngs
from model_test_helpers import step_and_grads as _step

import tnjax.nn as tnn
from tnjax.models import DLRM, MLP, LayerFactory, create_model, model_report

VOCABS = (100, 1000, 37)  # 37: prime, so the tensorized table pads its vocabulary


def _inputs(batch=4):
    k1, k2 = jax.random.split(jax.random.key(1))
    dense = jax.random.normal(k1, (batch, 13))
    sparse = jax.random.randint(k2, (batch, len(VOCABS)), 0, jnp.array(VOCABS))
    return dense, sparse


def test_dlrm_dense_matches_hand_written_interaction():
    model = DLRM(13, VOCABS, rngs=_rngs())

    def by_hand(model, dense, sparse):
        z0 = jax.nn.relu(model.bottom[1](jax.nn.relu(model.bottom[0](dense))))
        z = [z0] + [model.embeddings[t](sparse[:, t]) for t in range(3)]
        pairs = [jnp.sum(z[i] * z[j], -1) for i in range(4) for j in range(i + 1, 4)]
        h = jnp.concatenate([z0, jnp.stack(pairs, -1)], -1)  # (B, 16 + 6)
        h = jax.nn.relu(model.top[1](jax.nn.relu(model.top[0](h))))
        return model.top[2](h)[:, 0]

    got, expected = nnx.jit(lambda m, d, s: (m(d, s), by_hand(m, d, s)))(model, *_inputs())
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_dlrm_tensorized_names_forward_and_grad():
    factory = LayerFactory({"format": "tt", "rank": 4, "embed_format": "ttm", "embed_rank": 8})
    model = DLRM(13, VOCABS, factory=factory, rngs=_rngs())
    names = ["bottom.fc1", "bottom.fc2", "emb0", "emb1", "emb2", "top.fc1", "top.fc2", "top.fc3"]
    assert list(factory.specs_used) == names
    assert all(isinstance(e, tnn.Embed) and e.format == "ttm" for e in model.embeddings)
    assert isinstance(model.bottom[0], tnn.Linear) and isinstance(model.top[1], tnn.Linear)
    assert type(model.top[2]) is nnx.Linear  # the logit layer is dense by default
    y, grads = _step(model, *_inputs())
    assert y.shape == (4,)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    for t in range(3):  # every table gets a gradient
        assert float(sum(jnp.abs(c).sum() for c in grads["embeddings"][t]["cores"].values())) > 0
    rep = model_report(model, *_inputs())
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["emb1"]["dense_params"] == 1000 * 16 and rows["emb1"]["dense_flops"] == 0
    assert rows["emb1"]["input_shape"] == (4,) and rows["top.fc1"]["input_shape"] == (4, 22)


def test_dlrm_tables_only_and_argument_errors():
    model = create_model(
        "dlrm",
        rngs=_rngs(),
        layers={"overrides": {"emb*": {"format": "tt", "rank": 3}}},
        num_dense=13,
        vocab_sizes=VOCABS,
    )
    assert all(type(m) is nnx.Linear for m in (*model.bottom, *model.top))
    assert all(e.format == "tt" for e in model.embeddings)
    with pytest.raises(ValueError, match="end in embed_dim=16"):
        DLRM(13, VOCABS, bottom=(64, 8), rngs=_rngs())
    with pytest.raises(ValueError, match="end in 1 feature"):
        DLRM(13, VOCABS, top=(8, 2), rngs=_rngs())
    with pytest.raises(ValueError, match=r"sparse \(B, T\) = \(4, 3\)"):
        model(*_inputs()[:1], jnp.zeros((4, 2), jnp.int32))


def test_mlp_784_512_10():
    model = MLP(factory=LayerFactory({"format": "ttm", "rank": 4}), rngs=_rngs())
    fc1, fc2 = model.layers
    assert isinstance(fc1, tnn.Linear) and fc1.format == "ttm" and fc1.dense_params == 784 * 512
    assert type(fc2) is nnx.Linear
    y, grads = _step(model, random_inputs((2, 28, 28, 1)))
    assert y.shape == (2, 10)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    dense = nnx.eval_shape(lambda: MLP(rngs=nnx.Rngs(0)))
    assert model_report(dense, jnp.zeros((2, 784)))["params"] == 784 * 512 + 512 + 5130
    with pytest.raises(ValueError, match="784 features per example"):
        model(jnp.ones((2, 32, 32)))
    with pytest.raises(ValueError, match="at least two"):
        MLP((10,), rngs=_rngs())
