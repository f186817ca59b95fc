"""Tests of the TT-matrix format against TensorLy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from jax.test_util import check_grads
from tensorly.decomposition import tensor_train_matrix

from tnjax.formats import TTMatrix, ttm

# Fixed-rank decompositions are jitted here, as callers would: one compilation instead of
# one per eager op keeps the suite fast.
FROM_DENSE = jax.jit(ttm.from_dense, static_argnames=("row_modes", "col_modes", "rank"))
MODES = [
    ((3,), (5,)),
    ((3, 1), (2, 5)),
    ((2, 3, 1), (3, 1, 2)),
    ((3, 2, 1, 2), (1, 2, 3, 2)),
    ((2, 1, 3, 1, 2), (1, 3, 1, 2, 1)),
    ((2, 1, 2, 1, 3, 1), (1, 3, 1, 2, 1, 1)),
]


def _np_cores(row_modes, col_modes, rank, seed=0, dtype=np.float32, batch=()):
    rng = np.random.default_rng(seed)
    d = len(row_modes)
    ranks = (1,) + (rank,) * (d - 1) + (1,)
    return [
        rng.standard_normal(batch + (ranks[k], row_modes[k], col_modes[k], ranks[k + 1])).astype(
            dtype
        )
        for k in range(d)
    ]


def _rel_err(approx, x):
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(np.asarray(approx, np.float64) - x) / np.linalg.norm(x))


@pytest.mark.parametrize("row_modes,col_modes", MODES)
@pytest.mark.parametrize("rank", [1, 3])
def test_to_dense_matches_tensorly(row_modes, col_modes, rank):
    cores = _np_cores(row_modes, col_modes, rank)
    x = TTMatrix(cores)
    m, n = math.prod(row_modes), math.prod(col_modes)
    ref_tensor = tl.tt_matrix_to_tensor(cores)
    # Jitted to compile once per shape; eager == jit is checked in test_jit_*.
    tensor, dense = jax.jit(lambda t: (ttm.to_tensor(t), ttm.to_dense(t)))(x)
    np.testing.assert_allclose(tensor, ref_tensor, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense, ref_tensor.reshape(m, n), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense, tl.tt_matrix_to_matrix(cores), rtol=1e-5, atol=1e-5)
    d = len(row_modes)
    ranks = (1,) + (rank,) * (d - 1) + (1,)
    assert x.shape == (m, n) and x.row_modes == row_modes and x.col_modes == col_modes
    assert x.ranks == ranks
    assert (
        x.num_params
        == ttm.num_params(x)
        == sum(ranks[k] * row_modes[k] * col_modes[k] * ranks[k + 1] for k in range(d))
    )


def test_row_major_index_convention():
    # W[(i1, i2), (j1, j2)] = A[i1, j1] * B[i2, j2] for rank 1: a Kronecker product.
    a = np.arange(6.0).reshape(2, 3) + 1
    b = np.arange(20.0).reshape(4, 5) - 3
    x = TTMatrix([a[None, :, :, None], b[None, :, :, None]])
    np.testing.assert_allclose(x.to_dense(), np.kron(a, b), rtol=1e-6)


def test_jit_vmap_grads():
    x = TTMatrix(_np_cores((2, 3), (3, 2), 2))
    np.testing.assert_allclose(jax.jit(ttm.to_dense)(x), x.to_dense(), rtol=1e-6)
    cores = _np_cores((2, 3), (3, 2), 2, seed=1, batch=(3,))
    dense = jax.vmap(lambda cs: TTMatrix(cs).to_dense())(cores)
    for b in range(3):
        one = TTMatrix([c[b] for c in cores])
        np.testing.assert_allclose(dense[b], one.to_dense(), rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        y = TTMatrix(_np_cores((2, 2), (1, 3), 2, dtype=np.float64))
        check_grads(jax.jit(lambda cs: ttm.to_dense(TTMatrix(cs))), (y.cores,), order=1)


def test_random_std():
    s = 0.1
    keys = jax.random.split(jax.random.key(4), 16)
    dense = jax.jit(jax.vmap(lambda k: ttm.random(k, (8, 8, 8), (4, 4, 4), 4, std=s).to_dense()))(
        keys
    )
    assert abs(float(jnp.sqrt(jnp.mean(dense**2))) / s - 1) < 0.15


@pytest.mark.parametrize("rank", [2, (1, 3, 2, 1)])
def test_from_dense_matches_tensorly(rank):
    row_modes, col_modes = (2, 3, 4), (3, 2, 5)
    w = np.random.default_rng(0).standard_normal((24, 30))
    ours = FROM_DENSE(w, row_modes, col_modes, rank)
    theirs = tensor_train_matrix(w.reshape(row_modes + col_modes), rank)
    ref = tl.tt_matrix_to_tensor(theirs).reshape(24, 30)
    assert ours.ranks == tuple(theirs.rank)
    assert _rel_err(ours.to_dense(), w) <= 1.01 * _rel_err(ref, w)
    # The (I..., J...) tensor form is accepted too.
    again = FROM_DENSE(w.reshape(row_modes + col_modes), row_modes, col_modes, rank)
    np.testing.assert_allclose(again.to_dense(), ours.to_dense(), atol=1e-5)


def test_full_rank_exact_rtol_and_round():
    w = np.random.default_rng(1).standard_normal((12, 10))
    y = FROM_DENSE(w, (3, 4), (5, 2), 1000)
    assert y.ranks == (1, 8, 1)
    assert _rel_err(y.to_dense(), w) < 1e-5
    low = TTMatrix(_np_cores((3, 4), (5, 2), 2, seed=5)).to_dense()
    z = ttm.from_dense(low, (3, 4), (5, 2), rtol=1e-3)
    assert z.ranks == (1, 2, 1)
    doubled = TTMatrix(
        [
            jnp.concatenate([z.cores[0], z.cores[0]], axis=3),
            jnp.concatenate([z.cores[1], z.cores[1]], axis=0),
        ]
    )
    assert doubled.ranks == (1, 4, 1)
    r = doubled.round(rtol=1e-4)
    assert r.ranks == (1, 2, 1)
    np.testing.assert_allclose(r.to_dense(), 2 * low, rtol=1e-3, atol=1e-3)


def test_bad_inputs():
    with pytest.raises(
        ValueError, match=r"core 1 has shape \(3, 2, 2, 1\) but core 0 ends with rank 2"
    ):
        TTMatrix([jnp.ones((1, 2, 2, 2)), jnp.ones((3, 2, 2, 1))])
    with pytest.raises(ValueError, match=r"\(1, 2, 2\).*4-D"):
        TTMatrix([jnp.ones((1, 2, 2))])
    with pytest.raises(ValueError, match=r"\(12, 10\).*\(3, 4\).*\(5, 3\)"):
        ttm.from_dense(jnp.ones((12, 10)), (3, 4), (5, 3), 2)
    with pytest.raises(ValueError, match="same number of modes"):
        ttm.random(jax.random.key(0), (3, 4), (5,), 2)
    with pytest.raises(ValueError, match="boundary"):
        ttm.from_dense(jnp.ones((12, 10)), (3, 4), (5, 2), (2, 2, 2))
