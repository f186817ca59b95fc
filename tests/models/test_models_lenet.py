"""LeNet5: dense-by-default layers, forward and grad under nnx.jit, BatchNorm modes, report."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_test_helpers import assert_finite_nonzero as _assert_finite_nonzero
from model_test_helpers import random_inputs
from model_test_helpers import rbg_rngs as _rngs
from model_test_helpers import step_and_grads as _step

import tnjax.nn as tnn
from tnjax.models import LayerFactory, LeNet5, create_model, model_report


@pytest.mark.parametrize("default", [None, {"format": "ttm", "rank": 4, "conv_format": "rcp"}])
def test_lenet5_forward_and_grad(default):
    model = LeNet5(factory=LayerFactory(default), rngs=_rngs())
    y, grads = _step(model, random_inputs((2, 28, 28, 1)))
    assert y.shape == (2, 10)
    _assert_finite_nonzero(grads)
    if default is not None:
        cores = jax.tree.leaves(nnx.state(grads, tnn.Core))
        assert len(cores) == sum(len(m.cores) for m in (model.conv2, model.fc1, model.fc2))


def test_lenet5_dense_by_default_layers_and_overrides():
    model = LeNet5(factory=LayerFactory({"format": "tt", "rank": 4}), rngs=_rngs())
    assert type(model.conv1) is nnx.Conv and type(model.fc3) is nnx.Linear
    assert isinstance(model.conv2, tnn.Conv)
    assert isinstance(model.fc1, tnn.Linear) and isinstance(model.fc2, tnn.Linear)
    factory = LayerFactory(
        {"format": "tt", "rank": 4},
        {"conv*": {"format": "rcp", "rank": 3}, "fc2": {"format": "dense"}},
    )
    model = LeNet5(factory=factory, rngs=_rngs())
    assert isinstance(model.conv1, tnn.Conv) and model.conv1.format == "rcp"
    assert model.conv2.format == "rcp" and model.conv2.ranks == (3,)
    assert type(model.fc2) is nnx.Linear
    assert list(factory.specs_used) == ["conv1", "conv2", "fc1", "fc2", "fc3"]


def test_lenet5_config_errors():
    with pytest.raises(ValueError, match=r"\['conv3'\] matched no layer.*conv1, conv2, fc1"):
        create_model("lenet5", rngs=_rngs(), layers={"overrides": {"conv3": {}}})
    with pytest.raises(ValueError, match="'conv2' is a conv and has no format 'ttm'"):
        LeNet5(factory=LayerFactory({"format": "ttm", "rank": 2}), rngs=_rngs())
    with pytest.raises(ValueError, match=r"expects images \(B, 28, 28, 1\)"):
        LeNet5(rngs=_rngs())(jnp.ones((1, 32, 32, 1)))


def test_lenet5_32x32_without_batch_norm():
    model = nnx.eval_shape(
        lambda: LeNet5(in_channels=3, input_size=32, batch_norm=False, rngs=_rngs())
    )
    assert model.fc1.in_features == 6 * 6 * 16 and model.bn1 is None
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (1, 10)


def test_lenet5_dense_flops_closed_form():
    b = 2
    model = LeNet5(factory=LayerFactory({"format": "tt", "rank": 4}), rngs=_rngs())
    rep = model_report(model, jnp.zeros((b, 28, 28, 1)))
    conv1 = 2 * b * 28 * 28 * (5 * 5 * 1 * 6)  # SAME: 28x28 outputs
    conv2 = 2 * b * 10 * 10 * (5 * 5 * 6 * 16)  # VALID on 14x14: 10x10 outputs
    fcs = 2 * b * (400 * 120 + 120 * 84 + 84 * 10)
    dense = {"conv1": conv1, "conv2": conv2, "fc1": 2 * b * 400 * 120}
    assert rep["dense_flops"] == conv1 + conv2 + fcs == 1_666_080
    rows = {r["name"]: r for r in rep["layers"]}
    assert [r["name"] for r in rep["layers"]] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    for name, flops in dense.items():
        assert rows[name]["dense_flops"] == flops
    assert rows["conv1"]["flops"] == conv1  # dense layer: flops == dense flops
    assert 0 < rows["conv2"]["flops"] < conv2
    assert 0 < rows["fc1"]["flops"] < rows["fc1"]["dense_flops"]
    assert rep["flops"] == sum(r["flops"] for r in rep["layers"]) < rep["dense_flops"]


def test_lenet5_compression_about_one_tenth_over_compressed_layers():
    factory = LayerFactory({"format": "tt", "compression": 0.1})
    model = LeNet5(factory=factory, rngs=_rngs())
    rep = model_report(model, jnp.zeros((1, 28, 28, 1)))
    compressed = [r for r in rep["layers"] if r["format"] != "dense"]
    assert [r["name"] for r in compressed] == ["conv2", "fc1", "fc2"]
    ratio = sum(r["params"] for r in compressed) / sum(r["dense_params"] for r in compressed)
    assert ratio == pytest.approx(0.1, rel=0.1)
    dense = LeNet5(rngs=_rngs())
    dense_rep = model_report(dense, jnp.zeros((1, 28, 28, 1)))
    # the dense equivalent is exactly the all-dense model (same biases and BatchNorms)
    assert rep["dense_equivalent_params"] == dense_rep["params"]
    assert rep["params"] - rep["dense_equivalent_params"] == sum(
        r["params"] - r["dense_params"] for r in compressed
    )
    assert rep["compression"] == pytest.approx(rep["params"] / rep["dense_equivalent_params"])


def test_lenet5_batch_norm_train_and_eval_modes():
    model = LeNet5(rngs=_rngs())
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1)) * 3 + 1
    forward = nnx.jit(lambda m, x: m(x))
    assert model.bn1.use_running_average is False  # models start in training mode
    stats0 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    y_train = forward(model, x)
    stats1 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    assert not np.allclose(stats0["bn1"]["mean"][...], stats1["bn1"]["mean"][...])

    model.eval()
    assert model.bn1.use_running_average and model.bn2.use_running_average
    y_eval = forward(model, x)
    stats2 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, stats1, stats2)  # eval leaves stats alone
    assert not np.allclose(y_train, y_eval)

    model.train()
    view = nnx.view(model, use_running_average=True)  # an eval view sharing the arrays
    np.testing.assert_allclose(forward(view, x), y_eval, rtol=1e-5, atol=1e-5)
    assert model.bn1.use_running_average is False


def test_lenet5_param_count():
    model = LeNet5(batch_norm=False, rngs=_rngs())
    expected = (25 * 6 + 6) + (25 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + 850
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(math.prod(x.shape) for x in leaves) == expected == 61_706
