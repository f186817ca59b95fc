"""NumPyro SVI of the rank priors: prior stds, the minibatch ELBO against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tnjax import bayes
from tnjax import nn as tnn
from tnjax.bayes import svi

PRIOR = bayes.RankPrior("half_cauchy", eta=1.0, core_std=3.0)


class Net(nnx.Module):
    """One tensorized Linear, so `tensor_layers` names it "fc"."""

    def __init__(self, layer):
        self.fc = layer

    def __call__(self, x):
        return self.fc(x)


def _net(fmt, rank, seed=0):
    layer = tnn.Linear(
        12, 6, format=fmt, in_modes=(3, 4), out_modes=(2, 3), rank=rank, rngs=nnx.Rngs(seed)
    )
    return Net(layer)


def _lambdas(layer, seed=1):
    rng = np.random.default_rng(seed)
    return [
        jnp.asarray(rng.uniform(0.2, 2.0, g.size), jnp.float32) for g in bayes.rank_groups(layer)
    ]


def test_prior_stds_tt_matrix_interior_core_combines_both_bonds():
    layer = tnn.Linear(
        24, 24, format="ttm", in_modes=(2, 3, 4), out_modes=(4, 3, 2), rank=3, rngs=nnx.Rngs(0)
    )
    lams = _lambdas(layer)
    stds = svi.prior_stds(layer, lams, PRIOR)
    shapes = [c[...].shape for c in layer.cores]
    middle = np.broadcast_to(np.asarray(stds[1]), shapes[1])
    a, b = np.asarray(lams[0]), np.asarray(lams[1])
    expected = 1 / np.sqrt(1 / a[:, None, None, None] ** 2 + 1 / b[None, None, None, :] ** 2)
    np.testing.assert_allclose(middle, np.broadcast_to(expected, shapes[1]), rtol=1e-6)
    first = np.broadcast_to(np.asarray(stds[0]), shapes[0])
    np.testing.assert_allclose(first[0, 0, 0, :], a, rtol=1e-6)


def test_prior_stds_tucker_core_has_the_fixed_std_and_cp_factors_share_lambda():
    tucker = _net("tucker", 2).fc
    stds = svi.prior_stds(tucker, _lambdas(tucker), PRIOR)
    for ci in bayes.fixed_prior_cores(tucker):
        assert np.all(np.asarray(stds[ci]) == PRIOR.core_std)
    cp = _net("cp", 3).fc
    lam = _lambdas(cp)
    for s, core in zip(svi.prior_stds(cp, lam, PRIOR), cp.cores, strict=True):
        np.testing.assert_allclose(
            np.broadcast_to(np.asarray(s), core[...].shape)[0], lam[0], rtol=1e-6
        )
    with pytest.raises(ValueError, match="rank groups"):
        svi.prior_stds(cp, lam + lam, PRIOR)


def _data(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, 12)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 6, batch))
    return x, y


@pytest.mark.parametrize("fmt", ["cp", "tucker", "ttm"])
def test_elbo_with_vanishing_sigma_is_nll_plus_scaled_closed_form_kl(fmt):
    model = _net(fmt, 2)
    svi.attach_scales(model, 1e-6)
    lams = _lambdas(model.fc)
    x, y = _data()
    n, w = 1000, 7.0
    loss, out = svi.elbo_loss(
        model,
        {"fc": lams},
        PRIOR,
        forward=lambda m: m(x),
        likelihood=svi.LIKELIHOODS["classification"],
        labels=y,
        num_data=n,
        rng=jax.random.key(0),
        kl_weight=w,
    )
    logits = model(x)  # the means (cores restored after the call)
    np.testing.assert_allclose(np.asarray(out), np.asarray(logits), rtol=1e-4, atol=1e-5)
    nll = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])
    sigmas = svi.scales_of(model)["fc"]
    stds = svi.prior_stds(model.fc, lams, PRIOR)
    kl = sum(
        bayes.kl_gaussian(c[...], s, sd)
        for c, s, sd in zip(model.fc.cores, sigmas, stds, strict=True)
    )
    np.testing.assert_allclose(float(loss), float(nll + w * kl / n), rtol=1e-4)


def test_elbo_grad_reaches_means_and_scales_and_jit_matches_eager():
    model = _net("ttm", 3)
    svi.attach_scales(model, 0.1)
    lams = {"fc": _lambdas(model.fc)}
    x, y = _data()
    graph, state = nnx.split(model)

    def loss_of(state, key):
        m = nnx.merge(graph, state)
        return svi.elbo_loss(
            m,
            lams,
            PRIOR,
            forward=lambda mm: mm(x),
            likelihood=svi.LIKELIHOODS["classification"],
            labels=y,
            num_data=100,
            rng=key,
        )[0]

    key = jax.random.key(3)
    eager = loss_of(state, key)
    jitted = jax.jit(loss_of)(state, key)
    np.testing.assert_allclose(float(eager), float(jitted), rtol=1e-5)
    assert float(loss_of(state, jax.random.key(4))) != float(eager)  # a new sample
    grads = jax.grad(loss_of)(state, key)
    for path, g in nnx.to_flat_state(grads):
        assert np.all(np.isfinite(np.asarray(g[...]))), path
        if "cores" in path or "core_log_scales" in path:
            assert float(jnp.max(jnp.abs(g[...]))) > 0, path


def test_sampled_outputs_match_the_closed_form_mean_and_variance():
    """A CP rank-1 W = u v^T under q: E[x W] = (x mu_u) mu_v, Var from independence."""
    layer = tnn.Linear(3, 2, format="cp", in_modes=(3,), out_modes=(2,), rank=1, rngs=nnx.Rngs(0))
    model = Net(layer)
    svi.attach_scales(model, 0.3)
    x = jnp.asarray([[1.0, -2.0, 0.5]])
    y = jnp.asarray([[0.3, -0.1]])
    lams = {"fc": [jnp.asarray([1.0], jnp.float32)]}
    graph, state = nnx.split(model)

    def one(key):
        _, out = svi.elbo_loss(
            nnx.merge(graph, state, copy=True),
            lams,
            PRIOR,
            forward=lambda m: m(x),
            likelihood=svi.LIKELIHOODS["regression"],
            labels=y,
            num_data=1,
            rng=key,
        )
        return out[0]

    outs = np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(0), 20000)))  # (S, 2)
    cores = [np.asarray(c[...]) for c in layer.cores]
    sig = [np.asarray(s) for s in svi.scales_of(model)["fc"]]
    by_len = {c.shape[0]: (c[:, 0], s[:, 0]) for c, s in zip(cores, sig, strict=True)}
    assert sorted(by_len) == [2, 3] and all(c.shape[1] == 1 for c in cores)
    (mu_u, s_u), (mu_v, s_v) = by_len[3], by_len[2]
    xv = np.asarray(x[0])
    a_mean, a_var = xv @ mu_u, (xv**2) @ (s_u**2)
    mean = a_mean * mu_v
    var = (a_var + a_mean**2) * (s_v**2 + mu_v**2) - mean**2
    se = np.sqrt(var / len(outs))
    np.testing.assert_array_less(np.abs(outs.mean(0) - mean), 5 * se)
    np.testing.assert_allclose(outs.var(0), var, rtol=0.05)


def test_bad_inputs_are_named():
    model = _net("cp", 2)
    x, y = _data()
    kwargs = dict(
        forward=lambda m: m(x),
        likelihood=svi.LIKELIHOODS["classification"],
        labels=y,
        rng=jax.random.key(0),
    )
    lams = {"fc": _lambdas(model.fc)}
    with pytest.raises(ValueError, match="attach_scales"):
        svi.elbo_loss(model, lams, PRIOR, num_data=100, **kwargs)
    svi.attach_scales(model, 1e-3)
    with pytest.raises(ValueError, match="smaller than the minibatch"):
        svi.elbo_loss(model, lams, PRIOR, num_data=4, **kwargs)
    with pytest.raises(ValueError, match="init_scale"):
        svi.attach_scales(model, 0.0)
    sigmas = svi.detach_scales(model)
    assert set(sigmas) == {"fc"} and not hasattr(model.fc, "core_log_scales")
