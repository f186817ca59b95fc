"""Tests of tnjax.nn.Embed against the dense table it reconstructs, and against nnx.Embed."""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax.nn import Core
from tnjax.nn.embed import EMBED_FORMATS, Embed, embed_layout

FORMATS = list(EMBED_FORMATS)
DLRM_V = 10_131_227  # Criteo Kaggle table 2 (a prime), padded to 200 x 220 x 250 in the paper
DLRM_VOCAB = (200, 220, 250)


def _rank(fmt):
    return {
        "cp": 5,
        "tucker": 3,
        "tt": 3,
        "ttm": 3,
        "tr": 2,
        "rcp": 4,
        "rtk": 2,
        "rtt": 3,
        "rtr": 2,
    }[fmt]


def _small(fmt, v, e, **kwargs):
    return Embed(v, e, format=fmt, rank=_rank(fmt), rngs=nnx.Rngs(0), **kwargs)


@functools.cache
def _shared(fmt, v, e):
    """A layer shared by the read-only tests (building one compiles its samplers)."""
    return _small(fmt, v, e)


# 1009 is prime: the vocabulary is padded to 11 x 11 x 9 = 1089 rows. 1000 = 10 x 10 x 10
# is exact, and 13 features (prime) are padded to TT-matrix feature modes 7 x 2 x 1.
V, E = 1009, 12
CASES = [(fmt, V, E) for fmt in FORMATS] + [("ttm", 1000, 13)]


@pytest.mark.parametrize("fmt,v,e", CASES)
def test_lookup_equals_rows_of_the_table(fmt, v, e):
    layer = _shared(fmt, v, e)
    table = np.asarray(layer.table())
    assert table.shape == (v, e)
    rng = np.random.default_rng(0)
    shapes = [(), (5,), (3, 4)]
    indices = [jnp.asarray(rng.integers(0, v, size=shape), jnp.int32) for shape in shapes]
    indices[2] = indices[2].at[0, 0].set(v - 1).at[0, 1].set(0)  # last real row, then padding
    # one jit for the three shapes (compiling is what costs time here)
    jitted = nnx.jit(lambda m, idx: [m(i) for i in idx])(layer, indices)
    for shape, idx, got in zip(shapes, indices, jitted, strict=True):
        assert got.shape == shape + (e,)
        np.testing.assert_allclose(got, table[np.asarray(idx)], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        layer(indices[1]), table[np.asarray(indices[1])], rtol=1e-4, atol=1e-6
    )


def test_several_feature_modes():
    # the specs are generic in the number of feature modes; Tucker has the most operands
    layer = Embed(100, 16, format="tucker", rank=2, feature_modes=(4, 4), rngs=nnx.Rngs(0))
    assert layer.feature_modes == (4, 4) and len(layer.cores) == 6
    idx = jnp.array([0, 99, 42])
    np.testing.assert_allclose(layer(idx), layer.table()[idx], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_out_of_range_and_negative_indices_behave_like_nnx_embed(fmt):
    v = V  # padded to more rows than v: the padding must stay invisible
    layer = _shared(fmt, V, E)
    assert layer.vocab_padded > v
    table = np.asarray(layer.table())
    got = np.asarray(layer(jnp.array([-1, -v, v, v + 3, layer.vocab_padded + 5, -v - 1])))
    np.testing.assert_allclose(got[:2], table[[v - 1, 0]], rtol=1e-4, atol=1e-6)
    assert np.isnan(got[2:]).all()  # nnx.Embed returns NaN rows out of range


def test_narrow_unsigned_and_empty_indices():
    layer = _shared("ttm", V, E)
    table = np.asarray(layer.table())
    for dtype in (jnp.uint8, jnp.int16, jnp.uint32):
        got = layer(jnp.array([7, 200], dtype))
        np.testing.assert_allclose(got, table[[7, 200]], rtol=1e-4, atol=1e-6)
    assert layer(jnp.zeros((0, 2), jnp.int32)).shape == (0, 2, E)


@pytest.mark.parametrize("fmt,v,e", CASES)
def test_attend_equals_query_times_table_transposed(fmt, v, e):
    layer = _shared(fmt, v, e)
    q = jax.random.normal(jax.random.key(1), (2, 3, e))
    want = q @ layer.table().T
    got = nnx.jit(lambda m, x: m.attend(x))(layer, q)
    assert got.shape == (2, 3, v)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.attend(q[0, 0]), want[0, 0], rtol=1e-4, atol=1e-5)


def test_vmap_equals_batched_lookup():
    layer = _shared("ttm", V, E)
    idx = jnp.arange(12, dtype=jnp.int32).reshape(3, 4) * 77
    got = jax.vmap(layer)(idx)
    np.testing.assert_allclose(got, layer(idx), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradients_reach_only_the_gathered_slices(fmt):
    layer = _shared(fmt, V, E)
    idx = jnp.array([[123, 456], [123, 1008]], jnp.int32)
    digits = np.unravel_index(np.asarray(idx).ravel(), layer.vocab_modes)  # row-major
    used = [set(d.tolist()) for d in digits]

    def loss(m):
        return jnp.sum(jnp.sin(m(idx)))

    grads = nnx.jit(nnx.grad(loss))(layer)
    core_grads = jax.tree.leaves(nnx.state(grads, Core))
    assert len(core_grads) == len(layer.cores)
    assert all(float(jnp.abs(g).max()) > 0 for g in core_grads)
    first = 1 if fmt in ("tucker", "rtk") else 0  # the Tucker core comes first
    axis = 1 if fmt in ("tt", "ttm", "tr", "rtt", "rtr") else 0
    for k in range(3):
        g = np.moveaxis(np.asarray(core_grads[first + k]), axis, 0)
        for digit in range(layer.vocab_modes[k]):
            assert (np.abs(g[digit]).max() > 0) == (digit in used[k]), (k, digit)


def test_dlrm_parameter_counts_of_the_bayes_paper():
    """Table 2 of the Bayes paper (section 3): Criteo table 2, E=128, equal-budget ranks."""
    cases = {
        ("ttm", 16): 270_080,
        ("tt", 24): 278_592,
        ("cp", 350): 279_300,
        ("tucker", 22): 251_812,
    }
    for (fmt, rank), want in cases.items():
        feats = (4, 4, 8) if fmt == "ttm" else None
        layout = embed_layout(
            DLRM_V, 128, format=fmt, rank=rank, vocab_modes=DLRM_VOCAB, feature_modes=feats
        )
        assert layout.num_params == want, (fmt, layout.num_params)
        assert layout.vocab_padded == 11_000_000
        # the layer itself, built abstractly: only cores, no table, nothing sampled
        layer = nnx.eval_shape(
            lambda fmt=fmt, rank=rank, feats=feats: Embed(
                DLRM_V,
                128,
                format=fmt,
                rank=rank,
                vocab_modes=DLRM_VOCAB,
                feature_modes=feats,
                rngs=nnx.Rngs(0),
            )
        )
        assert layer.num_params == want
        assert layer.dense_params == 1_296_797_056
    # the closed forms
    assert 350 * (sum(DLRM_VOCAB) + 128) == 279_300
    assert 22**4 + 22 * (sum(DLRM_VOCAB) + 128) == 251_812


def _paper_ttm_table(seed: int) -> Embed:
    """The Bayes paper's largest Criteo table as a rank-16 TT-matrix (E = 4 x 4 x 8)."""
    return Embed(
        DLRM_V,
        128,
        format="ttm",
        rank=16,
        vocab_modes=DLRM_VOCAB,
        feature_modes=(4, 4, 8),
        rngs=nnx.Rngs(seed),
    )


def test_dlrm_size_ttm_layer_looks_up_without_materialising_the_table():
    layer = Embed(DLRM_V, 128, format="ttm", rank=16, rngs=nnx.Rngs(0))  # default modes
    assert layer.vocab_padded >= DLRM_V and layer.num_params < 400_000
    explicit = _paper_ttm_table(seed=1)
    idx = jax.random.randint(jax.random.key(2), (4096,), 0, DLRM_V)
    idx = idx.at[0].set(DLRM_V - 1)
    for emb in (layer, explicit):
        out = nnx.jit(lambda m, i: m(i))(emb, idx)
        assert out.shape == (4096, 128) and bool(jnp.isfinite(out).all())
        assert 0.7 / math.sqrt(128) < float(jnp.std(out)) < 1.4 / math.sqrt(128)
        # rows checked against an explicit product of the core slices
        cores = [np.asarray(c[...], np.float64) for c in emb.cores]
        for row, i in [(0, DLRM_V - 1), (1, int(idx[1]))]:
            digits = np.unravel_index(i, emb.vocab_modes)
            vec = np.ones((1, 1))
            for c, dk in zip(cores, digits, strict=True):
                vec = np.einsum("xa,aeb->xeb", vec, c[:, dk]).reshape(-1, c.shape[-1])
            np.testing.assert_allclose(out[row], vec.reshape(-1), rtol=1e-4, atol=1e-6)
    cost = explicit.cost((4096,))
    assert cost["params"] == 270_080 and cost["dense_flops"] == 0 and cost["flops"] > 0


def test_dlrm_size_ttm_training_step_needs_under_64_megabytes():
    """The paper-size table's forward+backward on 4,096 ids, by XLA's compiled memory analysis.

    The dense table alone is 5.2 GB; the gathered core slices of one step are ~17 MB each.
    """
    graph, state = nnx.split(_paper_ttm_table(seed=0))
    idx = jax.random.randint(jax.random.key(1), (4096,), 0, DLRM_V)

    def loss(state, idx):
        return jnp.sum(nnx.merge(graph, state, copy=True)(idx))

    mem = jax.jit(jax.grad(loss)).lower(state, idx).compile().memory_analysis()
    if mem is None:  # pragma: no cover - backends without memory analysis
        pytest.skip("this backend gives no compiled memory analysis")
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    assert total < 64e6, f"{total / 1e6:.1f} MB"


@pytest.mark.parametrize("fmt", FORMATS)
def test_compression_is_met_within_ten_percent(fmt):
    v, e = 1000, 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for c in (0.02, 0.05, 0.1, 0.2):
            layout = embed_layout(v, e, format=fmt, compression=c)
            assert abs(layout.num_params / (v * e) - c) <= 0.1 * c, (c, layout.ranks)
        layer = nnx.eval_shape(lambda: Embed(v, e, format=fmt, compression=0.05, rngs=nnx.Rngs(0)))
    assert abs(layer.num_params / layer.dense_params - 0.05) <= 0.005


def test_infeasible_compression_warns_with_the_fraction_reached():
    with pytest.warns(UserWarning, match="budget"):
        embed_layout(1000, 64, format="cp", compression=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_embed_at_full_rank_reproduces_nnx_embed(fmt):
    dense = nnx.Embed(29, 8, rngs=nnx.Rngs(0))  # 29 is prime: padded to (5, 3, 2)
    # CP-ALS of a 3+-way tensor has no finite exact rank to aim for; with one vocab mode
    # the table is a matrix and CP of rank E is exact.
    num_modes = 1 if fmt == "cp" else 3
    layout = embed_layout(29, 8, format=fmt, rank=1, num_modes=num_modes)
    convert = functools.partial(
        Embed.from_embed, format=fmt, rank=layout.max_ranks, num_modes=num_modes
    )
    layer = nnx.jit(convert)(dense)
    idx = jnp.array([[0, 5, 28], [17, 3, 28]])
    want = dense(idx)
    got = layer(idx)
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-4
    table = dense.embedding[...]
    assert float(jnp.linalg.norm(layer.table() - table) / jnp.linalg.norm(table)) < 1e-4
    np.testing.assert_allclose(layer.attend(table[:2]), dense.attend(table[:2]), atol=1e-4)


@pytest.mark.parametrize(
    "fmt,ranks", [("ttm", (1, 3, 8)), ("tt", (1, 3, 8)), ("tucker", (1, 3, 5)), ("cp", (2, 8))]
)
def test_from_embed_error_decreases_with_rank(fmt, ranks):
    table = jax.random.normal(jax.random.key(0), (60, 12))
    errors = []
    for r in ranks:
        layer = nnx.jit(functools.partial(Embed.from_embed, format=fmt, rank=r))(table)
        errors.append(float(jnp.linalg.norm(layer.table() - table) / jnp.linalg.norm(table)))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_initial_table_std_matches_nnx_embed(fmt):
    layer = _shared(fmt, V, E)
    want = float(jnp.std(nnx.Embed(V, E, rngs=nnx.Rngs(3)).embedding[...]))  # 1/sqrt(E)
    std = float(jnp.std(layer.table()))
    assert 0.6 * want < std < 1.6 * want, (std, want)
    custom = Embed(
        V,
        E,
        format=fmt,
        rank=_rank(fmt),
        embedding_init=nnx.initializers.normal(0.5),
        rngs=nnx.Rngs(3),
    )
    assert 0.3 < float(jnp.std(custom.table())) < 0.8


def test_dtype_promotes_like_nnx_embed():
    layer = _small("tt", V, E, dtype=jnp.bfloat16)
    assert layer(jnp.array([1, 2])).dtype == jnp.bfloat16
    assert layer.attend(jnp.ones((2, E))).dtype == jnp.bfloat16
    assert all(c[...].dtype == jnp.float32 for c in layer.cores)


def test_bad_arguments_raise_value_errors_that_say_what_to_change():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="not one of"):
        Embed(100, 8, format="tr2", rank=2, rngs=rngs)
    with pytest.raises(ValueError, match="exactly one of rank= or compression="):
        Embed(100, 8, format="tt", rngs=rngs)
    with pytest.raises(ValueError, match="exactly one of rank= or compression="):
        Embed(100, 8, format="tt", rank=2, compression=0.1, rngs=rngs)
    with pytest.raises(ValueError, match="at least 100"):
        Embed(100, 8, format="tt", rank=2, vocab_modes=(3, 3, 3), rngs=rngs)
    with pytest.raises(ValueError, match="product is 8"):
        Embed(100, 8, format="ttm", rank=2, feature_modes=(2, 2, 3), rngs=rngs)
    with pytest.raises(ValueError, match="same number of modes"):
        Embed(
            100, 8, format="ttm", rank=2, vocab_modes=(10, 10), feature_modes=(2, 2, 2), rngs=rngs
        )
    with pytest.raises(ValueError, match="maximum"):
        Embed(100, 8, format="tt", rank=1000, rngs=rngs)
    with pytest.raises(ValueError, match=r"compression=2.0 must be in \(0, 1\]"):
        Embed(100, 8, format="cp", compression=2.0, rngs=rngs)
    layer = _shared("ttm", V, E)
    with pytest.raises(ValueError, match="integer dtype"):
        layer(jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 12\)"):
        layer.attend(jnp.ones((3, 7)))
    with pytest.raises(ValueError, match="table"):
        Embed.from_embed(jnp.ones((3, 4, 5)), format="tt", rank=2)
