"""LeNet-5 on Fashion-MNIST, dense or tensorized (trained from scratch).

Run (the README's main job runs the first):

  python -m experiments.main --config=configs/lenet5.py --workdir=/tmp/lenet5
  python -m experiments.main --config=configs/lenet5.py:format=tt,rank=8 --workdir=/tmp/lenet5_tt
  python -m experiments.main --config=configs/lenet5.py:quick --workdir=/tmp/lenet5_quick

Expected: dense, 12 epochs of Adam (batch 128, cosine decay), about 90-91% test accuracy
on the full Fashion-MNIST in a few minutes on 2 CPU cores (see docs/results/experiments.md
for the measured run). `quick` trains on 4,096 images for 150 steps: ~80% test accuracy on
2,000 test images in well under a minute.

Args: quick, format (dense or a tnjax format for conv2/fc1/fc2; conv1 and fc3 stay dense),
rank, compression, conv_format (a conv-only format such as rcp for conv2), dataset
(fashion_mnist, mnist, synthetic), epochs, seed.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="dense",
        rank=common.unset(int),
        compression=common.unset(float),
        conv_format=common.unset(str),
        dataset="fashion_mnist",
        epochs=12.0,
        seed=0,
    )
    c = common.base_config("lenet5")
    c.seed = args.seed
    c.data.name = args.dataset
    c.model.name = "lenet5"
    common.apply_layers(c, args)
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.batch_size = 128
    c.num_epochs = args.epochs
    c.log_every = 100
    c.eval_every = 940  # about two epochs
    c.checkpoint_every = 940
    if args.quick:
        c.data.num_train = 4096
        c.data.num_test = 2000
        c.num_steps = 150
        c.optimizer.warmup_steps = 10
        c.log_every = 50
        c.eval_every = None
        c.checkpoint_every = 100
    return c
