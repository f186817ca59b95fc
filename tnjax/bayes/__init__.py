"""Bayesian automatic rank determination (Hawkins, Liu & Zhang, arXiv:2010.08689).

Gaussian priors N(0, lambda_r^2) on the rank slices of every tensorized layer's cores,
log-uniform or half-Cauchy hyper-priors on lambda, the closed-form (EM) lambda update,
rank read-out and pruning::

  prior = bayes.RankPrior("half_cauchy", eta=1.0)
  lambdas = bayes.init_lambdas(model, prior)
  # in the train step: loss = nll - kl_weight * bayes.model_log_prior(model, lambdas, prior)
  #                    lambdas = bayes.em_update(model, lambdas, prior)
  pruned, report, lambdas = bayes.prune_model(model, lambdas, threshold=1e-2)
"""

from tnjax.bayes.priors import (
    PRIORS,
    TINY,
    RankPrior,
    em_update,
    group_statistics,
    init_lambdas,
    kl_gaussian,
    lambda_update,
    layer_log_prior,
    log_prior,
    model_log_prior,
)
from tnjax.bayes.prune import prune_layer, prune_model, read_ranks
from tnjax.bayes.ranks import (
    SUPPORTED_FORMATS,
    RankGroup,
    fixed_prior_cores,
    is_supported,
    rank_groups,
    tensor_layers,
)

__all__ = [
    "PRIORS",
    "TINY",
    "RankPrior",
    "RankGroup",
    "SUPPORTED_FORMATS",
    "rank_groups",
    "fixed_prior_cores",
    "is_supported",
    "tensor_layers",
    "group_statistics",
    "lambda_update",
    "log_prior",
    "layer_log_prior",
    "kl_gaussian",
    "init_lambdas",
    "em_update",
    "model_log_prior",
    "read_ranks",
    "prune_layer",
    "prune_model",
]
