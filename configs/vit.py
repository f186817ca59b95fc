"""A small Vision Transformer on Fashion-MNIST, dense or tensorized (trained from scratch).

  python -m experiments.main --config=configs/vit.py --workdir=runs/vit/dense
  python -m experiments.main --config=configs/vit.py:format=ttm,rank=8 --workdir=/tmp/vit_ttm
  python -m experiments.main --config=configs/vit.py:quick --workdir=/tmp/vit_quick

The model (`tnjax.models.ViT`): 4x4 patches (49 tokens), width 128, 4 pre-norm blocks of 4
heads and MLP 256, mean pooling; 540k parameters, 525k of them in the attention and MLP
projections, which `format` tensorizes (the patch embedding and the head stay dense).
AdamW (lr 1e-3, weight decay 0.05, 200 warm-up steps, cosine), batch 128, 8 epochs: about
a quarter of a second per step on 2 CPU cores. docs/results/vit.md has the measured run.
`quick`: a 2-block ViT of width 64 on 1,024 training and 500 test images, 40 steps (checks
the pipeline; seconds).

Args: quick, format, rank, compression, dataset, epochs, depth, width, seed.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="dense",
        rank=common.unset(int),
        compression=common.unset(float),
        dataset="fashion_mnist",
        epochs=8.0,
        depth=4,
        width=128,
        seed=0,
    )
    c = common.base_config("vit")
    c.seed = args.seed
    c.data.name = args.dataset
    c.model.name = "vit"
    c.model.kwargs = {"depth": args.depth, "width": args.width, "mlp_dim": 2 * args.width}
    common.apply_layers(c, args)
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 200
    c.optimizer.grad_clip = 1.0
    c.batch_size = 128
    c.num_epochs = args.epochs
    c.log_every = 100
    c.eval_every = 938  # two epochs
    c.checkpoint_every = 469
    if args.quick:
        c.model.kwargs = {"depth": 2, "width": 64, "mlp_dim": 128}
        c.data.num_train = 1024
        c.data.num_test = 500
        c.num_steps = 40
        c.optimizer.warmup_steps = 10
        c.log_every = 20
        c.eval_every = None
        c.checkpoint_every = 30
    return c
