"""Tests of the Tucker format against TensorLy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from jax.test_util import check_grads
from tensorly.decomposition import tucker as tl_tucker

from tnjax.formats import Tucker, tucker

# Fixed-rank decompositions are jitted here, as callers would: one compilation instead of
# one per eager op keeps the suite fast.
FROM_DENSE = jax.jit(tucker.from_dense, static_argnames=("rank", "n_iter_max", "tol"))
SHAPES = [(3, 5), (3, 1, 5), (5, 3, 2, 3), (3, 2, 3, 1, 3), (2, 3, 1, 3, 2, 3)]


def _np_tucker(shape, ranks, seed=0, dtype=np.float32, batch=()):
    rng = np.random.default_rng(seed)
    core = rng.standard_normal(batch + tuple(ranks)).astype(dtype)
    fs = [
        rng.standard_normal(batch + (n, r)).astype(dtype) for n, r in zip(shape, ranks, strict=True)
    ]
    return core, fs


def _rel_err(approx, x):
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(np.asarray(approx, np.float64) - x) / np.linalg.norm(x))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 3])
def test_to_dense_matches_tensorly(shape, rank):
    ranks = tuple(min(rank, n) + (k % 2) for k, n in enumerate(shape))  # mixed, some > I_n
    core, fs = _np_tucker(shape, ranks)
    x = Tucker(core, fs)
    # Jitted to compile once per shape; eager == jit is checked in test_jit_*.
    dense = jax.jit(tucker.to_dense)(x)
    np.testing.assert_allclose(dense, tl.tucker_to_tensor((core, fs)), rtol=1e-5, atol=1e-5)
    assert x.shape == shape and x.ranks == ranks
    assert (
        x.num_params
        == tucker.num_params(x)
        == math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks, strict=True))
    )


def test_jit_vmap_grads():
    x = Tucker(*_np_tucker((3, 4, 5), (2, 3, 2)))
    np.testing.assert_allclose(jax.jit(tucker.to_dense)(x), x.to_dense(), rtol=1e-6)
    core, fs = _np_tucker((3, 4, 5), (2, 2, 2), seed=1, batch=(3,))
    dense = jax.vmap(lambda c, fs: Tucker(c, fs).to_dense())(core, fs)
    for b in range(3):
        one = Tucker(core[b], [f[b] for f in fs])
        np.testing.assert_allclose(dense[b], one.to_dense(), rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        y = Tucker(*_np_tucker((2, 3, 2), (2, 2, 1), dtype=np.float64))
        f = jax.jit(lambda c, fs: tucker.to_dense(Tucker(c, fs)))
        check_grads(f, (y.core, y.factors), order=1)


def test_random_std():
    s, shape, ranks = 2.0, (24, 24, 24), (3, 4, 5)
    keys = jax.random.split(jax.random.key(4), 16)
    dense = jax.jit(jax.vmap(lambda k: tucker.random(k, shape, ranks, std=s).to_dense()))(keys)
    assert abs(float(jnp.sqrt(jnp.mean(dense**2))) / s - 1) < 0.15


def _noisy_low_rank(shape, ranks, noise, seed):
    rng = np.random.default_rng(seed)
    core = rng.standard_normal(ranks)
    fs = [rng.standard_normal((n, r)) for n, r in zip(shape, ranks, strict=True)]
    x = tl.tucker_to_tensor((core, fs))
    e = rng.standard_normal(shape)
    return x + noise * np.linalg.norm(x) * e / np.linalg.norm(e)


@pytest.mark.parametrize(
    "x,rank",
    [
        (_noisy_low_rank((8, 9, 10), (3, 4, 2), 0.2, 0), (3, 4, 2)),
        (np.random.default_rng(1).standard_normal((6, 7, 5, 4)), 2),
    ],
)
def test_from_dense_matches_tensorly(x, rank):
    ours = FROM_DENSE(x, rank)
    ranks = [rank] * x.ndim if isinstance(rank, int) else list(rank)
    theirs = tl_tucker(x, ranks, init="svd", n_iter_max=100)
    e_ours, e_theirs = _rel_err(ours.to_dense(), x), _rel_err(tl.tucker_to_tensor(theirs), x)
    assert e_ours <= 1.01 * e_theirs, (e_ours, e_theirs)
    for f in ours.factors:  # orthonormal factors
        np.testing.assert_allclose(f.T @ f, np.eye(f.shape[1]), atol=1e-4)


def test_full_rank_exact_and_clipping():
    x = np.random.default_rng(2).standard_normal((3, 4, 5))
    y = FROM_DENSE(x, 100)
    assert y.ranks == (3, 4, 5)
    assert _rel_err(y.to_dense(), x) < 1e-5
    # R_1 = 5 would exceed R_2 * R_3 = 2 * 2; it is clipped to 4 (and to I_1 = 3).
    z = FROM_DENSE(np.random.default_rng(3).standard_normal((6, 5, 5)), (6, 2, 2))
    assert z.ranks == (4, 2, 2)


def test_rtol():
    x = _noisy_low_rank((8, 9, 10), (2, 3, 2), 1e-3, 4)
    y = tucker.from_dense(x, rtol=1e-2)
    assert y.ranks == (2, 3, 2)
    assert _rel_err(y.to_dense(), x) <= 1e-2
    capped = tucker.from_dense(x, (1, 2, 2), rtol=1e-2, n_iter_max=0)  # HOSVD only
    assert capped.ranks == (1, 2, 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"factor 1 has shape \(4, 2\).*\(2, 3\)"):
        Tucker(jnp.ones((2, 3)), [jnp.ones((3, 2)), jnp.ones((4, 2))])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        Tucker(jnp.ones((2, 3)), [jnp.ones((3, 2))])
    x = jnp.ones((3, 4, 5))
    with pytest.raises(ValueError, match=r"rank.*rtol.*\(3, 4, 5\)"):
        tucker.from_dense(x)
    with pytest.raises(ValueError, match="3 ints"):
        tucker.from_dense(x, (2, 2))
    with pytest.raises(ValueError, match=">= 1"):
        tucker.from_dense(x, 0)
    with pytest.raises(ValueError, match="rtol"):
        tucker.from_dense(x, rtol=-1.0)
