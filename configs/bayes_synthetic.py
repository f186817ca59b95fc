"""Rank recovery: a student with rank-shrinking priors learns a teacher of planted ranks.

  python -m experiments.main --config=configs/bayes_synthetic.py:planted=ttm \
      --workdir=runs/bayes/synthetic_ttm
  python -m experiments.main --config=configs/bayes_synthetic.py:planted=cp --workdir=...
  python -m experiments.main --config=configs/bayes_synthetic.py:planted=tucker --workdir=...
  python -m experiments.main --config=configs/bayes_synthetic.py:planted=tr --workdir=...
  python -m experiments.main --config=configs/bayes_synthetic.py:quick --workdir=/tmp/bq

Data: y = x W + 0.05 noise, x ~ N(0, I_256), W 256 x 256 with planted structure: a TT-matrix
over modes (4, 8, 8) x (4, 8, 8) with ranks (3, 2) (i.e. (1, 3, 2, 1)); a CP tensor of rank 4
over modes (16, 16) x (16, 16); a Tucker tensor over modes (16, 16) x (16, 16) with
multilinear ranks (3, 5, 3, 5) (Tucker ranks (3, 5) of a 256 x 256 matrix are not
identifiable: a matrix's row and column ranks are equal, so the planted ranks live on a
4-way view); or a tensor ring over the same 4-way view with ranks (r_0..r_3) =
(2, 3, 4, 3). The student is one tensorized Linear 256 -> 256 of the same format at max rank
16, trained with the priors (half-Cauchy, MAP/EM or SVI), the ranks read out
(lambda > 0.01 max lambda) and pruned.

Recipe per format (`_RECIPES`; found by the sweeps in docs/results/bayes.md): TT-matrix
prior weight 10, 2,000 steps; Tucker 200, 2,000 steps (its factor columns govern only 16
entries each, so they need a stronger prior to separate); CP 50, 4,000 steps with the prior
off for 500 steps and ramped in over 1,000 (without the warm-up a weight that prunes also
stops the random-init CP from fitting); tensor ring as the TT-matrix. Every planted rank is
recovered exactly with both MAP and SVI (docs/results/bayes.md).

Args: quick, planted (ttm, cp, tucker, tr), prior (half_cauchy, log_uniform), eta, inference
(map, svi), max_rank, prior_weight and steps (unset: the format's recipe), seed.
"""

from configs import common

_PLANTED = {
    "ttm": ((3, 2), {"format": "ttm", "in_modes": (4, 8, 8), "out_modes": (4, 8, 8)}),
    "cp": ((4,), {"format": "cp", "in_modes": (16, 16), "out_modes": (16, 16)}),
    "tucker": ((3, 5, 3, 5), {"format": "tucker", "in_modes": (16, 16), "out_modes": (16, 16)}),
    "tr": ((2, 3, 4, 3), {"format": "tr", "in_modes": (16, 16), "out_modes": (16, 16)}),
}


# planted format -> (prior weight, steps, KL delay steps, KL warm-up steps)
_RECIPES = {
    "ttm": (10.0, 2000, 0, 0),
    "tucker": (200.0, 2000, 0, 0),
    "cp": (50.0, 4000, 500, 1000),
    "tr": (10.0, 2000, 0, 0),
}


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        planted="ttm",
        prior="half_cauchy",
        eta=1.0,
        inference="map",
        max_rank=16,
        prior_weight=common.unset(float),
        steps=common.unset(int),
        seed=0,
    )
    if args.planted not in _PLANTED:
        raise ValueError(f"planted={args.planted!r}: choose one of {sorted(_PLANTED)}")
    ranks, layer = _PLANTED[args.planted]
    c = common.base_config(f"bayes_synthetic_{args.planted}")
    c.trainer = "bayes"
    c.task = "regression"
    c.seed = args.seed
    c.data.name = "planted_linear"
    c.data.planted_format = args.planted
    c.data.planted_ranks = ranks
    c.data.in_modes = layer["in_modes"]
    c.data.out_modes = layer["out_modes"]
    c.data.noise = 0.05
    c.data.num_train = 4096
    c.data.num_test = 1024
    c.model.name = "mlp"
    c.model.kwargs = {"features": (256, 256)}
    c.model.layers.overrides = {"fc1": {**layer, "rank": args.max_rank}}
    weight, steps, delay, warmup = _RECIPES[args.planted]
    c.bayes = common.bayes_config(args.prior, args.eta, args.inference)
    # The regression likelihood assumes unit noise variance (the data have 0.05), so the
    # prior weight tempers the posterior; too weak leaves spare ranks, too strong collapses
    # the fit (TT-matrix: 1 leaves (6, 5), 100 collapses).
    c.bayes.prior_weight = weight if args.prior_weight is None else args.prior_weight
    c.bayes.kl_delay_steps = delay
    c.bayes.kl_warmup_steps = warmup
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.eval_batch_size = 1024
    c.num_steps = steps if args.steps is None else args.steps
    c.log_every = 100
    c.checkpoint_every = 500
    if args.quick:
        c.num_steps = 400
        c.bayes.kl_delay_steps = min(delay, 100)
        c.bayes.kl_warmup_steps = min(warmup, 100)
        c.log_every = 50
        c.checkpoint_every = 200
    return c
