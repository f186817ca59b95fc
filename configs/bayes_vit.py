"""A ViT on Fashion-MNIST whose attention and MLP weights are TT-matrices with learned ranks.

  python -m experiments.main --config=configs/bayes_vit.py --workdir=runs/bayes/vit_ttm
  python -m experiments.main --config=configs/bayes_vit.py:prior=none --workdir=...  # fixed rank
  python -m experiments.main --config=configs/bayes_vit.py:quick --workdir=/tmp/bvq

The model and recipe of configs/vit.py, with every attention projection and MLP weight a
TT-matrix at max rank `max_rank` (the patch embedding and the head dense), trained from
scratch with a rank-shrinking prior on every TT rank (Hawkins et al.; `bayes` trainer,
MAP with closed-form lambda updates by default), ranks read out (lambda > 1% of the
layer's largest) and pruned at the end, then `finetune_steps` steps without the prior.
`prior=none` trains the same layers at the fixed max rank. docs/results/vit.md has the
measured run. `quick`: the quick ViT of configs/vit.py (checks the pipeline).

Args: quick, format (ttm, tt, cp, tucker), prior (half_cauchy, log_uniform, none), eta,
inference (map, svi), max_rank, prior_weight, finetune_steps, epochs, dataset, seed.
"""

from configs import common, vit


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="ttm",
        prior="half_cauchy",
        eta=1.0,
        inference="map",
        max_rank=16,
        prior_weight=1.0,
        finetune_steps=469,
        epochs=8.0,
        dataset="fashion_mnist",
        seed=0,
    )
    c = vit.get_config(
        f"format={args.format},rank={args.max_rank},epochs={args.epochs},"
        f"dataset={args.dataset},seed={args.seed}" + (",quick" if args.quick else "")
    )
    c.name = f"bayes_vit_{args.format}"
    common.apply_prior(c, args)
    if args.prior != "none":
        c.bayes.finetune_steps = 10 if args.quick else args.finetune_steps
        c.bayes.finetune_learning_rate = 3e-4
    return c
