"""MLP 784-512-10 on Fashion-MNIST, dense or with a tensorized fc1 (trained from scratch).

  python -m experiments.main --config=configs/mlp.py --workdir=/tmp/mlp
  python -m experiments.main --config=configs/mlp.py:format=ttm,rank=8 --workdir=/tmp/mlp_ttm
  python -m experiments.main --config=configs/mlp.py:quick --workdir=/tmp/mlp_quick

Expected: dense, 10 epochs of Adam, about 89% test accuracy (fc1 TT-matrix rank 8: about
88%). `quick`: 4,096 training images, 150 steps, ~80% on 2,000 test images, seconds.

Args: quick, format (for fc1; fc2 stays dense), rank, compression, dataset, epochs, seed.
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
        epochs=10.0,
        seed=0,
    )
    c = common.base_config("mlp")
    c.seed = args.seed
    c.data.name = args.dataset
    c.model.name = "mlp"
    c.model.kwargs = {"features": (784, 512, 10)}
    common.apply_layers(c, args)
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 128
    c.num_epochs = args.epochs
    c.eval_every = 940
    c.checkpoint_every = 940
    if args.quick:
        c.data.num_train = 4096
        c.data.num_test = 2000
        c.num_steps = 150
        c.log_every = 50
        c.eval_every = None
        c.checkpoint_every = 100
    return c
