"""CIFAR ResNets and ResNet-50: parameter counts in closed form, names, forward and grad."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from model_test_helpers import assert_finite_nonzero as _assert_finite_nonzero
from model_test_helpers import random_inputs
from model_test_helpers import rbg_rngs as _rngs
from model_test_helpers import step_and_grads as _step

import tnjax.nn as tnn
from tnjax.models import LayerFactory, ResNet50, ResNetCifar, count_params, create_model


def _abstract(build):
    """The model with ShapeDtypeStructs instead of arrays: counts without initialising."""
    return nnx.eval_shape(build)


def _cifar_params(n, shortcut, width=16, classes=10, channels=3):
    """Closed form: 3x3 convs without bias, BN (scale + offset) after each, fc with bias."""
    w = (width, 2 * width, 4 * width)
    total = 9 * channels * w[0] + 2 * w[0]  # conv1 + bn1
    for s in range(3):
        c_in = w[s - 1] if s else w[0]
        total += 9 * c_in * w[s] + 9 * w[s] * w[s] + 4 * w[s]  # first block of the stage
        total += (n - 1) * (2 * 9 * w[s] * w[s] + 4 * w[s])
        if shortcut == "B" and s:
            total += c_in * w[s] + 2 * w[s]  # 1x1 projection + BN
    return total + w[2] * classes + classes


def test_resnet_cifar_param_counts():
    assert _cifar_params(3, "A") == 269_722 and _cifar_params(3, "B") == 272_474
    for name, n in (("resnet20", 3), ("resnet32", 5), ("resnet56", 9)):
        for shortcut in ("A", "B"):
            model = _abstract(lambda: create_model(name, rngs=nnx.Rngs(0), shortcut=shortcut))  # noqa: B023
            assert count_params(model) == _cifar_params(n, shortcut), (name, shortcut)
    wide = _abstract(lambda: ResNetCifar(8, 100, width=8, rngs=nnx.Rngs(0)))
    assert count_params(wide) == _cifar_params(1, "A", width=8, classes=100)


def test_resnet50_param_count_matches_torchvision():
    def block(c_in, w, project):
        params = c_in * w + 9 * w * w + w * 4 * w + 2 * (w + w + 4 * w)
        return params + (c_in * 4 * w + 2 * 4 * w if project else 0)

    total = 49 * 3 * 64 + 2 * 64
    c_in = 64
    for s, size in enumerate((3, 4, 6, 3)):
        w = 64 * 2**s
        for b in range(size):
            total += block(c_in, w, b == 0)
            c_in = 4 * w
    total += 2048 * 1000 + 1000
    assert total == 25_557_032
    model = _abstract(lambda: ResNet50(rngs=nnx.Rngs(0)))
    assert count_params(model) == total
    y = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    assert y.shape == (1, 1000)


def test_resnet_cifar_invalid_arguments():
    for depth in (21, 2, 0, 18.0):
        with pytest.raises(ValueError, match="6n \\+ 2"):
            ResNetCifar(depth, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        ResNetCifar(20, shortcut="C", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\['stage4\.\*'\] matched no layer"):
        _abstract(
            lambda: create_model(
                "resnet20", rngs=nnx.Rngs(0), layers={"overrides": {"stage4.*": {}}}
            )
        )


def test_resnet_cifar_layer_names():
    factory = LayerFactory({"format": "tt", "rank": 2})
    _abstract(lambda: ResNetCifar(14, shortcut="B", factory=factory, rngs=nnx.Rngs(0)))
    blocks = [
        f"stage{s}.block{b}.{c}"
        for s in (1, 2, 3)
        for b in (1, 2)
        for c in ("conv1", "conv2") + (("shortcut",) if s > 1 and b == 1 else ())
    ]
    assert list(factory.specs_used) == ["conv1", *blocks, "fc"]
    assert factory.specs_used["conv1"]["format"] == factory.specs_used["fc"]["format"] == "dense"


def test_resnet_cifar_mixed_forward_grad_and_modes():
    # one model (one compilation) with dense, RCP and TT convs, projection shortcuts
    factory = LayerFactory(
        {"format": "rcp", "rank": 4},
        {"stage1.*": {"format": "dense"}, "stage3.*": {"format": "tt"}},
    )
    model = ResNetCifar(8, shortcut="B", factory=factory, rngs=_rngs())
    stage1, stage2, stage3 = model.blocks
    assert type(model.conv1) is nnx.Conv and type(model.fc) is nnx.Linear
    assert type(stage1.conv1) is nnx.Conv and stage1.shortcut is None
    assert isinstance(stage2.shortcut, tnn.Conv) and stage2.shortcut.format == "rcp"
    assert stage3.conv1.format == stage3.shortcut.format == "tt"
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    y, grads = _step(model, x)
    assert y.shape == (2, 10)
    _assert_finite_nonzero(grads)
    assert len(jax.tree.leaves(nnx.state(grads, tnn.Core))) == len(
        jax.tree.leaves(nnx.state(model, tnn.Core))
    )
    bns = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    assert len(bns) == 1 + 3 * 2 + 2 and not any(bn.use_running_average for bn in bns)
    model.eval()
    assert all(bn.use_running_average for bn in bns)


def test_resnet_dense_output_shapes():
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    for name, classes in (("resnet20", 10), ("resnet50", 1000)):
        model = _abstract(lambda: create_model(name, rngs=nnx.Rngs(0)))  # noqa: B023
        assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (2, classes)


def test_resnet50_mixed_forward_and_grad_small():
    factory = LayerFactory({"format": "tt", "rank": 4}, {"stage1.*": {"format": "dense"}})
    model = ResNet50(10, stage_sizes=(1, 1, 1, 1), factory=factory, rngs=_rngs())
    assert type(model.stem) is nnx.Conv and type(model.fc) is nnx.Linear
    assert type(model.blocks[0].shortcut) is nnx.Conv  # stage 1: 64 -> 256 channels
    assert isinstance(model.blocks[1].shortcut, tnn.Conv)
    assert isinstance(model.blocks[1].conv2, tnn.Conv) and model.blocks[1].conv2.strides == (2, 2)
    y, grads = _step(model, random_inputs((2, 32, 32, 3)))
    assert y.shape == (2, 10)
    _assert_finite_nonzero(grads)
