"""tnjax.compress: decomposition of a trained model to a budget, and block-wise distillation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tnjax.nn as tnn
from tnjax import compress as tnc
from tnjax.models import create_model
from tnjax.nn.linear import linear_layout

X28 = jnp.zeros((1, 28, 28, 1))


@pytest.fixture(scope="module")
def lenet():
    model = create_model("lenet5", rngs=nnx.Rngs(0))
    # non-trivial batch-norm statistics, to check they are carried over
    model.bn1.mean[...] = jnp.arange(6, dtype=jnp.float32) / 10
    model.eval()
    return model


def _images(n=8, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 28, 28, 1))


@pytest.mark.parametrize("fmt", ["cp", "tk", "tt", "tr", "rcp", "rtk", "rtt", "rtr"])
def test_compress_lenet5_to_ten_percent(lenet, fmt):
    compressed, rows = tnc.compress_model(lenet, X28, format=fmt, rate=0.1)
    assert [r["name"] for r in rows] == ["conv2", "fc1", "fc2"]
    assert isinstance(compressed.conv1, nnx.Conv) and isinstance(compressed.fc3, nnx.Linear)
    assert isinstance(compressed.conv2, tnn.Conv) and isinstance(compressed.fc1, tnn.Linear)
    assert isinstance(lenet.conv2, nnx.Conv)  # the original is left alone
    canonical = tnc.FORMAT_ALIASES.get(fmt, fmt)
    assert compressed.conv2.format == canonical
    for r in rows:  # the fraction is measured from the layer's parameters
        layer = getattr(compressed, r["name"])
        assert r["params"] == sum(int(np.prod(c.shape)) for c in layer.cores)
        assert r["fraction"] == pytest.approx(r["params"] / r["dense_params"])
    total = sum(r["params"] for r in rows) / sum(r["dense_params"] for r in rows)
    assert abs(total / 0.1 - 1) <= 0.1, (fmt, total, rows)
    np.testing.assert_array_equal(compressed.bn1.mean[...], lenet.bn1.mean[...])
    np.testing.assert_array_equal(compressed.conv1.kernel[...], lenet.conv1.kernel[...])
    np.testing.assert_array_equal(compressed.fc1.bias[...], lenet.fc1.bias[...])
    assert np.all(np.isfinite(compressed(_images())))


@pytest.mark.parametrize("fmt, conv_rank", [("tk", (16, 6)), ("rtk", (25, 12, 4, 2))])
def test_full_rank_decomposition_reproduces_the_network(lenet, fmt, conv_rank):
    full = {
        n: linear_layout(i, o, format=tnc.FORMAT_ALIASES.get(fmt, fmt), rank=1).max_ranks
        for n, i, o in (("fc1", 400, 120), ("fc2", 120, 84))
    }
    rank = {"conv2": conv_rank, **full}
    compressed, rows = tnc.compress_model(lenet, X28, format=fmt, rank=rank)
    x = _images()
    np.testing.assert_allclose(compressed(x), lenet(x), rtol=1e-3, atol=1e-3)


def test_layer_selection_and_errors(lenet):
    _, rows = tnc.compress_model(lenet, X28, format="tt", rate=0.2, layers=["fc*"])
    assert [r["name"] for r in rows] == ["fc1", "fc2", "fc3"]
    _, rows = tnc.compress_model(lenet, X28, format={"conv*": "rcp", "fc*": "ttm"}, rate=0.2)
    assert [r["format"] for r in rows] == ["rcp", "ttm", "ttm"]
    with pytest.raises(ValueError, match="match no convertible dense layer"):
        tnc.compress_model(lenet, X28, format="tt", rate=0.2, layers=["fc9"])
    with pytest.raises(ValueError, match="unknown format"):
        tnc.compress_model(lenet, X28, format="xyz", rate=0.2)
    with pytest.raises(ValueError, match="exactly one of"):
        tnc.compress_model(lenet, X28, format="tt")
    with pytest.raises(ValueError, match="conv"):
        tnc.compress_model(lenet, X28, format="ttm", rate=0.2)


def test_resnet_stages_are_the_distillation_blocks():
    model = create_model("resnet20", rngs=nnx.Rngs(0))
    x = jnp.zeros((1, 32, 32, 3))
    compressed, rows = tnc.compress_model(model, x, format="rcp", rate=0.2)
    names = [r["name"] for r in rows]
    assert "conv1" not in names and "fc" not in names and len(names) == 18
    blocks = tnc.distillation_blocks(compressed, names)
    assert [b.name for b in blocks] == ["stage1", "stage2", "stage3"]
    assert blocks[1].train_paths == (("blocks", 3), ("blocks", 4), ("blocks", 5))
    assert blocks[1].output_path == ("blocks", 5)


def test_capture_outputs_under_jit_and_restores_classes(lenet):
    call = type(lenet.conv2).__call__
    x = _images(4)

    @jax.jit
    def run(x):
        return tnc.capture_outputs(lenet, [("conv2",), ("fc1",)], x)

    out, captured = run(x)
    np.testing.assert_allclose(out, lenet(x), rtol=1e-5, atol=1e-5)
    assert captured[("conv2",)].shape == (4, 10, 10, 16)
    assert captured[("fc1",)].shape == (4, 120)
    assert type(lenet.conv2).__call__ is call


def test_block_mse_is_zero_on_the_teacher_and_trains_only_the_block(lenet):
    compressed, rows = tnc.compress_model(lenet, X28, format="rcp", rate=0.1)
    compressed.eval()
    blocks = tnc.distillation_blocks(compressed, [r["name"] for r in rows])
    assert [b.name for b in blocks] == ["conv2", "fc1", "fc2"]
    x = _images(16)
    assert float(tnc.block_mse(lenet, lenet, blocks[1], x)) == 0.0

    block = blocks[1]  # fc1
    graph, params, other = nnx.split(compressed, tnc.block_param_filter(block), ...)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    assert leaves and all("fc1" in jax.tree_util.keystr(p) for p, _ in leaves)

    def loss(params):
        return tnc.block_mse(nnx.merge(graph, params, other, copy=True), lenet, block, x)

    tx = optax.adam(3e-3)
    opt = tx.init(params)
    first = float(loss(params))
    step = jax.jit(lambda p, o: (lambda g: tx.update(g, o, p))(jax.grad(loss)(p)))
    for _ in range(30):
        updates, opt = step(params, opt)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.7 * first
    # the other layers did not move
    after = nnx.merge(graph, params, other)
    np.testing.assert_array_equal(after.fc2.cores[0][...], compressed.fc2.cores[0][...])
