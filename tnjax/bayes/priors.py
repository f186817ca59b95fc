"""Gaussian priors on rank slices, hyper-priors on lambda and the closed-form lambda update.

Model (Hawkins, Liu & Zhang, arXiv:2010.08689, section 1 of papers/bayes_paper.md): every
entry of the rank-r slice of a factor tied to group g has the prior N(0, lambda_r^2)
(lambda is a standard deviation); lambda itself has a hyper-prior

  log-uniform   p(lambda) propto 1 / lambda                  (improper, scale-free)
  half-Cauchy   p(lambda) propto 1 / (eta^2 + lambda^2)      (horseshoe-like, scale eta)

and the Tucker core a fixed N(0, core_std^2). Lambda is a point estimate: with
M_r = sum of E[f^2] over the entries lambda_r governs and D_r their number, it maximises

  -D_r log(lambda_r) - M_r / (2 lambda_r^2) + log p(lambda_r)

in closed form (`lambda_update`); `em_update` applies it, damped, to a whole model.

An entry tied to two groups (an interior TT core's entry sits on two bonds, see
`tnjax.bayes.ranks`) is penalised by both: the log-prior is the sum of the per-group
terms, which is what keeps the update closed-form and per-group.

Caveat (MAP/EM): jointly maximising over the cores and lambda has a degenerate optimum at
zero (a slice and its lambda shrinking together make -D log(lambda) unbounded). The data
term must dominate the prior (the authors tune a multiplier on the prior/KL term); with
too strong a prior a whole layer collapses, and `read_ranks`'s relative threshold then
keeps every index.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax.bayes.ranks import RankGroup, fixed_prior_cores, rank_groups, tensor_layers

__all__ = [
    "PRIORS",
    "TINY",
    "RankPrior",
    "group_statistics",
    "lambda_update",
    "log_prior",
    "kl_gaussian",
    "layer_log_prior",
    "init_lambdas",
    "em_update",
    "model_log_prior",
    "tensor_layers",
]

PRIORS = ("log_uniform", "half_cauchy")
# Floor of lambda^2 (not lambda: lambda^2 = 1e-30 still fits float32, lambda = 1e-15), so
# log(lambda) and M / lambda^2 stay finite for a slice that is exactly zero.
TINY = 1e-30

Lambdas = dict[str, list[jax.Array]]


@dataclasses.dataclass(frozen=True)
class RankPrior:
    """Hyper-parameters of the rank-determining prior.

    Attributes:
      kind: "log_uniform" or "half_cauchy" (see `PRIORS`).
      eta: scale of the half-Cauchy hyper-prior (> 0; the paper's DLRM runs use 0.1, or
        0.01 for TT; default 1.0). Unused by the log-uniform prior.
      core_std: standard deviation of the fixed Gaussian prior on Tucker cores (> 0; the
        authors' `core_prior=10.0`).
    """

    kind: str = "half_cauchy"
    eta: float = 1.0
    core_std: float = 10.0

    def __post_init__(self):
        if self.kind not in PRIORS:
            raise ValueError(f"RankPrior kind={self.kind!r} is not one of {PRIORS}")
        for name in ("eta", "core_std"):
            value = getattr(self, name)
            try:
                ok = not isinstance(value, bool) and math.isfinite(value) and value > 0
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"RankPrior {name} must be a finite number > 0, got {value!r}")


def _value(core: Any) -> jax.Array:
    """The array of a `Core` variable (or any array-like)."""
    return core[...] if isinstance(core, nnx.Variable) else jnp.asarray(core)


def _slice_sums(x: jax.Array, axis: int) -> jax.Array:
    """Sum of x over every axis but `axis`: (R,)."""
    return jnp.sum(jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1), axis=1)


def group_statistics(
    cores: Sequence[Any], group: RankGroup, scales: Sequence[Any] | None = None
) -> tuple[jax.Array, jax.Array]:
    """Sufficient statistics of one rank group.

    Args:
      cores: the layer's cores (arrays or `Core` variables), the posterior means mu.
      group: a `RankGroup` of that layer.
      scales: optional posterior standard deviations sigma, one array per core with the
        core's shape (mean-field Gaussian q); then E_q[f^2] = mu^2 + sigma^2.

    Returns:
      (M, D), both (R,): M_r = sum over the tied slices of mu^2 (+ sigma^2), D_r = number
      of entries lambda_r governs (as a float).
    """
    with jax.named_scope("tnjax.bayes.group_statistics"):
        m_total = None
        d_total = 0
        for ci, axis in group.slices:
            x = _value(cores[ci])
            if x.shape[axis] != group.size:
                raise ValueError(
                    f"core {ci} has shape {x.shape}: axis {axis} has length {x.shape[axis]}, "
                    f"but the rank group of bond {group.bond} has size {group.size}"
                )
            sq = jnp.square(x)
            if scales is not None:
                s = _value(scales[ci])
                if s.shape != x.shape:
                    raise ValueError(
                        f"scales[{ci}] has shape {s.shape}, but core {ci} has shape {x.shape}"
                    )
                sq = sq + jnp.square(s)
            m = _slice_sums(sq, axis)
            m_total = m if m_total is None else m_total + m
            d_total += x.size // group.size
        return m_total, jnp.full((group.size,), float(d_total), m_total.dtype)


def lambda_update(M: jax.typing.ArrayLike, D: jax.typing.ArrayLike, prior: RankPrior) -> jax.Array:
    """Closed-form lambda (a standard deviation) maximising the per-rank objective.

    The objective is -D log(lambda) - M / (2 lambda^2) + log p(lambda). Its maximiser, in
    s = lambda^2:

      log-uniform   s = M / (D + 1)
      half-Cauchy   s = [M - eta^2 D + sqrt(M^2 + (2D + 8) eta^2 M + eta^4 D^2)] / (2D + 4),
                    the positive root of (D + 2) s^2 - (M - eta^2 D) s - eta^2 M = 0, computed
                    as 2 eta^2 M / (sqrt(...) - (M - eta^2 D)) when M < eta^2 D (no
                    cancellation for small M).

    s is floored at `TINY` so that logs stay finite.

    Args:
      M: (R,) sums of squares (see `group_statistics`).
      D: (R,) entry counts.
      prior: the `RankPrior`.

    Returns:
      lambda (R,) = sqrt(s).
    """
    with jax.named_scope("tnjax.bayes.lambda_update"):
        M = jnp.asarray(M)
        if not jnp.issubdtype(M.dtype, jnp.floating):
            M = M.astype(jnp.float32)
        D = jnp.asarray(D, M.dtype)
        if prior.kind == "log_uniform":
            s = M / (D + 1.0)
        else:
            eta2 = jnp.asarray(prior.eta**2, M.dtype)
            b = M - eta2 * D
            root = jnp.sqrt(M * M + (2.0 * D + 8.0) * eta2 * M + eta2 * eta2 * D * D)
            plus = (b + root) / (2.0 * D + 4.0)
            # Where b < 0, root - b >= |b| > 0: the rationalised form has no cancellation.
            rationalised = 2.0 * eta2 * M / jnp.where(b < 0, root - b, 1.0)
            s = jnp.where(b < 0, rationalised, plus)
        return jnp.sqrt(jnp.maximum(s, TINY))


def _hyper_log_prior(lam: jax.Array, prior: RankPrior) -> jax.Array:
    if prior.kind == "log_uniform":
        return -jnp.sum(jnp.log(lam))
    return -jnp.sum(jnp.log(prior.eta**2 + jnp.square(lam)))


def log_prior(
    cores: Sequence[Any],
    groups: Sequence[RankGroup],
    lambdas: Sequence[jax.typing.ArrayLike],
    prior: RankPrior,
    *,
    core_prior_cores: Sequence[int] = (),
) -> jax.Array:
    """Log-prior of a layer's cores and lambdas, additive constants dropped.

      sum_groups sum_r [ -M_r / (2 lambda_r^2) - D_r log(lambda_r) + log p(lambda_r) ]
        - sum_{c in core_prior_cores} ||core_c||^2 / (2 core_std^2)

    with log p(lambda) = -log(lambda) (log-uniform) or -log(eta^2 + lambda^2) (half-Cauchy).
    Dropped: -D_r log(2 pi) / 2 per group, the half-Cauchy's log(2 eta / pi) and the
    Tucker core's -n log(core_std sqrt(2 pi)); none depends on the cores or lambdas.
    Differentiable w.r.t. both the cores and the lambdas.

    Args:
      cores: the layer's cores (arrays or `Core` variables).
      groups: its `rank_groups`.
      lambdas: one (R,) vector per group.
      prior: the `RankPrior`.
      core_prior_cores: indices of cores with the fixed N(0, core_std^2) prior
        (`fixed_prior_cores(layer)`: the Tucker core).

    Returns:
      A scalar.
    """
    with jax.named_scope("tnjax.bayes.log_prior"):
        if len(groups) != len(lambdas):
            raise ValueError(f"{len(groups)} rank groups but {len(lambdas)} lambda vectors")
        total = jnp.zeros((), jnp.result_type(*(_value(c) for c in cores)))
        for g, lam in zip(groups, lambdas, strict=True):
            lam = jnp.asarray(lam)
            if lam.shape != (g.size,):
                raise ValueError(
                    f"lambda of bond {g.bond} has shape {lam.shape}, expected ({g.size},)"
                )
            M, D = group_statistics(cores, g)
            total = total - 0.5 * jnp.sum(M / jnp.square(lam)) - jnp.sum(D * jnp.log(lam))
            total = total + _hyper_log_prior(lam, prior)
        for ci in core_prior_cores:
            total = total - 0.5 * jnp.sum(jnp.square(_value(cores[ci]))) / prior.core_std**2
        return total


def kl_gaussian(
    mu: jax.typing.ArrayLike, sigma: jax.typing.ArrayLike, lam_broadcast: jax.typing.ArrayLike
) -> jax.Array:
    """KL(N(mu, sigma^2) || N(0, lambda^2)) summed over entries.

      sum 0.5 (sigma^2 / lambda^2 + mu^2 / lambda^2 - 1 - log(sigma^2 / lambda^2))

    Args:
      mu, sigma: posterior means and standard deviations (same shape).
      lam_broadcast: prior standard deviations, broadcastable to mu (e.g. lambda[None, None, :]
        for a core whose last axis is the rank axis).

    Returns:
      A scalar.
    """
    with jax.named_scope("tnjax.bayes.kl_gaussian"):
        mu, sigma, lam = jnp.asarray(mu), jnp.asarray(sigma), jnp.asarray(lam_broadcast)
        inv_var = 1.0 / jnp.square(lam)
        log_ratio = 2.0 * (jnp.log(sigma) - jnp.log(lam))
        kl = 0.5 * ((jnp.square(sigma) + jnp.square(mu)) * inv_var - 1.0 - log_ratio)
        return jnp.sum(kl)


# --------------------------------------------------------------------------- whole models


def _layer_cores(layer: nnx.Module) -> list[jax.Array]:
    return [c[...] for c in layer.cores]


def layer_log_prior(
    layer: nnx.Module, lambdas: Sequence[jax.typing.ArrayLike], prior: RankPrior
) -> jax.Array:
    """`log_prior` of one tnjax layer (its groups and Tucker core found from the layer)."""
    return log_prior(
        _layer_cores(layer),
        rank_groups(layer),
        lambdas,
        prior,
        core_prior_cores=fixed_prior_cores(layer),
    )


def _layers_of(model: nnx.Module, names) -> dict[str, nnx.Module]:
    layers = dict(tensor_layers(model))
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(
            f"lambdas name layer(s) {missing} that the model does not have (or whose format "
            f"has no rank groups); its tensorized layers are {sorted(layers)}"
        )
    return layers


def init_lambdas(model: nnx.Module, prior: RankPrior) -> Lambdas:
    """Initial lambdas: the closed-form update on the model's current cores.

    Returns:
      {layer name: [lambda (R,) per rank group]} for every layer of `tensor_layers(model)`.
    """
    with jax.named_scope("tnjax.bayes.init_lambdas"):
        out = {}
        for name, layer in tensor_layers(model):
            cores = _layer_cores(layer)
            out[name] = [
                jax.lax.stop_gradient(lambda_update(*group_statistics(cores, g), prior))
                for g in rank_groups(layer)
            ]
        return out


def em_update(
    model: nnx.Module,
    lambdas: Mapping[str, Sequence[jax.typing.ArrayLike]],
    prior: RankPrior,
    *,
    step_size: float | jax.typing.ArrayLike = 1.0,
    scales: Mapping[str, Sequence[jax.typing.ArrayLike]] | None = None,
) -> Lambdas:
    """One damped closed-form update of every layer's lambdas.

      lambda^2 <- (1 - rho) lambda^2 + rho lambda_new^2,   rho = step_size

    with lambda_new from `lambda_update` on the model's current cores (the authors run it
    in every training step, rho = 1 or 0.1). A pure function of the core values, so it
    works on a model merged inside `jax.jit`; no gradient flows into the new lambdas.

    Args:
      model: the model (only the layers named in `lambdas` are read).
      lambdas: {layer name: [lambda (R,) per group]}, e.g. from `init_lambdas`.
      prior: the `RankPrior`.
      step_size: rho in (0, 1].
      scales: optional {layer name: posterior std per core} for the variational case
        (M then includes sigma^2).

    Returns:
      New lambdas, same structure.
    """
    if isinstance(step_size, int | float) and not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    with jax.named_scope("tnjax.bayes.em_update"):
        layers = _layers_of(model, lambdas)
        out = {}
        for name, lams in lambdas.items():
            layer = layers[name]
            groups = rank_groups(layer)
            if len(groups) != len(lams):
                raise ValueError(
                    f"layer {name!r} has {len(groups)} rank groups but {len(lams)} lambdas"
                )
            cores = _layer_cores(layer)
            layer_scales = None if scales is None else scales.get(name)
            new = []
            for g, lam in zip(groups, lams, strict=True):
                lam = jnp.asarray(lam)
                if lam.shape != (g.size,):
                    raise ValueError(
                        f"layer {name!r}: lambda of bond {g.bond} has shape {lam.shape}, "
                        f"expected ({g.size},) (were the lambdas pruned with the model?)"
                    )
                target = lambda_update(*group_statistics(cores, g, layer_scales), prior)
                s = (1.0 - step_size) * jnp.square(lam) + step_size * jnp.square(target)
                new.append(jax.lax.stop_gradient(jnp.sqrt(jnp.maximum(s, TINY)).astype(lam.dtype)))
            out[name] = new
        return out


def model_log_prior(
    model: nnx.Module, lambdas: Mapping[str, Sequence[jax.typing.ArrayLike]], prior: RankPrior
) -> jax.Array:
    """Sum of `layer_log_prior` over the layers named in `lambdas`.

    Differentiable w.r.t. the cores; the lambdas are constants (`stop_gradient`), as in
    the EM scheme. Tensorized layers absent from `lambdas` get no prior.
    """
    with jax.named_scope("tnjax.bayes.model_log_prior"):
        layers = _layers_of(model, lambdas)
        total = jnp.zeros(())
        for name, lams in lambdas.items():
            lams = [jax.lax.stop_gradient(jnp.asarray(lam)) for lam in lams]
            total = total + layer_log_prior(layers[name], lams, prior)
        return total
