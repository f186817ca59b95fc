"""MLP 784-512-10 on Fashion-MNIST with a Bayesian TT-matrix fc1 whose ranks are learned.

  python -m experiments.main --config=configs/bayes_mlp.py --workdir=runs/bayes/mlp_ttm
  python -m experiments.main --config=configs/bayes_mlp.py:inference=svi --workdir=...
  python -m experiments.main --config=configs/bayes_mlp.py:prior=none --workdir=...  # fixed rank
  python -m experiments.main --config=configs/bayes_mlp.py:quick --workdir=/tmp/bmlp

The paper's public MNIST example (papers/bayes_paper.md section 3): fc1 784 -> 512 as a
TT-matrix over (4, 7, 4, 7) x (4, 4, 8, 4) at max rank 20 (24,880 parameters, 16x smaller
than the dense 401,408), fc2 dense; trained end to end with the rank-shrinking prior
(`bayes` trainer), ranks read out (lambda > 1% of the layer's largest) and pruned.
`prior=none` trains the same layer at the fixed max rank without any prior (`train`
trainer), the comparison the issue asks for; `configs/mlp.py` is the dense baseline.
Other fc1 formats: `format=tt|cp|tucker` (modes chosen by the layer factory);
`format=dense,prior=none` is the dense MLP with the same recipe.

Measured results: docs/results/bayes.md.

Args: quick, format, prior (half_cauchy, log_uniform, none), eta, inference (map, svi),
max_rank, prior_weight, epochs, dataset (28x28 images: fashion_mnist, mnist), seed.
"""

from configs import common

_MODES = {"in_modes": (4, 7, 4, 7), "out_modes": (4, 4, 8, 4)}


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="ttm",
        prior="half_cauchy",
        eta=1.0,
        inference="map",
        max_rank=20,
        prior_weight=0.5,
        epochs=15.0,
        dataset="fashion_mnist",
        seed=0,
    )
    if args.format == "dense" and args.prior != "none":
        raise ValueError("format=dense has no ranks to learn: use it with prior=none")
    c = common.base_config(f"bayes_mlp_{args.format}")
    common.apply_prior(c, args)
    c.seed = args.seed
    c.data.name = args.dataset  # 28x28 grey images: fashion_mnist or mnist
    c.model.name = "mlp"
    c.model.kwargs = {"features": (784, 512, 10)}
    fc1 = {"format": args.format, "rank": args.max_rank}
    if args.format in ("ttm", "tt"):
        fc1.update(_MODES)
    if args.format != "dense":
        c.model.layers.overrides = {"fc1": fc1}
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 128
    c.num_epochs = args.epochs
    c.log_every = 200
    c.eval_every = 2345
    c.checkpoint_every = 1000
    if args.quick:
        c.data.num_train = 4096
        c.data.num_test = 2000
        c.num_steps = 150
        c.log_every = 50
        c.eval_every = None
        c.checkpoint_every = 100
    return c
