"""Tests of tnjax.ops.linalg: truncated / randomized SVD and tolerance-based ranks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tnjax.ops import linalg


def _low_rank_plus_noise(m, n, rank, noise, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    a /= np.linalg.norm(a)
    e = rng.standard_normal((m, n))
    return (a + noise * e / np.linalg.norm(e)).astype(np.float32)


@pytest.mark.parametrize("shape", [(7, 5), (5, 9), (12, 12)])
@pytest.mark.parametrize("rank", [1, 3])
def test_full_matches_numpy(shape, rank):
    a = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    u, s, vt = linalg.truncated_svd(a, rank, method="full")
    assert u.shape == (shape[0], rank) and s.shape == (rank,) and vt.shape == (rank, shape[1])
    s_ref = np.linalg.svd(a, compute_uv=False)[:rank]
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    u_ref, s_ref, vt_ref = np.linalg.svd(a, full_matrices=False)
    best = (u_ref[:, :rank] * s_ref[:rank]) @ vt_ref[:rank]
    np.testing.assert_allclose((u * s) @ vt, best, atol=1e-5)


def test_rank_is_clipped_to_matrix():
    a = np.ones((4, 6), np.float32)
    u, s, vt = linalg.truncated_svd(a, 10)
    assert u.shape == (4, 4) and s.shape == (4,) and vt.shape == (4, 6)


def test_randomized_matches_full_on_low_rank_plus_noise():
    a = _low_rank_plus_noise(300, 200, rank=8, noise=1e-2)
    uf, sf, vtf = linalg.truncated_svd(a, 8, method="full")
    ur, sr, vtr = linalg.truncated_svd(a, 8, method="randomized", key=jax.random.key(3))
    assert ur.shape == (300, 8) and vtr.shape == (8, 200)
    np.testing.assert_allclose(sr, sf, rtol=1e-3)
    err_full = np.linalg.norm(a - (uf * sf) @ vtf)
    err_rand = np.linalg.norm(a - (ur * sr) @ vtr)
    assert err_rand <= 1.01 * err_full
    # Orthonormal columns / rows.
    np.testing.assert_allclose(ur.T @ ur, np.eye(8), atol=1e-4)
    np.testing.assert_allclose(vtr @ vtr.T, np.eye(8), atol=1e-4)


def test_randomized_wide_matrix_and_no_power_iterations():
    a = _low_rank_plus_noise(40, 120, rank=4, noise=1e-4, seed=2)
    u, s, vt = linalg.truncated_svd(a, 4, method="randomized", n_iter=0, oversample=4)
    s_ref = np.linalg.svd(a, compute_uv=False)[:4]
    np.testing.assert_allclose(s, s_ref, rtol=1e-3)


def test_auto_rule():
    assert linalg.choose_method((2000, 1000), 10) == "randomized"
    assert linalg.choose_method((2000, 1000), 300) == "full"  # rank too large
    assert linalg.choose_method((2000, 500), 10) == "full"  # matrix too small
    assert linalg.choose_method((512, 10_000), 10) == "full"  # min(m, n) must exceed 512
    assert linalg.choose_method((513, 10_000), 10) == "randomized"
    assert linalg.choose_method((10_000, 600), 140, oversample=10) == "full"  # 150 = 600 / 4
    assert linalg.choose_method((10_000, 600), 139, oversample=10) == "randomized"


def test_auto_on_large_matrix_uses_randomized_and_is_accurate():
    a = _low_rank_plus_noise(700, 520, rank=5, noise=1e-3, seed=4)
    assert linalg.choose_method(a.shape, 5) == "randomized"
    u, s, vt = linalg.truncated_svd(a, 5)
    s_ref = np.linalg.svd(a, compute_uv=False)[:5]
    np.testing.assert_allclose(s, s_ref, rtol=1e-3)


def test_jit_equals_eager():
    a = _low_rank_plus_noise(60, 50, rank=3, noise=1e-2)
    key = jax.random.key(7)
    eager = linalg.truncated_svd(a, 3, key=key, method="randomized")
    jitted = jax.jit(lambda m, k: linalg.truncated_svd(m, 3, key=k, method="randomized"))(a, key)
    for x, y in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(5,\)"):
        linalg.truncated_svd(jnp.ones(5), 2)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        linalg.truncated_svd(jnp.ones((2, 3, 4)), 2)
    with pytest.raises(ValueError, match=r"rank must be >= 1.*\(4, 5\)"):
        linalg.truncated_svd(jnp.ones((4, 5)), 0)
    with pytest.raises(ValueError, match="method"):
        linalg.truncated_svd(jnp.ones((4, 5)), 2, method="qr")
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        linalg.svd_with_tolerance(jnp.ones((4, 5)))


def test_rank_for_tolerance():
    s = np.array([4.0, 2.0, 1.0, 0.5])
    total = np.linalg.norm(s)
    assert linalg.rank_for_tolerance(s, 0.0) == 4
    assert linalg.rank_for_tolerance(s, 1.0) == 1
    # ||S[2:]|| / ||S|| = sqrt(1.25) / sqrt(21.25) = 0.2425
    assert linalg.rank_for_tolerance(s, 0.25) == 2
    assert linalg.rank_for_tolerance(s, 0.24) == 3
    assert isinstance(linalg.rank_for_tolerance(s, 0.1), int)
    # With the full norm given, missing singular values count as discarded energy.
    assert linalg.rank_for_tolerance(s[:2], 0.25, norm=total) == 2
    assert linalg.rank_for_tolerance(s[:2], 0.2, norm=total) == 2  # cannot do better: all of S
    with pytest.raises(ValueError, match="rtol"):
        linalg.rank_for_tolerance(s, -1.0)


@pytest.mark.parametrize("rank_cap", [None, 30])
def test_svd_with_tolerance_meets_bound(rank_cap):
    a = _low_rank_plus_noise(80, 60, rank=6, noise=1e-3)
    u, s, vt = linalg.svd_with_tolerance(a, rank=rank_cap, rtol=1e-2)
    err = np.linalg.norm(a - (u * s) @ vt) / np.linalg.norm(a)
    assert err <= 1e-2
    assert s.shape[0] == 6  # the planted rank: smaller would miss signal, larger is noise
    u, s, vt = linalg.svd_with_tolerance(a, rank=2, rtol=1e-2)
    assert s.shape[0] == 2  # the cap wins
    u, s, vt = linalg.svd_with_tolerance(a, atol=1e-2 * float(np.linalg.norm(a)))
    assert s.shape[0] == 6


def test_flip_signs():
    a = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    u, s, vt = linalg.truncated_svd(a, 4)
    uf, vtf = linalg.flip_signs(-u, -vt)
    np.testing.assert_allclose((uf * s) @ vtf, a, atol=1e-5)
    idx = np.argmax(np.abs(uf), axis=0)
    assert np.all(np.asarray(uf)[idx, np.arange(4)] > 0)
    u2, vt2 = linalg.flip_signs(u, vt)
    np.testing.assert_allclose(u2, uf, atol=1e-6)
