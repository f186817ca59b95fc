"""Where real datasets come from: local copies and TFDS, and errors that say how to get them."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import numpy as np

from experiments.input_pipeline.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptDatasetError,
    Dataset,
    DatasetError,
    DatasetNotFoundError,
    LazySplit,
    _subset_indices,
)
from experiments.input_pipeline.readers import read_cifar10_batch, read_idx

DATA_DIR_ENV = "TNJAX_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# ------------------------------------------------------------------------------ local copies

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)

_LOCAL_HINTS = {
    "fashion_mnist": (
        "install it with `apt-get install dataset-fashion-mnist` (it lands in "
        f"{DEBIAN_FASHION_MNIST_DIR}/), or set {DATA_DIR_ENV} / --config.data.data_dir to a "
        "directory whose fashion_mnist/ subdirectory holds the IDX files "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (gzipped or not)"
    ),
    "mnist": (
        f"set {DATA_DIR_ENV} / --config.data.data_dir to a directory whose mnist/ subdirectory "
        "holds the IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzipped or not)"
    ),
    "cifar10": (
        "download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"extract it into a directory and set {DATA_DIR_ENV} / --config.data.data_dir to it "
        "(it must then hold cifar-10-batches-bin/ with data_batch_1.bin .. data_batch_5.bin "
        "and test_batch.bin)"
    ),
}


def _imagenet_tfds_hint(tfds_dir: str) -> str:
    return (
        "ImageNet needs a manual download: register at https://image-net.org/download-images, "
        "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into "
        f"{tfds_dir.rstrip('/')}/downloads/manual/ and run `tfds.builder('imagenet2012', "
        f"data_dir='{tfds_dir}', file_format='array_record').download_and_prepare()` (array_record "
        "gives random access without TensorFlow); then pass --config.data.tfds_data_dir"
    )


def _tfds_hint(name: str, tfds_dir: str) -> str:
    if name == "imagenet2012":
        return _imagenet_tfds_hint(tfds_dir)
    return (
        f"or prepare it with `tfds.builder('{name}', data_dir='{tfds_dir}', "
        "file_format='array_record').download_and_prepare()` on a machine with network and "
        "pass that directory as --config.data.tfds_data_dir (or TFDS_DATA_DIR)"
    )


def _not_found(name: str, looked_in: Sequence[str], tfds_problem: str | None, tfds_dir: str):
    if name == "imagenet2012":
        return DatasetNotFoundError(
            f"imagenet2012 not found in TFDS ({tfds_problem}); it has no local reader, only "
            f"TFDS. To fix: {_imagenet_tfds_hint(tfds_dir)}, and use source='tfds' or 'auto'."
        )
    where = ", ".join(looked_in) if looked_in else f"nowhere: {DATA_DIR_ENV} is not set"
    parts = [f"{name} not found locally (looked in: {where})"]
    if tfds_problem:
        parts.append(f"nor in TFDS ({tfds_problem})")
    return DatasetNotFoundError(
        "; ".join(parts) + f". To fix: {_LOCAL_HINTS[name]}; {_tfds_hint(name, tfds_dir)}."
    )


def _not_in_data_dir(
    name: str, data_dir: str, looked_in: Sequence[str], tfds_problem: str | None = None
) -> DatasetNotFoundError:
    """The error for a dataset absent from an explicit data_dir, which is all that was read.

    `tfds_problem`: why TFDS failed too, when an explicit tfds_data_dir was also tried.
    """
    if name == "cifar10":
        expected = ", ".join(_CIFAR_FILES)
    else:
        expected = ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
    places = [os.path.join(d, "") for d in looked_in]
    where = ", ".join(places[:-1]) + f" or {places[-1]} itself"
    if not os.path.exists(data_dir):
        what = f"{name}: data_dir {data_dir} does not exist"
    elif not os.path.isdir(data_dir):
        what = f"{name}: data_dir {data_dir} is not a directory"
    else:
        what = f"{name} not found in data_dir {data_dir}"
    given, it = "data_dir was given explicitly", "it"
    if tfds_problem:
        where += f"; nor in TFDS ({tfds_problem})"
        given, it = "data_dir and tfds_data_dir were given explicitly", "them"
    defaults = [f"${DATA_DIR_ENV}"]
    if name == "fashion_mnist":
        defaults.append(f"{DEBIAN_FASHION_MNIST_DIR}/")
    return DatasetNotFoundError(
        f"{what}; expected {expected} in {where}.\n{given}, so no other copy is used: fix {it}, "
        f"or leave {it} unset to search {', '.join(defaults)} and TFDS."
    )


def _local_dirs(name: str, data_dir: str | None, *, explicit: bool = False) -> list[str]:
    """The directories searched for a local copy, in order.

    The dataset's subdirectories of `data_dir`; then, for an `explicit` data_dir (the
    config's own), `data_dir` itself and nothing else; otherwise Debian's Fashion-MNIST.
    """
    dirs = []
    if data_dir:
        subdirs = {
            "fashion_mnist": ["fashion_mnist", "fashion-mnist"],
            "mnist": ["mnist"],
            "cifar10": [os.path.join("cifar10", "cifar-10-batches-bin"), "cifar-10-batches-bin"],
        }.get(name, [])
        dirs += [os.path.join(data_dir, s) for s in subdirs]
    if explicit:
        return [*dirs, os.fspath(data_dir)]  # a flat directory holding the files themselves
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def _find_file(directory: str, stem: str) -> str | None:
    # MNIST mirrors differ in "-idx3-" vs ".idx3-" and in gzipping.
    stems = {stem, stem.replace("-idx", ".idx")}
    for s in sorted(stems):
        for candidate in (s, s + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    return None


def _read_local_idx(name: str, directory: str) -> tuple[dict, dict] | None:
    """Reads the four IDX files of `directory`; None when it holds none of them."""
    paths = {key: _find_file(directory, stem) for key, stem in _IDX_FILES.items()}
    if not any(paths.values()):
        return None
    missing = [_IDX_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"{name}: {directory} holds only part of the dataset, missing {', '.join(missing)}; "
            "copy the missing files there or remove the directory"
        )
    splits = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], ndim=3)
        labels = read_idx(paths[f"{split}_labels"], ndim=1)
        if len(images) != len(labels):
            raise CorruptDatasetError(
                f"{paths[f'{split}_images']} has {len(images)} images but "
                f"{paths[f'{split}_labels']} has {len(labels)} labels"
            )
        if labels.size and labels.max() >= 10:
            raise CorruptDatasetError(
                f"{paths[f'{split}_labels']}: label {labels.max()} out of range 0..9"
            )
        splits.append({"image": images[..., None], "label": labels.astype(np.int32)})
    return splits[0], splits[1]


def _read_local_cifar10(directory: str) -> tuple[dict, dict] | None:
    present = [f for f in _CIFAR_FILES if os.path.isfile(os.path.join(directory, f))]
    if not present:
        return None
    missing = [f for f in _CIFAR_FILES if f not in present]
    if missing:
        raise DatasetNotFoundError(
            f"cifar10: {directory} holds only part of the dataset, missing {', '.join(missing)}; "
            "extract cifar-10-binary.tar.gz there again"
        )
    parts = [read_cifar10_batch(os.path.join(directory, f)) for f in _CIFAR_FILES]
    train = {
        "image": np.concatenate([p[0] for p in parts[:5]]),
        "label": np.concatenate([p[1] for p in parts[:5]]),
    }
    return train, {"image": parts[5][0], "label": parts[5][1]}


def _load_local(
    name: str, data_dir: str | None, *, explicit: bool = False
) -> tuple[tuple[dict, dict] | None, list[str]]:
    """Returns ((train, test) uint8 columns or None, the directories looked in)."""
    looked_in = _local_dirs(name, data_dir, explicit=explicit)
    for directory in looked_in:
        if not os.path.isdir(directory):
            continue
        if name == "cifar10":
            found = _read_local_cifar10(directory)
        else:
            found = _read_local_idx(name, directory)
        if found is not None:
            return (found, f"local:{directory}"), looked_in
    return None, looked_in


# --------------------------------------------------------------------------------------- tfds

_TFDS_SPLITS = {"imagenet2012": ("train", "validation")}


def _tfds_builder(name: str, tfds_data_dir: str | None):
    """Returns (tfds module, builder, problem); problem is None when the data are prepared."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None, None, "tensorflow_datasets is not installed: `pip install tensorflow-datasets`"
    builder = tfds.builder(name, data_dir=tfds_data_dir)
    if not builder.is_prepared():
        return tfds, builder, f"not prepared in {builder.data_dir}"
    if tfds_data_dir and not _is_within(os.fspath(builder.data_dir), tfds_data_dir):
        # TFDS reads only a data_dir it is given; should that change, an explicit one still rules.
        return (
            tfds,
            builder,
            (
                f"not prepared in {tfds_data_dir}; tfds_data_dir was given explicitly, so the copy "
                f"in {builder.data_dir} is not used"
            ),
        )
    return tfds, builder, None


def _is_within(path: str, root: str) -> bool:
    path, root = (os.path.abspath(os.path.expanduser(os.fspath(p))) for p in (path, root))
    return os.path.commonpath([path, root]) == root


def _tfds_dir_for_message(builder, tfds_data_dir: str | None) -> str:
    if tfds_data_dir:
        return tfds_data_dir
    if builder is not None:
        # builder.data_dir is <root>/<name>/<version>
        return os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
    return "~/tensorflow_datasets"


def _tfds_data_source(tfds, name: str, tfds_data_dir: str | None):
    try:
        return tfds.data_source(name, data_dir=tfds_data_dir, download=False)
    except NotImplementedError as e:
        raise DatasetError(
            f"{name} is prepared for TFDS in TFRecord format, which needs TensorFlow to read "
            "(not installed). Either `pip install tensorflow`, or prepare it again with "
            f"`tfds.builder('{name}', data_dir=..., file_format='array_record')"
            ".download_and_prepare()` (random access without TensorFlow)"
            + (f", or use local files: {_LOCAL_HINTS[name]}" if name in _LOCAL_HINTS else "")
        ) from e


def _records_to_columns(source, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Reads every record of a random-access TFDS split into {"image", "label"} arrays."""
    n = len(source)
    get_many = getattr(source, "__getitems__", None)
    images, labels = [], []
    for start in range(0, n, chunk):
        ids = list(range(start, min(start + chunk, n)))
        records = get_many(ids) if get_many else [source[i] for i in ids]
        images += [np.asarray(r["image"]) for r in records]
        labels += [int(r["label"]) for r in records]
    return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _load_tfds_arrays(tfds, name: str, tfds_data_dir: str | None) -> tuple[dict, dict]:
    splits = _TFDS_SPLITS.get(name, ("train", "test"))
    if _has_tensorflow():
        loaded = tfds.as_numpy(
            tfds.load(
                name, split=list(splits), batch_size=-1, data_dir=tfds_data_dir, download=False
            )
        )
        out = [{"image": s["image"], "label": s["label"].astype(np.int32)} for s in loaded]
    else:
        sources = _tfds_data_source(tfds, name, tfds_data_dir)
        out = [_records_to_columns(sources[s]) for s in splits]
    return out[0], out[1]


def _lazy_imagenet(train_source, test_source, *, image_size, num_train, num_test, seed, source):
    n_train, n_test = len(train_source), len(test_source)
    train_idx = _subset_indices(n_train, num_train, seed, shuffle=True, what="num_train")
    test_idx = _subset_indices(n_test, num_test, seed, shuffle=False, what="num_test")
    info = {
        "image_shape": (image_size, image_size, 3),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    return Dataset(
        "imagenet2012",
        LazySplit(train_source, image_size=image_size, indices=train_idx),
        LazySplit(test_source, image_size=image_size, indices=test_idx),
        1000,
        source,
        info,
    )
