"""Stochastic variational inference for the rank priors, with NumPyro.

The variational family of the paper (section 2 of papers/bayes_paper.md): a mean-field
Gaussian q(f) = N(mu, sigma^2) on every core entry, with lambda a point estimate updated in
closed form (`em_update` with `scales`, so M_r includes sigma^2). Here

* mu is the layer's cores themselves (the `Core` params), so the posterior mean is the model
  that is evaluated, pruned and served;
* log sigma lives beside them as `CoreLogScale` params (`attach_scales`), trained by the same
  optimizer;
* the negative ELBO of a minibatch of B out of N examples is computed by NumPyro's
  `TraceMeanField_ELBO` (analytic Gaussian KL) on a NumPyro model that samples every core
  from its prior N(0, prior_std^2) (`prior_stds`), writes the sample into the tnjax layer,
  runs the network and observes the labels inside `numpyro.plate("data", N,
  subsample_size=B)` (the N/B scaling), and a guide that samples every core from
  N(mu, sigma^2) (one reparameterised sample per step).

`elbo_loss` returns -ELBO / N: mean NLL of the minibatch + kl_weight * KL / N, where
`kl_weight` is the prior tempering / KL warm-up multiplier (1 = the true ELBO).

Prior std of an entry tied to several rank groups (an interior TT core entry sits on two
bonds): the product of the group Gaussians is the Gaussian with precision
sum_g 1 / lambda_g^2, which is what `prior_stds` returns; cores in no group get the fixed
N(0, core_std^2) prior (the Tucker core).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from flax import nnx
from numpyro import handlers
from numpyro.infer import TraceMeanField_ELBO

from tnjax.bayes.priors import RankPrior
from tnjax.bayes.ranks import fixed_prior_cores, rank_groups, tensor_layers

__all__ = [
    "CoreLogScale",
    "attach_scales",
    "scales_of",
    "detach_scales",
    "prior_stds",
    "elbo_loss",
    "LIKELIHOODS",
]

# numpyro's `handlers.scale` rejects a concrete scale <= 0; a zero KL weight (the start of a
# warm-up) is floored here, which leaves the KL term numerically zero.
_MIN_KL_WEIGHT = 1e-30


class CoreLogScale(nnx.Param):
    """log sigma of the mean-field Gaussian posterior of one core (the core's shape)."""


def attach_scales(model: nnx.Module, init_scale: float) -> None:
    """Gives every tensorized layer `core_log_scales`: sigma = init_scale * RMS(core).

    In place. `init_scale` > 0 is relative to each core's root-mean-square entry (the
    authors start sigma tiny, 1e-9 absolute; 1e-3 relative keeps the first steps close to
    MAP while the gradient w.r.t. sigma is not negligible).
    """
    if not (math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
    for _, layer in tensor_layers(model):
        logs = []
        for core in layer.cores:
            x = core[...]
            rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
            value = jnp.log(init_scale * jnp.maximum(rms, 1e-12))
            logs.append(CoreLogScale(jnp.full(x.shape, value, x.dtype)))
        layer.core_log_scales = nnx.List(logs)


def scales_of(model: nnx.Module) -> dict[str, list[jax.Array]]:
    """{layer name: [sigma per core]} of the layers that have `core_log_scales`."""
    return {
        name: [jnp.exp(v[...]) for v in layer.core_log_scales]
        for name, layer in tensor_layers(model)
        if hasattr(layer, "core_log_scales")
    }


def detach_scales(model: nnx.Module) -> dict[str, list[jax.Array]]:
    """Removes `core_log_scales` from every layer (in place); returns the sigmas it had.

    What is served is the posterior mean (the cores); the scales double the parameter count
    and are dropped before reporting sizes or pruning.
    """
    sigmas = scales_of(model)
    for _, layer in tensor_layers(model):
        if hasattr(layer, "core_log_scales"):
            del layer.core_log_scales
    return sigmas


def prior_stds(
    layer: nnx.Module, lambdas: Sequence[jax.typing.ArrayLike], prior: RankPrior
) -> list[jax.Array]:
    """Prior standard deviation of every entry of every core of `layer`.

    Returns:
      One array per core, broadcastable to the core's shape: 1 / sqrt(sum over the core's
      rank groups of 1 / lambda_r^2) along the tied axes, or `prior.core_std` for a core in
      no group (the Tucker core).
    """
    groups = rank_groups(layer)
    if len(groups) != len(lambdas):
        raise ValueError(f"{len(groups)} rank groups but {len(lambdas)} lambda vectors")
    shapes = [c[...].shape for c in layer.cores]
    precision: list[Any] = [None] * len(shapes)
    for g, lam in zip(groups, lambdas, strict=True):
        lam = jnp.asarray(lam)
        if lam.shape != (g.size,):
            raise ValueError(f"lambda of bond {g.bond} has shape {lam.shape}, expected ({g.size},)")
        for ci, axis in g.slices:
            shape = [1] * len(shapes[ci])
            shape[axis] = g.size
            p = (1.0 / jnp.square(lam)).reshape(shape)
            precision[ci] = p if precision[ci] is None else precision[ci] + p
    fixed = set(fixed_prior_cores(layer))
    out = []
    for ci, p in enumerate(precision):
        if p is None or ci in fixed:
            out.append(jnp.full((1,) * len(shapes[ci]), prior.core_std, jnp.float32))
        else:
            out.append(jax.lax.rsqrt(p))
    return out


def _categorical(logits_BxC: jax.Array) -> dist.Distribution:
    return dist.Categorical(logits=logits_BxC.astype(jnp.float32))


def _bernoulli(logits_B: jax.Array) -> dist.Distribution:
    return dist.Bernoulli(logits=logits_B.reshape(logits_B.shape[0]).astype(jnp.float32))


def _unit_normal(out_BxK: jax.Array) -> dist.Distribution:
    return dist.Normal(out_BxK.astype(jnp.float32), 1.0).to_event(1)


# task name -> outputs -> distribution of one minibatch's labels (batch axis first)
LIKELIHOODS: dict[str, Callable[[jax.Array], dist.Distribution]] = {
    "classification": _categorical,
    "ctr": _bernoulli,
    "regression": _unit_normal,  # unit noise variance, as the MAP trainer's squared error
}


def elbo_loss(
    model: nnx.Module,
    lambdas: Mapping[str, Sequence[jax.typing.ArrayLike]],
    prior: RankPrior,
    *,
    forward: Callable[[nnx.Module], jax.Array],
    likelihood: Callable[[jax.Array], dist.Distribution],
    labels: jax.Array,
    num_data: int,
    rng: jax.Array,
    kl_weight: float | jax.typing.ArrayLike = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """-ELBO / N of one minibatch, by NumPyro, with one reparameterised sample of the cores.

      -ELBO / N = (N/B) sum_i -log p(y_i | x_i, F) / N + kl_weight * KL(q(F) || p(F | lambda)) / N

    Args:
      model: a model whose tensorized layers (those named in `lambdas`) carry
        `core_log_scales` (`attach_scales`); their cores are the posterior means. The
        cores are overwritten by the sample during the call and restored afterwards.
      lambdas: {layer name: [lambda (R,) per rank group]} (constants here).
      prior: the `RankPrior` (its `core_std` for cores in no group).
      forward: model -> outputs of the minibatch (B, ...), e.g. `lambda m: m(x)`.
      likelihood: outputs -> distribution of `labels` (see `LIKELIHOODS`).
      labels: the minibatch's labels, batch axis first (B, ...).
      num_data: N, the size of the training set (>= B).
      rng: PRNG key of this step's sample (a pure function of the step makes resumes exact).
      kl_weight: multiplier of the KL term (prior tempering times the warm-up factor).

    Returns:
      (-ELBO / N, the outputs computed on the sampled cores).
    """
    batch = labels.shape[0]
    if num_data < batch:
        raise ValueError(f"num_data={num_data} is smaller than the minibatch ({batch})")
    layers = dict(tensor_layers(model))
    missing = [n for n in lambdas if n not in layers or not hasattr(layers[n], "core_log_scales")]
    if missing:
        raise ValueError(f"layers {missing} have no core_log_scales (call attach_scales first)")
    means = {n: [c[...] for c in layers[n].cores] for n in lambdas}
    sigmas = {n: [jnp.exp(v[...]) for v in layers[n].core_log_scales] for n in lambdas}
    stds = {
        n: [jax.lax.stop_gradient(s) for s in prior_stds(layers[n], lambdas[n], prior)]
        for n in lambdas
    }
    weight = jnp.maximum(jnp.asarray(kl_weight, jnp.float32), _MIN_KL_WEIGHT)
    captured: dict[str, jax.Array] = {}

    def site(name: str, i: int) -> str:
        return f"{name}/core{i}"

    def numpyro_model(y):
        sampled = {}
        with handlers.scale(scale=weight):
            for n, mus in means.items():
                for i, mu in enumerate(mus):
                    std = jnp.broadcast_to(stds[n][i], mu.shape).astype(mu.dtype)
                    sampled[n, i] = numpyro.sample(
                        site(n, i), dist.Normal(jnp.zeros_like(mu), std).to_event(mu.ndim)
                    )
        for (n, i), value in sampled.items():
            layers[n].cores[i][...] = value
        out = forward(model)
        captured["out"] = out
        # The minibatch is already drawn by the input pipeline: its indices are substituted
        # so the plate only scales the likelihood by N/B (left alone, numpyro would draw B
        # random indices out of N with a B-step scan over an N-array, every step).
        with handlers.substitute(data={"data": jnp.arange(batch)}):
            with numpyro.plate("data", num_data, subsample_size=batch):
                numpyro.sample("y", likelihood(out), obs=y)

    def guide(y):
        del y
        with handlers.scale(scale=weight):
            for n, mus in means.items():
                for i, mu in enumerate(mus):
                    numpyro.sample(site(n, i), dist.Normal(mu, sigmas[n][i]).to_event(mu.ndim))

    try:
        neg_elbo = TraceMeanField_ELBO().loss(rng, {}, numpyro_model, guide, labels)
    finally:
        for n, mus in means.items():
            for i, mu in enumerate(mus):
                layers[n].cores[i][...] = mu
    return neg_elbo / num_data, captured["out"]
