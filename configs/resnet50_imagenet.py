"""ResNet-50 on ImageNet (ILSVRC 2012), dense or tensorized.

  python -m experiments.main --config=configs/resnet50_imagenet.py --workdir=/tmp/r50
  python -m experiments.main --config=configs/resnet50_imagenet.py:quick --workdir=/tmp/r50_quick

Needs imagenet2012 prepared for TFDS (manual download; `tfds.builder("imagenet2012",
data_dir=...).download_and_prepare()`), with --config.data.tfds_data_dir pointing at it.
Expected (Goyal et al. recipe: SGD momentum 0.9, lr 0.1 x batch/256, 5 warm-up epochs,
cosine, 90 epochs, weight decay 1e-4): about 76% top-1; accelerator work. `quick`:
ResNet-50 on 64 synthetic 32x32 images, 4 steps (checks the pipeline end to end).

Args: quick, format, rank, compression, conv_format, epochs, batch, seed.
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
        epochs=90.0,
        batch=256,
        seed=0,
    )
    c = common.base_config("resnet50_imagenet")
    c.seed = args.seed
    c.data.name = "imagenet2012"
    c.data.source = "tfds"
    c.data.augment = "imagenet"
    c.data.image_size = 224
    c.model.name = "resnet50"
    common.apply_layers(c, args)
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 0.1 * args.batch / 256
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 5 * 1281167 // args.batch
    c.optimizer.weight_decay = 1e-4
    c.batch_size = args.batch
    c.eval_batch_size = 250
    c.num_epochs = args.epochs
    c.log_every = 100
    c.eval_every = 5004
    c.checkpoint_every = 2502
    if args.quick:
        c.name = "resnet50_quick"
        c.data.name = "synthetic"
        c.data.source = "auto"
        c.data.augment = "none"
        c.data.image_shape = (32, 32, 3)
        c.data.num_classes = 10
        c.data.num_train = 64
        c.data.num_test = 32
        c.batch_size = 16
        c.eval_batch_size = 32
        c.num_steps = 4
        c.log_every = 2
        c.eval_every = None
        c.checkpoint_every = 4
        c.optimizer.learning_rate = 0.01
        c.optimizer.warmup_steps = 0
    return c
