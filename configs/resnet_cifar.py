"""CIFAR ResNet-20/32/56 (He et al. 2016) on CIFAR-10, dense or tensorized.

  python -m experiments.main --config=configs/resnet_cifar.py:depth=32 --workdir=/tmp/r32
  python -m experiments.main --config=configs/resnet_cifar.py:depth=32,format=rcp,compression=0.1 \
      --workdir=/tmp/r32_rcp
  python -m experiments.main --config=configs/resnet_cifar.py:quick --workdir=/tmp/r_quick

Needs CIFAR-10: the binary version (cifar-10-batches-bin) under $TNJAX_DATA_DIR/cifar10, or
TFDS. Expected (the paper's recipe: SGD momentum 0.9, lr 0.1, weight decay 1e-4, 164 epochs,
lr /10 at 50% and 75%, crop+flip augmentation): ResNet-32 about 92.5% test accuracy; that is
GPU work (hours), not for this 2-core CPU. `quick`: ResNet-20 on 512 synthetic 32x32 images
for 20 steps (checks the pipeline end to end, accuracy meaningless).

Args: quick, depth (20, 32, 56), format, rank, compression, conv_format, dataset, epochs, seed.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        depth=32,
        format="dense",
        rank=common.unset(int),
        compression=common.unset(float),
        conv_format=common.unset(str),
        dataset="cifar10",
        epochs=164.0,
        seed=0,
    )
    c = common.base_config(f"resnet{args.depth}_cifar")
    c.seed = args.seed
    c.data.name = args.dataset
    c.data.augment = "cifar"
    c.model.name = f"resnet{args.depth}"
    common.apply_layers(c, args)
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.1
    c.optimizer.schedule = "step"
    c.optimizer.decay_boundaries = (0.5, 0.75)
    c.optimizer.decay_factor = 0.1
    c.optimizer.weight_decay = 1e-4
    c.batch_size = 128
    c.num_epochs = args.epochs
    c.log_every = 100
    c.eval_every = 3910  # ten epochs
    c.checkpoint_every = 1955
    if args.quick:
        c.name = "resnet20_cifar_quick"
        c.model.name = "resnet20"
        c.data.name = "synthetic"
        c.data.image_shape = (32, 32, 3)
        c.data.num_classes = 10
        c.data.num_train = 512
        c.data.num_test = 128
        c.batch_size = 32
        c.eval_batch_size = 64
        c.num_steps = 20
        c.log_every = 10
        c.eval_every = None
        c.checkpoint_every = 10
        c.optimizer.learning_rate = 0.05
    return c
