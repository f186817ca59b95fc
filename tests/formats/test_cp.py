"""Tests of the CP format against TensorLy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from jax.test_util import check_grads
from tensorly.decomposition import parafac

from tnjax.formats import CP, cp

KEY = jax.random.key(0)
# Fixed-rank decompositions are jitted here, as callers would: one compilation instead of
# one per eager op keeps the suite fast.
FROM_DENSE = jax.jit(cp.from_dense, static_argnames=("rank", "init", "n_iter_max", "tol"))
SHAPES = [(3, 5), (3, 1, 5), (5, 3, 2, 3), (3, 2, 3, 1, 3), (2, 3, 1, 3, 2, 3)]


def _rel_err(approx, x):
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(np.asarray(approx, np.float64) - x) / np.linalg.norm(x))


def _np_factors(shape, rank, seed=0, dtype=np.float32, batch=()):
    # NumPy draws keep the tests free of per-shape PRNG compilations.
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(batch + (rank,)) + 2).astype(dtype)
    return w, [rng.standard_normal(batch + (n, rank)).astype(dtype) for n in shape]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 3])
def test_to_dense_matches_tensorly(shape, rank):
    w, fs = _np_factors(shape, rank)
    x = CP(w, fs)
    # Jitted to compile once per shape; eager == jit is checked in test_jit_*.
    dense = jax.jit(cp.to_dense)(x)
    np.testing.assert_allclose(dense, tl.cp_to_tensor((w, fs)), rtol=1e-5, atol=1e-5)
    assert x.shape == shape and x.ranks == rank and x.rank == rank
    assert x.num_params == cp.num_params(x) == rank + rank * sum(shape)
    assert x.dtype == jnp.float32


def test_jit_and_vmap():
    x = CP(*_np_factors((3, 4, 5), 2))
    np.testing.assert_allclose(jax.jit(cp.to_dense)(x), cp.to_dense(x), rtol=1e-6)
    w, fs = _np_factors((3, 4, 5), 2, seed=1, batch=(3,))
    dense = jax.vmap(lambda w, fs: CP(w, fs).to_dense())(w, fs)
    for b in range(3):
        one = CP(w[b], [f[b] for f in fs])
        np.testing.assert_allclose(dense[b], one.to_dense(), rtol=1e-5, atol=1e-6)
    # A batched CP built under vmap (unflattening skips the shape checks).
    batch = jax.jit(jax.vmap(lambda k: CP.random(k, (3, 4, 5), 2)))(jax.random.split(KEY, 3))
    assert batch.factors[0].shape == (3, 3, 2)
    dense = jax.jit(jax.vmap(cp.to_dense))(batch)
    np.testing.assert_allclose(
        dense[1], CP(batch.weights[1], [f[1] for f in batch.factors]).to_dense(), rtol=1e-5
    )


def test_grads_float64():
    with jax.enable_x64(True):
        w, fs = _np_factors((2, 3, 2), 2, dtype=np.float64)
        x = CP(w, fs)
        assert x.dtype == jnp.float64
        f = jax.jit(lambda w, fs: cp.to_dense(CP(w, fs)))
        check_grads(f, (x.weights, x.factors), order=1)  # multilinear: order 1 suffices


def test_random_std():
    s, shape, rank = 0.3, (24, 24, 24), 4
    keys = jax.random.split(jax.random.key(4), 16)
    dense = jax.jit(jax.vmap(lambda k: cp.random(k, shape, rank, std=s).to_dense()))(keys)
    assert abs(float(jnp.sqrt(jnp.mean(dense**2))) / s - 1) < 0.15
    default = cp.random(jax.random.key(5), (200, 3), rank)
    assert abs(float(jnp.std(default.factors[0])) - 1) < 0.1
    np.testing.assert_array_equal(default.weights, np.ones(rank))


def _noisy_low_rank(shape, rank, noise, seed):
    rng = np.random.default_rng(seed)
    fs = [rng.standard_normal((n, rank)) for n in shape]
    x = tl.cp_to_tensor((np.ones(rank), fs))
    e = rng.standard_normal(shape)
    return x + noise * np.linalg.norm(x) * e / np.linalg.norm(e)


@pytest.mark.parametrize("seed", [0, 1])
def test_from_dense_matches_tensorly(seed):
    x = _noisy_low_rank((8, 9, 10), 3, 0.1, seed)
    ours = FROM_DENSE(x, 3)
    theirs = parafac(x, 3, init="svd", n_iter_max=100, tol=1e-8)
    e_ours = _rel_err(ours.to_dense(), x)
    e_theirs = _rel_err(tl.cp_to_tensor(theirs), x)
    assert e_ours <= 1.05 * e_theirs, (e_ours, e_theirs)
    # Factors are unit-norm, weights carry the scale.
    for f in ours.factors:
        np.testing.assert_allclose(jnp.linalg.norm(f, axis=0), 1.0, rtol=1e-4)


def test_from_dense_exact_low_rank_and_random_init():
    x = _noisy_low_rank((6, 7, 5, 4), 2, 0.0, 3)
    ours = FROM_DENSE(x, 2, n_iter_max=200)
    assert _rel_err(ours.to_dense(), x) < 1e-3
    rnd = FROM_DENSE(x, 2, init="random", key=jax.random.key(1), n_iter_max=200)
    assert _rel_err(rnd.to_dense(), x) < 1e-2


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2,\)"):
        CP(jnp.ones(2), [jnp.ones((3, 2)), jnp.ones((4, 3))])
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        CP(jnp.ones((2, 2)), [jnp.ones((3, 2))])
    with pytest.raises(ValueError, match="at least one"):
        CP(jnp.ones(2), [])
    x = jnp.ones((3, 4, 5))
    with pytest.raises(ValueError, match=r"rank is required.*\(3, 4, 5\)"):
        cp.from_dense(x)
    with pytest.raises(ValueError, match="rtol"):
        cp.from_dense(x, 2, rtol=0.1)
    with pytest.raises(ValueError, match="rank must be"):
        cp.from_dense(x, 0)
    with pytest.raises(ValueError, match="init"):
        cp.from_dense(x, 2, init="nope")
    with pytest.raises(ValueError, match="shape"):
        cp.random(jax.random.key(0), (3, 0), 2)
    with pytest.raises(ValueError, match="expected a CP"):
        cp.to_dense(x)


def test_num_params_closed_form():
    x = CP(*_np_factors((10, 20, 30), 5))
    assert x.num_params == 5 * (1 + 10 + 20 + 30) == math.prod((5,)) + 5 * 60
