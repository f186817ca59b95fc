"""Priors: closed-form lambda updates, sufficient statistics, log-prior and its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import bayes
from tnjax import nn as tnn


def make(cls, *args, **kwargs):
    """A layer with random NumPy cores (N(0, 0.5^2)): no eager JAX init to compile."""
    shapes = [c.shape for c in nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs)).cores]
    rng = np.random.default_rng(0)
    cores = [0.5 * rng.normal(size=s).astype(np.float32) for s in shapes]
    return cls(*args, rngs=nnx.Rngs(0), _cores=cores, **kwargs)


def _objective(lam, M, D, prior):
    """Per-rank objective -D log l - M / (2 l^2) + log p(l), in NumPy float64."""
    hyper = -np.log(lam) if prior.kind == "log_uniform" else -np.log(prior.eta**2 + lam**2)
    return -D * np.log(lam) - M / (2 * lam**2) + hyper


def _brute_force_argmax(M, D, prior):
    """Grid over log(lambda), then golden-section refinement around the best point."""
    grid = np.linspace(np.log(1e-9), np.log(1e4), 20001)
    i = int(np.argmax(_objective(np.exp(grid), M, D, prior)))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _objective(np.exp(a), M, D, prior) > _objective(np.exp(b), M, D, prior):
            hi = b
        else:
            lo = a
    return np.exp((lo + hi) / 2)


PRIOR_CASES = [
    bayes.RankPrior("log_uniform"),
    bayes.RankPrior("half_cauchy", eta=1.0),
    bayes.RankPrior("half_cauchy", eta=0.1),
    bayes.RankPrior("half_cauchy", eta=3.0),
]
MD_CASES = [(1e-6, 4.0), (0.05, 1.0), (0.7, 12.0), (3.0, 3.0), (40.0, 50.0), (1e3, 7.0)]


@pytest.mark.parametrize("prior", PRIOR_CASES, ids=lambda p: f"{p.kind}-{p.eta}")
def test_lambda_update_maximises_the_objective(prior):
    M = np.array([m for m, _ in MD_CASES])
    D = np.array([d for _, d in MD_CASES])
    got = np.asarray(bayes.lambda_update(jnp.asarray(M, jnp.float32), D, prior))
    want = np.array([_brute_force_argmax(m, d, prior) for m, d in MD_CASES])
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_lambda_update_small_M_has_no_cancellation():
    """float32, M << eta^2 D: s ~ M / D; the textbook form would cancel to 0."""
    prior = bayes.RankPrior("half_cauchy", eta=1.0)
    M, D = np.array([1e-9, 1e-12, 0.0]), np.array([1000.0, 50.0, 10.0])
    got = np.asarray(bayes.lambda_update(jnp.asarray(M, jnp.float32), D, prior))
    b = M - D
    root = np.sqrt(M**2 + (2 * D + 8) * M + D**2)
    want = np.sqrt(np.maximum(2 * M / (root - b), bayes.TINY))  # float64 reference
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.isfinite(np.log(got)))
    lu = bayes.lambda_update(jnp.zeros(3), D, bayes.RankPrior("log_uniform"))
    np.testing.assert_allclose(lu, np.sqrt(bayes.TINY), rtol=1e-6)


def test_rank_prior_validation():
    with pytest.raises(ValueError, match="log_uniform"):
        bayes.RankPrior("horseshoe")
    with pytest.raises(ValueError, match="eta"):
        bayes.RankPrior(eta=0.0)
    with pytest.raises(ValueError, match="core_std"):
        bayes.RankPrior(core_std=-1.0)


def _ttm_layer():
    return make(
        tnn.Linear, 12, 20, format="ttm", rank=(3, 2), in_modes=(2, 3, 2), out_modes=(5, 2, 2)
    )


def test_group_statistics_against_numpy_loop():
    layer = _ttm_layer()
    cores = [np.asarray(c[...], np.float64) for c in layer.cores]
    rng = np.random.default_rng(0)
    scales = [np.abs(rng.normal(size=c.shape)) * 0.1 for c in cores]
    for g in bayes.rank_groups(layer):
        for sc in (None, scales):
            M, D = bayes.group_statistics(
                layer.cores, g, None if sc is None else [jnp.asarray(s) for s in sc]
            )
            want_m, want_d = np.zeros(g.size), np.zeros(g.size)
            for r in range(g.size):
                for ci, axis in g.slices:
                    sl = np.take(cores[ci], r, axis=axis)
                    want_m[r] += np.sum(sl**2)
                    if sc is not None:
                        want_m[r] += np.sum(np.take(sc[ci], r, axis=axis) ** 2)
                    want_d[r] += sl.size
            np.testing.assert_allclose(M, want_m, rtol=1e-5)
            np.testing.assert_array_equal(D, want_d)


def test_group_statistics_rejects_wrong_shapes():
    layer = _ttm_layer()
    g = bayes.rank_groups(layer)[0]
    bad = bayes.RankGroup(bond=0, size=5, slices=g.slices)
    with pytest.raises(ValueError, match="size 5"):
        bayes.group_statistics(layer.cores, bad)
    with pytest.raises(ValueError, match="scales"):
        bayes.group_statistics(layer.cores, g, [jnp.ones((2,))] * 3)


@pytest.mark.parametrize("fmt", ["tt", "tucker"])
@pytest.mark.parametrize("kind", ["log_uniform", "half_cauchy"])
def test_log_prior_value_and_gradient(fmt, kind):
    """Against a NumPy value and the analytic gradient -core / lambda^2 (summed over groups)."""
    prior = bayes.RankPrior(kind, eta=0.5, core_std=2.0)
    rank = (2, 3, 2, 1) if fmt == "tucker" else (2, 3, 2)
    layer = make(tnn.Linear, 6, 6, format=fmt, rank=rank, in_modes=(2, 3), out_modes=(3, 2))
    groups = bayes.rank_groups(layer)
    fixed = bayes.fixed_prior_cores(layer)
    rng = np.random.default_rng(0)
    lambdas = [jnp.asarray(rng.uniform(0.3, 2.0, g.size), jnp.float32) for g in groups]
    cores = [c[...] for c in layer.cores]

    @jax.jit
    def f(cores, lambdas):
        return bayes.log_prior(cores, groups, lambdas, prior, core_prior_cores=fixed)

    # value
    np_cores = [np.asarray(c, np.float64) for c in cores]
    want = 0.0
    want_grad = [np.zeros_like(c) for c in np_cores]
    for g, lam in zip(groups, lambdas, strict=True):
        lam = np.asarray(lam, np.float64)
        for ci, axis in g.slices:
            shape = [1] * np_cores[ci].ndim
            shape[axis] = g.size
            lb = lam.reshape(shape)
            want += np.sum(-0.5 * np_cores[ci] ** 2 / lb**2 - np.log(lb))
            want_grad[ci] -= np_cores[ci] / lb**2
        want += -np.sum(np.log(lam)) if kind == "log_uniform" else -np.sum(np.log(0.25 + lam**2))
    for ci in fixed:
        want += -0.5 * np.sum(np_cores[ci] ** 2) / 4.0
        want_grad[ci] -= np_cores[ci] / 4.0
    np.testing.assert_allclose(f(cores, lambdas), want, rtol=1e-5)
    grads = jax.jit(jax.grad(f))(cores, lambdas)
    for got, w in zip(grads, want_grad, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    # and a central finite difference along a random direction, in float64
    with jax.enable_x64(True):
        c64 = [jnp.asarray(c, jnp.float64) for c in np_cores]
        l64 = [jnp.asarray(lam, jnp.float64) for lam in lambdas]
        v = [jnp.asarray(rng.normal(size=c.shape)) for c in np_cores]
        eps = 1e-6
        plus = [c + eps * d for c, d in zip(c64, v, strict=True)]
        minus = [c - eps * d for c, d in zip(c64, v, strict=True)]
        fd = (f(plus, l64) - f(minus, l64)) / (2 * eps)
        g64 = jax.grad(f)(c64, l64)
        analytic = sum(
            float(np.sum(np.asarray(g) * np.asarray(d))) for g, d in zip(g64, v, strict=True)
        )
        np.testing.assert_allclose(fd, analytic, rtol=1e-6)


@pytest.mark.parametrize("prior", PRIOR_CASES[:2], ids=lambda p: p.kind)
def test_closed_form_is_a_stationary_point_of_log_prior(prior):
    """d log_prior / d lambda = 0 at lambda = lambda_update(group_statistics(...))."""
    with jax.enable_x64(True):
        layer = _ttm_layer()
        cores = [jnp.asarray(c[...], jnp.float64) for c in layer.cores]
        groups = bayes.rank_groups(layer)
        stats = [bayes.group_statistics(cores, g) for g in groups]
        lambdas = [bayes.lambda_update(M, D, prior) for M, D in stats]
        grad = jax.jit(jax.grad(lambda lams: bayes.log_prior(cores, groups, lams, prior)))(lambdas)
        for gr, lam, (_, D) in zip(grad, lambdas, stats, strict=True):
            scale = D / lam  # size of the individual terms of the derivative
            np.testing.assert_allclose(gr / scale, 0.0, atol=1e-10)


def test_kl_gaussian_against_numpy():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=(3, 4, 5)), rng.uniform(0.1, 1.0, size=(3, 4, 5))
    lam = rng.uniform(0.5, 2.0, size=5)
    want = 0.5 * np.sum(sigma**2 / lam**2 + mu**2 / lam**2 - 1 - np.log(sigma**2 / lam**2))
    got = bayes.kl_gaussian(jnp.asarray(mu), jnp.asarray(sigma), jnp.asarray(lam)[None, None, :])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(bayes.kl_gaussian(0.0, 2.0, 2.0), 0.0, atol=1e-7)
