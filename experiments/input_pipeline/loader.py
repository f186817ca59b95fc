"""`load_dataset`: the one entry point that turns a config's data section into a `Dataset`."""

from __future__ import annotations

import os

from experiments.input_pipeline import sources
from experiments.input_pipeline.dataset import Dataset, _as_config, _get, _image_dataset
from experiments.input_pipeline.synthetic import (
    _planted_linear,
    _synthetic_clicks,
    _synthetic_images,
)

DATASET_NAMES = (
    "mnist",
    "fashion_mnist",
    "cifar10",
    "imagenet2012",
    "synthetic",
    "synthetic_clicks",
    "planted_linear",
)
SOURCES = ("auto", "local", "tfds")


def load_dataset(config) -> Dataset:
    """Loads the dataset a config names.

    Where the local files are looked for (mnist, fashion_mnist, cifar10):

    - an explicit `data_dir` (the config's) is the only place read: `data_dir/<name>/` (also
      `fashion-mnist/`; for CIFAR-10 `[cifar10/]cifar-10-batches-bin/`), then `data_dir`
      itself, a flat directory holding the four IDX files `train-images-idx3-ubyte[.gz]` ..
      `t10k-labels-idx1-ubyte[.gz]` or CIFAR-10's six `.bin` batches. Neither Debian's copy
      nor TFDS is used instead (TFDS only if `tfds_data_dir` is given too, with "auto").
    - without one, `$TNJAX_DATA_DIR/<name>/` (same subdirectories), then Debian's
      `/usr/share/datasets/fashion-mnist`, then TFDS (source "auto").

    A damaged file in the first directory that holds the dataset is an error, never skipped.
    An explicit `tfds_data_dir` is likewise the only TFDS root read. Synthetic datasets read
    no files.

    Args:
      config: an `ml_collections.ConfigDict`, a dict, or any object with attributes. Fields
        (all but `name` optional): `name` (one of `DATASET_NAMES`), `source` ("auto": local
        files if found, else TFDS; "local"; "tfds"), `data_dir` (default `$TNJAX_DATA_DIR`;
        see above), `tfds_data_dir`, `num_train` / `num_test` (keep the first n of a seeded
        shuffle of the training set / the first n of the test set), `seed` (0), `image_size`
        (224, for ImageNet); for "synthetic": `image_shape` ((28, 28, 1)), `num_classes` (10),
        `num_train` (2048), `num_test` (512), `latent_stride` (4), `pixel_noise` (0.5); for
        "synthetic_clicks": `num_dense` (13), `vocab_sizes` ((1000, 1000, 500, 200)),
        `embed_rank` (2), `embed_dim` (16), `zipf_exponent` (1.0), `interaction_std` (2.0),
        `num_train` (8192), `num_test` (2048).

    Returns:
      The `Dataset`; images are float32, normalised per channel with the training set's mean
      and std (recorded in `info`).

    Raises:
      ValueError: unknown name, source or bad sizes.
      DatasetNotFoundError: not in an explicit data_dir (the message names the directories
        and the files expected), or no local copy and no prepared TFDS copy; the message says
        how to get one.
      CorruptDatasetError: a local file is damaged (the message names it).
    """
    cfg = _as_config(config)
    name = _get(cfg, "name")
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    seed = int(_get(cfg, "seed", 0))
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    if name == "synthetic":
        return _synthetic_images(cfg, seed)
    if name == "synthetic_clicks":
        return _synthetic_clicks(cfg, seed)
    if name == "planted_linear":
        return _planted_linear(cfg, seed)

    source = _get(cfg, "source", "auto")
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    explicit_dir = _get(cfg, "data_dir") or None  # the config's own: the only place read
    data_dir = explicit_dir or os.environ.get(sources.DATA_DIR_ENV) or None
    tfds_data_dir = _get(cfg, "tfds_data_dir")
    num_train, num_test = _get(cfg, "num_train"), _get(cfg, "num_test")

    looked_in: list[str] = []
    if source in ("auto", "local") and name != "imagenet2012":
        found, looked_in = sources._load_local(name, data_dir, explicit=explicit_dir is not None)
        if found is not None:
            (train, test), where = found
            return _image_dataset(
                name,
                train,
                test,
                num_classes=10,
                source=where,
                cfg_num=(num_train, num_test),
                seed=seed,
            )
        if explicit_dir is not None and (source == "local" or not tfds_data_dir):
            raise sources._not_in_data_dir(name, explicit_dir, looked_in)
    elif name == "imagenet2012" and source == "local":
        raise sources._not_found(name, [], "source='local' was asked for", tfds_data_dir or "DIR")
    if source == "local":
        raise sources._not_found(name, looked_in, None, tfds_data_dir or "DIR")

    tfds, builder, problem = sources._tfds_builder(name, tfds_data_dir)
    if problem is not None:
        if explicit_dir is not None and looked_in:  # auto, both directories given
            raise sources._not_in_data_dir(name, explicit_dir, looked_in, problem)
        raise sources._not_found(
            name, looked_in, problem, sources._tfds_dir_for_message(builder, tfds_data_dir)
        )
    if name == "imagenet2012":
        split_sources = sources._tfds_data_source(tfds, name, tfds_data_dir)
        train_split, test_split = sources._TFDS_SPLITS[name]
        return sources._lazy_imagenet(
            split_sources[train_split],
            split_sources[test_split],
            image_size=int(_get(cfg, "image_size", 224)),
            num_train=num_train,
            num_test=num_test,
            seed=seed,
            source="tfds",
        )
    train, test = sources._load_tfds_arrays(tfds, name, tfds_data_dir)
    return _image_dataset(
        name,
        train,
        test,
        num_classes=10,
        source="tfds",
        cfg_num=(num_train, num_test),
        seed=seed,
    )
