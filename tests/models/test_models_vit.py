"""ViT: named factory layers, forward and grad under nnx.jit, the attention against a
reference, block-wise distillation units, compression and rank priors on its projections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_test_helpers import assert_finite_nonzero, random_inputs, step_and_grads
from model_test_helpers import rbg_rngs as _rngs

import tnjax.nn as tnn
from tnjax import bayes
from tnjax.compress import block_mse, compress_model, distillation_blocks
from tnjax.formats.weights import linear_layout
from tnjax.models import LayerFactory, ViT, create_model, model_report

SMALL = dict(image_size=8, patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)
PROJECTIONS = ("attn.query", "attn.key", "attn.value", "attn.out", "mlp.fc1", "mlp.fc2")


@pytest.mark.parametrize("default", [None, {"format": "ttm", "rank": 3}])
def test_vit_forward_and_grad(default):
    model = ViT(5, factory=LayerFactory(default), rngs=_rngs(), **SMALL)
    y, grads = step_and_grads(model, random_inputs((3, 8, 8, 1)))
    assert y.shape == (3, 5)
    assert_finite_nonzero(grads)
    if default is not None:
        cores = jax.tree.leaves(nnx.state(grads, tnn.Core))
        layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, tnn.Linear)]
        assert len(layers) == 2 * len(PROJECTIONS)
        assert len(cores) == sum(len(m.cores) for m in layers)


def test_the_default_spec_tensorizes_exactly_the_attention_and_mlp_weights():
    factory = LayerFactory({"format": "ttm", "rank": 2}, {"block2.mlp.*": {"format": "tucker"}})
    model = ViT(10, factory=factory, rngs=_rngs(), **SMALL)
    expected = {f"block{b}.{p}" for b in (1, 2) for p in PROJECTIONS}
    tensorized = {n for n, s in factory.specs_used.items() if s["format"] != "dense"}
    assert tensorized == expected
    assert factory.specs_used["patch_embed"]["format"] == "dense"
    assert factory.specs_used["head"]["format"] == "dense"
    assert type(model.patch_embed) is nnx.Conv and type(model.head) is nnx.Linear
    assert model.blocks[1].fc1.format == "tucker" and model.blocks[0].fc1.format == "ttm"
    report = model_report(model, jnp.zeros((1, 8, 8, 1)))
    assert report["params"] < report["dense_equivalent_params"]


def test_self_attention_matches_a_reference_implementation():
    """The four projections as plain matrices and softmax(q k^T / sqrt(d)) v per head."""
    model = ViT(4, rngs=_rngs(), **SMALL)
    attn = model.blocks[0].attn
    x = random_inputs((2, 5, 16), seed=1)
    names = ("query", "key", "value", "out")
    w = {n: (getattr(attn, n).kernel[...], getattr(attn, n).bias[...]) for n in names}

    def proj(name, v):
        kernel, bias = w[name]
        return v @ kernel + bias

    q, k, v = (proj(n, x).reshape(2, 5, 2, 8) for n in ("query", "key", "value"))
    out = np.zeros((2, 5, 2, 8), np.float32)
    for b in range(2):
        for h in range(2):
            scores = np.asarray(q[b, :, h] @ k[b, :, h].T) / np.sqrt(8)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[b, :, h] = p @ np.asarray(v[b, :, h])
    want = proj("out", jnp.asarray(out.reshape(2, 5, 16)))
    np.testing.assert_allclose(attn(x), want, rtol=1e-4, atol=1e-5)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViT(10, image_size=30, patch_size=4, rngs=_rngs())
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ViT(10, width=30, num_heads=4, rngs=_rngs())
    model = ViT(10, rngs=_rngs(), **SMALL)
    with pytest.raises(ValueError, match=r"ViT expects images \(B, 8, 8, 1\)"):
        model(jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(TypeError, match="does not take"):
        create_model("vit", rngs=_rngs(), image_sizes=8)


def test_compression_distills_one_transformer_block_at_a_time():
    """compress_model converts the 12 projections; each transformer block is one
    distillation unit (its six layers trained together, its output matched); at full rank
    the block MSE against the teacher is ~0."""
    teacher = create_model("vit", rngs=_rngs(), num_classes=10, **SMALL)
    x = random_inputs((2, 8, 8, 1), seed=2)
    student, rows = compress_model(teacher, x, format="ttm", rate=0.5)
    assert len(rows) == 12 and all(abs(r["fraction"] / 0.5 - 1) <= 0.1 for r in rows)
    blocks = distillation_blocks(student, [r["name"] for r in rows])
    assert [b.name for b in blocks] == ["block1", "block2"]
    assert [b.output_path for b in blocks] == [("blocks", 0), ("blocks", 1)]
    assert all(len(b.layers) == 6 for b in blocks)
    shapes = {"fc1": (16, 32), "fc2": (32, 16)}  # the attention projections are 16 x 16
    full = {
        r["name"]: linear_layout(
            *shapes.get(r["name"].split(".")[-1], (16, 16)), format="ttm", rank=1
        ).max_ranks
        for r in rows
    }
    exact, _ = compress_model(teacher, x, format="ttm", rank=full)
    exact_blocks = distillation_blocks(exact, list(full))
    assert float(block_mse(exact, teacher, exact_blocks[1], x)) < 1e-8
    assert float(block_mse(student, teacher, blocks[1], x)) > 1e-8


def test_rank_priors_reach_every_tensorized_projection():
    model = create_model(
        "vit", rngs=_rngs(), layers={"default": {"format": "ttm", "rank": 4}}, **SMALL
    )
    names = {name for name, _ in bayes.tensor_layers(model)}
    assert names == {f"block{b}.{p}" for b in (1, 2) for p in PROJECTIONS}
    lambdas = bayes.init_lambdas(model, bayes.RankPrior(kind="half_cauchy", eta=1.0))
    assert set(lambdas) == names
    prior = bayes.RankPrior("half_cauchy", 1.0)
    grads = nnx.grad(lambda m: bayes.model_log_prior(m, lambdas, prior))(model)
    for name, layer in bayes.tensor_layers(grads):
        assert all(float(jnp.abs(c[...]).sum()) > 0 for c in layer.cores), name
