"""Datasets and deterministic batching for the trainers.

`load_dataset(config)` returns a `Dataset` of NumPy arrays held in host memory (or, for
ImageNet, lazily decoded random-access splits). Where the data comes from:

  mnist, fashion_mnist   IDX files (gzipped or not): `$TNJAX_DATA_DIR/<name>/`; Fashion-MNIST
                         also from Debian's `dataset-fashion-mnist` (/usr/share/datasets/...)
  cifar10                the binary version: `$TNJAX_DATA_DIR/[cifar10/]cifar-10-batches-bin/`
  (explicit data_dir)    only `<data_dir>/<name>/` (as above) or `<data_dir>` itself, flat:
                         a config's own data_dir is read strictly, no other copy is used
  any of the above,      TFDS (`tfds.load(..., download=False)` with TensorFlow, else
  imagenet2012           `tfds.data_source`, which needs no TensorFlow)
  synthetic              Gaussian images labelled by a fixed random linear teacher
  synthetic_clicks       click logs with a planted low-rank embedding teacher (for DLRM)

Batching is a pure function of `(seed, step)` so that a restarted run sees exactly the
batches it would have seen: `train_batch(ds, step, batch_size, seed=...)` permutes the
training set once per epoch with `np.random.default_rng([seed, epoch])` and draws the
augmentation from `np.random.default_rng([seed, step, 1])`. `eval_batches` visits every
example once, padding the last batch to a static shape and marking real rows in `"mask"`.

Modules: `dataset` (the `Dataset`, its errors, normalisation, subsets, `LazySplit`), `readers`
(IDX and CIFAR-10 bytes), `sources` (local copies and TFDS), `synthetic`, `loader`
(`load_dataset`), `batching`; device placement is `experiments.sharding.shard_batch`.

Check what a config would load with::

  python -m experiments.input_pipeline --name=fashion_mnist
"""

from experiments.input_pipeline.batching import (
    AUGMENTATIONS,
    eval_batches,
    process_rows,
    process_slice,
    steps_per_epoch,
    train_batch,
)
from experiments.input_pipeline.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptDatasetError,
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    LazySplit,
)
from experiments.input_pipeline.loader import DATASET_NAMES, SOURCES, load_dataset
from experiments.input_pipeline.readers import read_cifar10_batch, read_idx
from experiments.input_pipeline.sources import DATA_DIR_ENV, DEBIAN_FASHION_MNIST_DIR
from experiments.input_pipeline.synthetic import (
    PLANTED_FORMATS,
    planted_click_logits,
    planted_kernel,
)

__all__ = [
    "DATASET_NAMES",
    "SOURCES",
    "AUGMENTATIONS",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PLANTED_FORMATS",
    "DatasetError",
    "DatasetNotFoundError",
    "CorruptDatasetError",
    "Dataset",
    "LazySplit",
    "load_dataset",
    "read_idx",
    "read_cifar10_batch",
    "planted_click_logits",
    "planted_kernel",
    "steps_per_epoch",
    "train_batch",
    "eval_batches",
    "process_slice",
    "process_rows",
]
