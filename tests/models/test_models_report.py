"""layer_report / model_report: counts match the parameter leaves; the model is untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_test_helpers import rbg_rngs as _rngs

import tnjax.nn as tnn
from tnjax.models import LayerFactory, LeNet5, count_params, layer_report, model_report
from tnjax.models.report import LAYER_KINDS


def _kernel_leaves(module):
    """Entries of a layer's kernel/table/cores (its bias excluded)."""
    if isinstance(module, (tnn.Linear, tnn.Conv, tnn.Embed)):
        return sum(c.size for c in jax.tree.leaves(nnx.state(module, tnn.Core)))
    var = module.embedding if isinstance(module, nnx.Embed) else module.kernel
    return var[...].size


def test_layer_params_equal_the_parameter_leaves():
    factory = LayerFactory({"format": "tucker", "rank": 3}, {"fc2": {"format": "ttm"}})
    model = LeNet5(factory=factory, rngs=_rngs())
    rows = layer_report(model, jnp.zeros((3, 28, 28, 1)))
    by_name = {getattr(m, "tnjax_name", None): m for _, m in nnx.iter_graph(model)}
    assert [r["format"] for r in rows] == ["dense", "tucker", "tucker", "ttm", "dense"]
    for row in rows:
        module = by_name[row["name"]]
        assert row["params"] == _kernel_leaves(module)
        assert row["ranks"] == (None if row["format"] == "dense" else module.ranks)
        if row["format"] != "dense":
            cost = module.cost(row["input_shape"])
            assert (row["flops"], row["dense_flops"]) == (cost["flops"], cost["dense_flops"])
    rep = model_report(model, jnp.zeros((3, 28, 28, 1)))
    biases_and_bn = (6 + 16) * 2 + 120 + 84 + 10  # BN scale/offset of both convs, fc biases
    assert rep["params"] == count_params(model) == sum(r["params"] for r in rows) + biases_and_bn


def test_report_leaves_model_and_classes_untouched():
    model = LeNet5(rngs=_rngs())
    before = jax.tree.map(np.asarray, nnx.state(model))
    calls = {cls: cls.__dict__["__call__"] for cls in LAYER_KINDS}
    model_report(model, jnp.ones((2, 28, 28, 1)))  # train mode: BN would update its stats
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(model))
    with pytest.raises(ValueError, match="expects images"):
        layer_report(model, jnp.ones((2, 32, 32, 1)))
    assert {cls: cls.__dict__["__call__"] for cls in LAYER_KINDS} == calls


class _Shared(nnx.Module):
    """A layer called twice, one never called, and layers built without a factory."""

    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)
        self.unused = tnn.Linear(4, 6, format="tt", rank=2, rngs=rngs)
        self.emb = nnx.Embed(10, 4, rngs=rngs)

    def __call__(self, x, idx):
        return self.fc(self.fc(x)) + self.emb(idx)


def test_report_of_shared_unused_and_unnamed_layers():
    model = _Shared(_rngs())
    x = jax.ShapeDtypeStruct((5, 4), jnp.float32)
    idx = jax.ShapeDtypeStruct((5,), jnp.int32)
    rep = model_report(model, x, idx)
    rows = {r["name"]: r for r in rep["layers"]}
    assert [r["name"] for r in rep["layers"]] == ["fc", "emb", "unused"]
    assert rows["fc"]["calls"] == 2 and rows["fc"]["flops"] == 2 * (2 * 5 * 4 * 4)
    assert rows["emb"]["kind"] == "embed" and rows["emb"]["flops"] == 0
    assert rows["unused"]["calls"] == 0 and rows["unused"]["flops"] == 0
    assert rep["dense_equivalent_params"] == rep["params"] - rows["unused"]["params"] + 24
    assert rep["flops_ratio"] == 1.0
