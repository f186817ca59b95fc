"""Tests of the tensor-ring format against TensorLy."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from jax.test_util import check_grads
from tensorly.decomposition import tensor_ring

from tnjax.formats import TR, tr

# Fixed-rank decompositions are jitted here, as callers would: one compilation instead of
# one per eager op keeps the suite fast.
FROM_DENSE = jax.jit(tr.from_dense, static_argnames=("rank", "svd_method"))
SHAPES = [(3, 5), (3, 1, 5), (5, 3, 2, 3), (3, 2, 3, 1, 3), (2, 3, 1, 3, 2, 3)]


def _np_cores(shape, ranks, seed=0, dtype=np.float32, batch=()):
    rng = np.random.default_rng(seed)
    d = len(shape)
    return [
        rng.standard_normal(batch + (ranks[k], n, ranks[(k + 1) % d])).astype(dtype)
        for k, n in enumerate(shape)
    ]


def _rel_err(approx, x):
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(np.asarray(approx, np.float64) - x) / np.linalg.norm(x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 3])
def test_to_dense_matches_tensorly(shape, rank):
    d = len(shape)
    ranks = tuple(rank + (k % 2) for k in range(d))
    x = TR(_np_cores(shape, ranks))
    np.testing.assert_allclose(
        jax.jit(tr.to_dense)(x),
        tl.tr_to_tensor([np.asarray(c) for c in x.cores]),
        rtol=1e-5,
        atol=1e-5,
    )
    assert x.shape == shape and x.ranks == ranks
    assert (
        x.num_params
        == tr.num_params(x)
        == sum(ranks[k] * shape[k] * ranks[(k + 1) % d] for k in range(d))
    )


def test_jit_vmap_grads():
    x = TR(_np_cores((3, 4, 5), (2, 3, 1)))
    np.testing.assert_allclose(jax.jit(tr.to_dense)(x), x.to_dense(), rtol=1e-6)
    cores = _np_cores((3, 4, 5), (2, 2, 2), seed=1, batch=(3,))
    dense = jax.vmap(lambda cs: TR(cs).to_dense())(cores)
    for b in range(3):
        np.testing.assert_allclose(
            dense[b], TR([c[b] for c in cores]).to_dense(), rtol=1e-5, atol=1e-5
        )
    with jax.enable_x64(True):
        y = TR(_np_cores((2, 3, 2), (2, 2, 2), dtype=np.float64))
        check_grads(jax.jit(lambda cs: tr.to_dense(TR(cs))), (y.cores,), order=1)


def test_random_std():
    s = 1.5
    keys = jax.random.split(jax.random.key(4), 16)
    dense = jax.jit(
        jax.vmap(lambda k: tr.random(k, (16, 16, 16, 16), (2, 3, 4, 2), std=s).to_dense())
    )(keys)
    assert abs(float(jnp.sqrt(jnp.mean(dense**2))) / s - 1) < 0.15


def _low_rank_tr(shape, ranks, seed, noise):
    x = np.asarray(TR(_np_cores(shape, ranks, seed, np.float64)).to_dense(), np.float64)
    e = np.random.default_rng(seed).standard_normal(shape)
    return x + noise * np.linalg.norm(x) * e / np.linalg.norm(e)


@pytest.mark.parametrize("rank", [2, (2, 3, 4, 4, 2), (3, 2, 2, 2, 3), (1, 2, 3, 3, 1)])
def test_from_dense_matches_tensorly(rank):
    for x in (
        np.random.default_rng(0).standard_normal((6, 7, 8, 5)),
        _low_rank_tr((6, 7, 8, 5), (2, 3, 2, 2), 1, 0.1),
    ):
        ours = FROM_DENSE(x, rank)
        theirs = tensor_ring(x, rank)
        assert ours.ranks == tuple(theirs.rank[:-1])
        e_ours, e_theirs = _rel_err(ours.to_dense(), x), _rel_err(tl.tr_to_tensor(theirs), x)
        assert e_ours <= 1.01 * e_theirs, (e_ours, e_theirs)


def test_full_rank_exact_and_clipping():
    x = np.random.default_rng(2).standard_normal((4, 5, 6))
    y = FROM_DENSE(x, 100)  # TensorLy raises here; tnjax clips r_0 r_1 to I_1 = 4
    assert y.ranks[:2] == (2, 2)
    assert _rel_err(y.to_dense(), x) < 1e-5
    z = FROM_DENSE(x, 3)  # 9 > 4: shrunk to the balanced (2, 2)
    assert z.ranks[:2] == (2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = tr.from_dense(np.random.default_rng(3).standard_normal((5, 6)), 2)
    assert m.ranks == (2, 2)


def test_rtol():
    x = _low_rank_tr((6, 7, 8, 5), (2, 3, 2, 2), 3, 1e-4)
    y = tr.from_dense(x, rtol=1e-2)
    assert _rel_err(y.to_dense(), x) <= 1e-2
    assert y.ranks[0] * y.ranks[1] == 6 and y.ranks[0] <= y.ranks[1]
    # Later ranks depend on the gauge of the first split; TR-SVD does not make them minimal.


def test_split_rank():
    assert tr.split_rank(6, 4, 4) == (2, 3)
    assert tr.split_rank(9, 5, 5) == (3, 3)
    assert tr.split_rank(7, 7, 7) == (1, 7)
    assert tr.split_rank(100, 2, 3) == (2, 3)
    assert tr.split_rank(5, 3, 1) == (3, 1)


def test_bad_inputs():
    with pytest.raises(
        ValueError, match=r"core 1 has shape \(3, 4, 2\) but core 0 ends with rank 4"
    ):
        TR([jnp.ones((2, 3, 4)), jnp.ones((3, 4, 2))])
    with pytest.raises(ValueError, match=r"\(4, 4, 3\).*last rank must be 2"):
        TR([jnp.ones((2, 3, 4)), jnp.ones((4, 4, 3))])
    x = jnp.ones((3, 4, 5))
    with pytest.raises(ValueError, match="r_3 = r_0"):
        tr.from_dense(x, (2, 2, 2, 3))
    with pytest.raises(ValueError, match="needs 3 entries"):
        tr.from_dense(x, (2, 2))
    with pytest.raises(ValueError, match=r"rank.*rtol.*\(3, 4, 5\)"):
        tr.from_dense(x)
    with pytest.raises(ValueError, match=">= 1"):
        tr.random(jax.random.key(0), (3, 4), 0)
