"""EM on layers with planted zero rank slices: lambdas of the zero slices vanish."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tnjax import bayes
from tnjax import nn as tnn

PRIORS = [bayes.RankPrior("log_uniform"), bayes.RankPrior("half_cauchy", eta=1.0)]


def make(cls, *args, seed=0, scale=0.5, **kwargs):
    """A layer with random NumPy cores (N(0, scale^2)): no eager JAX init to compile."""
    shapes = [c.shape for c in nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs)).cores]
    rng = np.random.default_rng(seed)
    cores = [scale * rng.normal(size=s).astype(np.float32) for s in shapes]
    return cls(*args, rngs=nnx.Rngs(0), _cores=cores, **kwargs)


def plant(layer, keep, noise=0.0, seed=0):
    """Zeroes (or shrinks to `noise` times their RMS) the slices a False mask removes."""
    rng = np.random.default_rng(seed)
    cores = [np.array(c[...]) for c in layer.cores]
    for g, mask in zip(bayes.rank_groups(layer), keep, strict=True):
        removed = np.nonzero(~np.asarray(mask))[0]
        for ci, axis in g.slices:
            c = np.moveaxis(cores[ci], axis, 0)
            rms = np.sqrt(np.mean(c**2))
            c[removed] = noise * rms * rng.normal(size=c[removed].shape)
            cores[ci] = np.moveaxis(c, 0, axis)
    for var, c in zip(layer.cores, cores, strict=True):
        var[...] = jnp.asarray(c)


def masks(sizes, kept):
    out = []
    for size, idx in zip(sizes, kept, strict=True):
        m = np.zeros(size, bool)
        m[list(idx)] = True
        out.append(m)
    return out


def run_em(model, prior, iters=60, step_size=0.5):
    """Damped EM with fixed cores, from lambda = 1, inside jit on the split model."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, lambdas):
        return bayes.em_update(nnx.merge(graphdef, state), lambdas, prior, step_size=step_size)

    lambdas = {
        n: [jnp.ones(g.size) for g in bayes.rank_groups(l)] for n, l in bayes.tensor_layers(model)
    }
    history = []
    for _ in range(iters):
        lambdas = step(state, lambdas)
        history.append(lambdas)
    return lambdas, history


LAYERS = {
    # TT-matrix 64 -> 64, TT ranks (1, 8, 8, 1); only 3 and 2 slices of the bonds are non-zero
    "ttm": (
        lambda: make(tnn.Linear, 64, 64, format="ttm", rank=8, num_modes=3),
        [(1, 4, 6), (0, 5)],
    ),
    "cp": (
        lambda: make(tnn.Linear, 64, 64, format="cp", rank=8, num_modes=3),
        [(0, 2, 3, 7)],
    ),
    "tucker": (
        lambda: make(tnn.Linear, 64, 64, format="tucker", rank=(5, 5, 5, 5), num_modes=2),
        [(1, 2), (0, 3, 4), (2,), (0, 1, 2, 3)],
    ),
}


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: p.kind)
@pytest.mark.parametrize("fmt", list(LAYERS))
@pytest.mark.parametrize("noise", [0.0, 1e-4])
def test_em_recovers_planted_ranks(fmt, prior, noise):
    build, kept = LAYERS[fmt]
    layer = build()
    groups = bayes.rank_groups(layer)
    keep = masks([g.size for g in groups], kept)
    plant(layer, keep, noise=noise)
    lambdas, history = run_em(layer, prior)
    (name,) = lambdas
    lams = [np.asarray(lam) for lam in lambdas[name]]
    top = max(lam.max() for lam in lams)
    # converged: the last step moved lambda^2 by a negligible amount
    for new, old in zip(history[-1][name], history[-2][name], strict=True):
        np.testing.assert_allclose(
            np.square(new), np.square(old), rtol=0, atol=1e-12 * top**2 + 1e-30
        )
    # ... to the closed form on the (fixed) cores
    cores = [c[...] for c in layer.cores]
    for g, lam, m in zip(groups, lams, keep, strict=True):
        fixed_point = np.asarray(bayes.lambda_update(*bayes.group_statistics(cores, g), prior))
        np.testing.assert_allclose(lam[m], fixed_point[m], rtol=1e-5)
        assert np.all(lam[~m] < (1e-6 if noise == 0 else 1e-3) * top)
    got = bayes.read_ranks(lams)
    for g, mask, want in zip(groups, got, keep, strict=True):
        np.testing.assert_array_equal(mask, want, err_msg=f"bond {g.bond}")
    assert tuple(int(m.sum()) for m in got) == tuple(len(k) for k in kept)
    if fmt == "ttm":
        assert layer.ranks == (8, 8) and tuple(int(m.sum()) for m in got) == (3, 2)


def test_init_lambdas_is_the_closed_form_and_em_validates():
    layer = LAYERS["ttm"][0]()
    prior = PRIORS[1]
    lambdas = bayes.init_lambdas(layer, prior)
    one = bayes.em_update(layer, lambdas, prior)  # step 1 from the closed form: unchanged
    for a, b in zip(lambdas["Linear"], one["Linear"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="step_size"):
        bayes.em_update(layer, lambdas, prior, step_size=0.0)
    with pytest.raises(ValueError, match="does not have"):
        bayes.em_update(layer, {"nope": lambdas["Linear"]}, prior)
    with pytest.raises(ValueError, match="shape"):
        bayes.em_update(layer, {"Linear": [jnp.ones(3), jnp.ones(8)]}, prior)


def test_model_log_prior_gradient_flows_to_cores_only():
    layer = LAYERS["tucker"][0]()
    prior = PRIORS[1]
    lambdas = bayes.init_lambdas(layer, prior)
    graphdef, state = nnx.split(layer)

    @jax.jit
    def loss(state, lambdas):
        return -bayes.model_log_prior(nnx.merge(graphdef, state), lambdas, prior)

    g_state, g_lam = jax.grad(loss, argnums=(0, 1))(state, lambdas)
    want = -bayes.layer_log_prior(layer, lambdas["Linear"], prior)
    np.testing.assert_allclose(loss(state, lambdas), want, rtol=1e-5)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in g_lam["Linear"])
    core_grads = nnx.state(nnx.merge(graphdef, g_state), tnn.Core)
    leaves = jax.tree.leaves(core_grads)
    assert len(leaves) == 5 and all(float(jnp.abs(x).max()) > 0 for x in leaves)


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: p.kind)
def test_map_training_with_em_shrinks_to_the_true_ranks(prior):
    """End to end: fit a TT-matrix (ranks 8, 8) to a kernel of TT ranks (3, 2) by MAP with
    an EM update of lambda every step; the read-out finds (about) the true ranks and
    pruning keeps the fit."""
    kw = dict(format="ttm", in_modes=(4, 4, 4), out_modes=(4, 4, 4), use_bias=False)
    layer = make(tnn.Linear, 64, 64, rank=(8, 8), scale=0.3, **kw)  # a small start
    target = make(tnn.Linear, 64, 64, rank=(3, 2), seed=1, **kw).kernel()
    target = target / jnp.std(target)
    # noise std 0.5: strong enough a likelihood to fit, weak enough for the prior to prune
    # (with much weaker data the joint MAP collapses to zero; see tnjax.bayes.priors)
    noise, steps = 0.5, 2000
    lambdas = bayes.init_lambdas(layer, prior)
    graphdef, state = nnx.split(layer)
    opt = optax.adam(optax.exponential_decay(1e-2, steps, 1e-2))
    opt_state = opt.init(state)

    @jax.jit
    def step(state, opt_state, lambdas):
        def loss(state):
            m = nnx.merge(graphdef, state)
            nll = 0.5 * jnp.sum(jnp.square(m.kernel() - target)) / noise**2
            return nll - bayes.model_log_prior(m, lambdas, prior)

        grads = jax.grad(loss)(state)
        updates, opt_state = opt.update(grads, opt_state)
        state = optax.apply_updates(state, updates)
        return state, opt_state, bayes.em_update(nnx.merge(graphdef, state), lambdas, prior)

    for _ in range(steps):
        state, opt_state, lambdas = step(state, opt_state, lambdas)
    layer = nnx.merge(graphdef, state)
    kernel = layer.kernel()
    assert float(jnp.linalg.norm(kernel - target) / jnp.linalg.norm(target)) < 0.05
    ranks = tuple(int(m.sum()) for m in bayes.read_ranks(lambdas["Linear"]))
    assert all(t <= r <= t + 1 for r, t in zip(ranks, (3, 2), strict=True)), ranks
    pruned, report, _ = bayes.prune_model(layer, lambdas)
    assert report["Linear"]["ranks_after"] == ranks == pruned.ranks
    assert report["Linear"]["params_after"] < report["Linear"]["params_before"] / 4
    rel = jnp.linalg.norm(pruned.kernel() - kernel) / jnp.linalg.norm(kernel)
    assert float(rel) < 1e-3
