"""compress_model on models written with plain flax.nnx layers, as a user would write them
from the Flax documentation: 1-D and 3-D convolutions, MobileNet-style depthwise and grouped
convolutions, nnx.List / nnx.Dict containers, nested modules, embedding tables, attention;
and what it leaves dense (and why)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import nn as tnn
from tnjax.compress import compress_model, skipped_layers
from tnjax.formats.weights import conv_layout, embed_layout, linear_layout


class AudioCNN(nnx.Module):
    """1-D convolutions over a waveform, a dict of heads."""

    def __init__(self, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [
                nnx.Conv(1, 16, kernel_size=(5,), rngs=rngs),
                nnx.Conv(16, 32, kernel_size=(5,), strides=(2,), rngs=rngs),
                nnx.Conv(32, 32, kernel_size=(3,), padding="VALID", rngs=rngs),
            ]
        )
        self.heads = nnx.Dict(
            {"hidden": nnx.Linear(32, 64, rngs=rngs), "out": nnx.Linear(64, 10, rngs=rngs)}
        )

    def __call__(self, x):
        for conv in self.convs:
            x = nnx.relu(conv(x))
        x = jnp.mean(x, axis=1)
        return self.heads["out"](nnx.relu(self.heads["hidden"](x)))


class VideoBlock(nnx.Module):
    """3-D convolutions (time, height, width) inside a nested module."""

    class Stem(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, kernel_size=(3, 3, 3), rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.conv(x))

    def __init__(self, rngs: nnx.Rngs):
        self.stem = self.Stem(rngs)
        self.conv = nnx.Conv(8, 16, kernel_size=(3, 3, 3), strides=(1, 2, 2), rngs=rngs)
        self.proj = nnx.Conv(16, 16, kernel_size=(1, 3, 3), rngs=rngs)
        self.fc = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.proj(nnx.relu(self.conv(self.stem(x)))))
        return self.fc(jnp.mean(x, axis=(1, 2, 3)))


class Recommender(nnx.Module):
    """An embedding table and an MLP."""

    def __init__(self, rngs: nnx.Rngs):
        self.items = nnx.Embed(1000, 32, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(32, 64, rngs=rngs), nnx.relu, nnx.Linear(64, 1, rngs=rngs)
        )

    def __call__(self, ids):
        return self.mlp(jnp.mean(self.items(ids), axis=1))


class MobileNetV2ish(nnx.Module):
    """Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, BatchNorm) and a
    grouped 3x3 conv, as in the MobileNet/ShuffleNet papers."""

    class InvertedResidual(nnx.Module):
        def __init__(self, channels: int, expand: int, rngs: nnx.Rngs):
            hidden = channels * expand
            self.expand = nnx.Conv(channels, hidden, (1, 1), use_bias=False, rngs=rngs)
            self.bn1 = nnx.BatchNorm(hidden, use_running_average=True, rngs=rngs)
            self.depthwise = nnx.Conv(
                hidden, hidden, (3, 3), feature_group_count=hidden, use_bias=False, rngs=rngs
            )
            self.bn2 = nnx.BatchNorm(hidden, use_running_average=True, rngs=rngs)
            self.project = nnx.Conv(hidden, channels, (1, 1), use_bias=False, rngs=rngs)
            self.bn3 = nnx.BatchNorm(channels, use_running_average=True, rngs=rngs)

        def __call__(self, x):
            y = nnx.relu6(self.bn1(self.expand(x)))
            y = nnx.relu6(self.bn2(self.depthwise(y)))
            return x + self.bn3(self.project(y))

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 16, (3, 3), strides=(2, 2), rngs=rngs)
        self.blocks = nnx.List([self.InvertedResidual(16, 4, rngs) for _ in range(2)])
        self.grouped = nnx.Conv(16, 32, (3, 3), feature_group_count=4, rngs=rngs)
        self.fc = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(nnx.relu(self.grouped(x)), axis=(1, 2)))


def _random_weights(model, seed=0):
    """Kernels with a decaying spectrum (as trained ones have), so that rank matters."""
    rng = np.random.default_rng(seed)
    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param) and param.ndim >= 2:
            param[...] = jnp.asarray(rng.standard_normal(param.shape) * 0.3, jnp.float32)
    return model


class Encoder(nnx.Module):
    """A transformer encoder block over token ids, as in the Flax examples."""

    def __init__(self, rngs: nnx.Rngs, vocab: int = 500, width: int = 32, heads: int = 4):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(width, 4 * width, rngs=rngs),
            nnx.gelu,
            nnx.Linear(4 * width, width, rngs=rngs),
        )
        self.head = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(jnp.mean(x, axis=1))


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# model, example input, the layers compressed by default (all but the first conv and the
# last dense layer in call order)
MODELS = {
    "audio": (AudioCNN, lambda: _normal(1, (2, 64, 1)), {"convs/1", "convs/2", "heads/hidden"}),
    "video": (VideoBlock, lambda: _normal(2, (2, 4, 8, 8, 3)), {"conv", "proj"}),
    "recommender": (
        Recommender,
        lambda: jnp.asarray([[1, 5, 999], [0, 17, 3]]),
        {"items", "mlp/layers/0"},
    ),
    "encoder": (
        Encoder,
        lambda: jnp.asarray(np.random.default_rng(3).integers(0, 500, size=(2, 12))),
        {
            "embed",
            "attention/query",
            "attention/key",
            "attention/value",
            "attention/out",
            "mlp/layers/0",
            "mlp/layers/2",
        },
    ),
    "mobilenet": (
        MobileNetV2ish,
        lambda: _normal(4, (2, 16, 16, 3)),
        {f"blocks/{b}/{c}" for b in (0, 1) for c in ("expand", "depthwise", "project")}
        | {"grouped"},
    ),
}
# A depthwise 3x3 kernel over C channels has 9C weights and few ranks between 1 and full
# (Tucker-2: R (C + 9) + ...), so one rank step is ~10% of the layer: the budget is met
# on the model's compressed total, and per layer within 25%.
COARSE = ("depthwise",)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fmt", ["tt", "tucker", "cp", "rtt"])
def test_user_models_compress_to_the_requested_rate(name, fmt):
    build, example, expected = MODELS[name]
    model = _random_weights(build(nnx.Rngs(0)))
    x = example()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compressed, rows = compress_model(model, x, format=fmt, rate=0.3)
    # nothing left dense silently; a budget missed by more than 10% only for depthwise kernels
    messages = [str(w.message) for w in caught]
    assert all("feature_group_count=64" in m for m in messages), messages  # the depthwise
    assert {r["name"] for r in rows} == expected
    for row in rows:
        coarse = any(c in row["name"] for c in COARSE)
        assert abs(row["fraction"] / 0.3 - 1) <= (0.25 if coarse else 0.1), row
    total = sum(r["params"] for r in rows) / sum(r["dense_params"] for r in rows)
    assert abs(total / 0.3 - 1) <= 0.1, total
    y = compressed(x)
    assert y.shape == model(x).shape and bool(jnp.all(jnp.isfinite(y)))
    tensorized = [m for _, m in nnx.iter_graph(compressed) if isinstance(m, tnn.TensorLayer)]
    assert len(tensorized) == len(rows)


def _full_ranks(model, fmt):
    """{layer name: the largest ranks its layout allows} (full rank: exact)."""
    out = {}
    for path, m in nnx.iter_graph(model):
        name = "/".join(str(p) for p in path)
        if isinstance(m, nnx.Conv):
            *ks, n_in, n_out = m.kernel.shape
            g = m.feature_group_count
            layout = conv_layout(
                n_in * g, n_out, tuple(ks), format=fmt, rank=1, feature_group_count=g
            )
            out[name] = layout.max_ranks
        elif isinstance(m, nnx.Linear | nnx.LinearGeneral):
            n_in = int(np.prod(m.in_features))
            n_out = m.kernel.size // n_in
            out[name] = linear_layout(n_in, n_out, format=fmt, rank=1).max_ranks
        elif isinstance(m, nnx.Embed):
            out[name] = embed_layout(*m.embedding.shape, format=fmt, rank=1).max_ranks
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fmt", ["tt", "tucker", "rtt"])
def test_at_full_rank_the_compressed_model_computes_the_original(name, fmt):
    build, example, _ = MODELS[name]
    model = _random_weights(build(nnx.Rngs(0)))
    x = example()
    ranks = _full_ranks(model, fmt)
    compressed, rows = compress_model(model, x, format=fmt, rank=ranks, layers=["*"])
    assert len(rows) == len(ranks)
    want, got = model(x), nnx.jit(lambda m, x: m(x))(compressed, x)
    err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
    assert err < 1e-4, err


class Mixed(nnx.Module):
    """A masked conv (left dense, with the reason), a depthwise conv and attention
    (converted)."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(8, 8, kernel_size=(3, 3), rngs=rngs)
        mask = jnp.ones((3, 3, 8, 8)).at[2].set(0.0)  # a causal-style kernel mask
        self.masked = nnx.Conv(8, 8, kernel_size=(3, 3), mask=mask, rngs=rngs)
        self.depthwise = nnx.Conv(8, 8, kernel_size=(3, 3), feature_group_count=8, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
        self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        x = self.depthwise(self.masked(self.conv(x)))
        b, h, w, c = x.shape
        x = self.attention(x.reshape(b, h * w, c))
        return self.fc(jnp.mean(x, axis=1))


def test_layers_that_stay_dense_are_listed_with_the_reason():
    model = Mixed(nnx.Rngs(0))
    x = jnp.ones((1, 4, 4, 8))
    skipped = {s["name"]: s for s in skipped_layers(model)}
    assert set(skipped) == {"masked"}
    assert "masked convolution" in skipped["masked"]["reason"]
    with pytest.warns(UserWarning, match="stay dense: .*masked"):
        compressed, rows = compress_model(model, x, format="tt", rate=0.5, layers=["*"])
    attention = {f"attention/{p}" for p in ("query", "key", "value", "out")}
    assert {r["name"] for r in rows} == {"conv", "depthwise", "fc"} | attention
    assert isinstance(compressed.masked, nnx.Conv)
    assert isinstance(compressed.depthwise, tnn.Conv)
    assert compressed.depthwise.feature_group_count == 8
    assert isinstance(compressed.attention.query, tnn.LinearGeneral)
    assert compressed(x).shape == (1, 4)
    with pytest.raises(ValueError, match="stay dense"):
        compress_model(model, x, format="tt", rate=0.5, layers=["*"], on_skipped="raise")
    with pytest.raises(ValueError, match="left dense: .*masked"):
        compress_model(model, x, format="tt", rate=0.5, layers=["masked"], on_skipped="ignore")


def test_rank_priors_and_pruning_reach_a_compressed_transformer():
    """The attention projections of nnx.MultiHeadAttention, once tensorized, get rank
    groups and priors (tnjax.bayes) and prune like any tnjax layer: lambdas that switch
    off the second half of each group leave a smaller model that computes the same."""
    from tnjax import bayes

    model = _random_weights(Encoder(nnx.Rngs(0)))
    ids = MODELS["encoder"][1]()
    compressed, rows = compress_model(model, ids, format="ttm", rank=6)
    names = {name for name, _ in bayes.tensor_layers(compressed)}
    assert {"attention/query", "attention/out"} <= names
    prior = bayes.RankPrior(kind="half_cauchy", eta=1.0)
    lambdas = bayes.init_lambdas(compressed, prior)
    assert set(lambdas) == names
    # zero the slices the lambdas switch off, so pruning is exact
    cut = {}
    for name, layer in bayes.tensor_layers(compressed):
        groups = bayes.rank_groups(layer)
        cut[name] = [jnp.where(jnp.arange(g.size) < max(1, g.size // 2), 1.0, 0.0) for g in groups]
        for group, lam in zip(groups, cut[name], strict=True):
            for core_index, axis in group.slices + group.prune_only:
                core = layer.cores[core_index]
                shape = [1] * core.ndim
                shape[axis] = -1
                core[...] = core[...] * lam.reshape(shape)
    pruned, report, _ = bayes.prune_model(compressed, cut)
    assert all(r["params_after"] < r["params_before"] for r in report.values())
    assert isinstance(pruned.attention.query, tnn.LinearGeneral)
    np.testing.assert_allclose(pruned(ids), compressed(ids), rtol=1e-4, atol=1e-5)


def test_rank_priors_and_pruning_reach_depthwise_and_grouped_convs():
    """Tucker-2 depthwise/grouped convs of a MobileNet-style model get rank groups (their
    output and input ranks) and prune exactly when the lambdas switch ranks off."""
    from tnjax import bayes

    model = _random_weights(MobileNetV2ish(nnx.Rngs(0)))
    x = MODELS["mobilenet"][1]()
    compressed, rows = compress_model(model, x, format="tucker", rank=4)
    names = {name for name, _ in bayes.tensor_layers(compressed)}
    assert {"blocks/0/depthwise", "grouped"} <= names
    cut = {}
    for name, layer in bayes.tensor_layers(compressed):
        groups = bayes.rank_groups(layer)
        cut[name] = [jnp.where(jnp.arange(g.size) < max(1, g.size // 2), 1.0, 0.0) for g in groups]
        for group, lam in zip(groups, cut[name], strict=True):
            for core_index, axis in group.slices + group.prune_only:
                core = layer.cores[core_index]
                shape = [1] * core.ndim
                shape[axis] = -1
                core[...] = core[...] * lam.reshape(shape)
    pruned, report, _ = bayes.prune_model(compressed, cut)
    assert report["grouped"]["params_after"] < report["grouped"]["params_before"]
    assert pruned.grouped.feature_group_count == 4
    np.testing.assert_allclose(pruned(x), compressed(x), rtol=1e-4, atol=1e-5)


def test_random_init_builds_the_same_tensorized_structure_to_train_from_scratch():
    """init="random": the layers a decomposition would create, with random cores at Flax's
    default scale (no decomposition), so a model written elsewhere trains tensorized from
    the start."""
    model = _random_weights(Encoder(nnx.Rngs(0)))
    ids = MODELS["encoder"][1]()
    decomposed, rows = compress_model(model, ids, format="ttm", rate=0.3)
    fresh, fresh_rows = compress_model(model, ids, format="ttm", rate=0.3, init="random")
    assert [(r["name"], r["ranks"]) for r in rows] == [(r["name"], r["ranks"]) for r in fresh_rows]
    a, b = decomposed.attention.query, fresh.attention.query
    assert [c.shape for c in a.cores] == [c.shape for c in b.cores]
    assert not np.allclose(a.kernel(), b.kernel(), atol=1e-3)
    # the reconstructed kernel has the dense initialiser's scale (LeCun normal: 1/sqrt(fan_in))
    std = float(jnp.std(fresh.mlp.layers[0].kernel()))
    assert 0.5 / np.sqrt(32) < std < 2.0 / np.sqrt(32), std
    assert bool(jnp.all(jnp.isfinite(fresh(ids))))
    with pytest.raises(ValueError, match="init='svd'"):
        compress_model(model, ids, format="ttm", rate=0.3, init="svd")
