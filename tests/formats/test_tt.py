"""Tests of the TT format against TensorLy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from jax.test_util import check_grads
from tensorly.decomposition import tensor_train

from tnjax.formats import TT, tt

# Fixed-rank decompositions are jitted here, as callers would: one compilation instead of
# one per eager op keeps the suite fast.
FROM_DENSE = jax.jit(tt.from_dense, static_argnames=("rank", "svd_method"))
SHAPES = [(3, 5), (3, 1, 5), (5, 3, 2, 3), (3, 2, 3, 1, 3), (2, 3, 1, 3, 2, 3)]


def _np_cores(shape, ranks, seed=0, dtype=np.float32, batch=()):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal(batch + (ranks[k], n, ranks[k + 1])).astype(dtype)
        for k, n in enumerate(shape)
    ]


def _tt_ranks(d, rank):
    return (1,) + (rank,) * (d - 1) + (1,)


def _rel_err(approx, x):
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(np.asarray(approx, np.float64) - x) / np.linalg.norm(x))


def _low_rank_tt(shape, rank, seed, noise=0.0):
    ranks = _tt_ranks(len(shape), rank) if isinstance(rank, int) else rank
    x = np.asarray(TT(_np_cores(shape, ranks, seed, np.float64)).to_dense(), np.float64)
    e = np.random.default_rng(seed).standard_normal(shape)
    return x + noise * np.linalg.norm(x) * e / np.linalg.norm(e)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 3])
def test_to_dense_matches_tensorly(shape, rank):
    x = TT(_np_cores(shape, _tt_ranks(len(shape), rank)))
    np.testing.assert_allclose(
        jax.jit(tt.to_dense)(x),
        tl.tt_to_tensor([np.asarray(c) for c in x.cores]),
        rtol=1e-5,
        atol=1e-5,
    )
    ranks = (1,) + (rank,) * (len(shape) - 1) + (1,)
    assert x.shape == shape and x.ranks == ranks
    assert (
        x.num_params
        == tt.num_params(x)
        == sum(ranks[k] * shape[k] * ranks[k + 1] for k in range(len(shape)))
    )


def test_jit_vmap_grads():
    x = TT(_np_cores((3, 4, 5), (1, 2, 3, 1)))
    np.testing.assert_allclose(jax.jit(tt.to_dense)(x), x.to_dense(), rtol=1e-6)
    cores = _np_cores((3, 4, 5), (1, 2, 2, 1), seed=1, batch=(3,))
    dense = jax.vmap(lambda cs: TT(cs).to_dense())(cores)
    for b in range(3):
        np.testing.assert_allclose(
            dense[b], TT([c[b] for c in cores]).to_dense(), rtol=1e-5, atol=1e-5
        )
    with jax.enable_x64(True):
        y = TT(_np_cores((2, 3, 2), (1, 2, 2, 1), dtype=np.float64))
        check_grads(jax.jit(lambda cs: tt.to_dense(TT(cs))), (y.cores,), order=1)


def test_random_std():
    s, shape = 0.5, (16, 16, 16, 16)
    keys = jax.random.split(jax.random.key(4), 16)
    dense = jax.jit(jax.vmap(lambda k: tt.random(k, shape, (1, 3, 4, 2, 1), std=s).to_dense()))(
        keys
    )
    assert abs(float(jnp.sqrt(jnp.mean(dense**2))) / s - 1) < 0.15


@pytest.mark.parametrize("rank", [2, 3, (1, 2, 4, 3, 1)])
def test_from_dense_matches_tensorly(rank):
    for x in (
        np.random.default_rng(0).standard_normal((6, 7, 8, 5)),
        _low_rank_tt((6, 7, 8, 5), 3, 1, noise=0.1),
    ):
        ours = FROM_DENSE(x, rank)
        theirs = tensor_train(x, rank)
        assert ours.ranks == tuple(theirs.rank)
        e_ours, e_theirs = _rel_err(ours.to_dense(), x), _rel_err(tl.tt_to_tensor(theirs), x)
        assert e_ours <= 1.01 * e_theirs, (e_ours, e_theirs)


def test_full_rank_exact_and_clipping():
    x = np.random.default_rng(2).standard_normal((3, 4, 5, 2))
    y = FROM_DENSE(x, 1000)
    assert y.ranks == (1, 3, 10, 2, 1)
    assert _rel_err(y.to_dense(), x) < 1e-5


def test_rtol_bound_and_jit():
    x = _low_rank_tt((5, 6, 7, 4), (1, 2, 3, 2, 1), 3, noise=1e-3)
    y = tt.from_dense(x, rtol=1e-2)
    assert y.ranks == (1, 2, 3, 2, 1)
    assert _rel_err(y.to_dense(), x) <= 1e-2
    eager = tt.from_dense(x, 2)
    jitted = jax.jit(lambda a: tt.from_dense(a, 2))(x)
    np.testing.assert_allclose(jitted.to_dense(), eager.to_dense(), atol=1e-4)


def test_randomized_svd_path():
    x = _low_rank_tt((8, 9, 10), 2, 5, noise=1e-2)
    full = FROM_DENSE(x, 2, svd_method="full")
    rnd = FROM_DENSE(x, 2, svd_method="randomized", key=jax.random.key(1))
    assert _rel_err(rnd.to_dense(), x) <= 1.01 * _rel_err(full.to_dense(), x)


def test_round_sum_recovers_rank():
    shape = (6, 7, 6)
    a = TT(_np_cores(shape, _tt_ranks(3, 2), seed=5))
    b = TT(_np_cores(shape, _tt_ranks(3, 3), seed=6))
    s = tt.add(a, b)
    assert s.ranks == (1, 5, 5, 1)
    np.testing.assert_allclose(s.to_dense(), a.to_dense() + b.to_dense(), rtol=1e-4, atol=1e-4)
    # 2a + b stored with ranks 7; its true ranks are 5.
    s2 = tt.add(s, a)
    assert s2.ranks == (1, 7, 7, 1)
    r = tt.round(s2, rtol=1e-4)
    assert r.ranks == (1, 5, 5, 1)
    dense = 2 * a.to_dense() + b.to_dense()
    assert _rel_err(r.to_dense(), dense) < 1e-4
    capped = jax.jit(tt.round, static_argnums=1)(s2, 2)
    assert capped.ranks == (1, 2, 2, 1)


def test_round_rtol_bound():
    x = TT(_np_cores((5, 6, 7, 4), _tt_ranks(4, 4), seed=7))
    r = x.round(rtol=0.3)
    assert _rel_err(r.to_dense(), x.to_dense()) <= 0.3
    assert math.prod(r.ranks) < math.prod(x.ranks)


def test_bad_inputs():
    with pytest.raises(
        ValueError, match=r"core 1 has shape \(3, 4, 5\) but core 0 ends with rank 4"
    ):
        TT([jnp.ones((1, 3, 4)), jnp.ones((3, 4, 5)), jnp.ones((5, 2, 1))])
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*first rank must be 1"):
        TT([jnp.ones((2, 3, 4)), jnp.ones((4, 4, 1))])
    with pytest.raises(ValueError, match=r"\(4, 4, 2\).*last rank must be 1"):
        TT([jnp.ones((1, 3, 4)), jnp.ones((4, 4, 2))])
    with pytest.raises(ValueError, match=r"\(3, 4\).*3-D"):
        TT([jnp.ones((3, 4))])
    x = jnp.ones((3, 4, 5))
    with pytest.raises(ValueError, match="boundary TT ranks must be 1"):
        tt.from_dense(x, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="needs 4 entries"):
        tt.from_dense(x, (1, 2, 1))
    with pytest.raises(ValueError, match=r"rank.*rtol.*\(3, 4, 5\)"):
        tt.from_dense(x)
    with pytest.raises(ValueError, match="rank"):
        tt.round(TT(_np_cores((3, 4), (1, 2, 1))))
    with pytest.raises(ValueError, match=r"shapes differ"):
        tt.add(TT(_np_cores((3, 4), (1, 2, 1))), TT(_np_cores((3, 5), (1, 2, 1))))
