"""Datasets and deterministic batching for the trainers.

`load_dataset(config)` returns a `Dataset` of NumPy arrays held in host memory (or, for
ImageNet, lazily decoded random-access splits). Where the data comes from:

  mnist, fashion_mnist   IDX files (gzipped or not): `$TNJAX_DATA_DIR/<name>/`; Fashion-MNIST
                         also from Debian's `dataset-fashion-mnist` (/usr/share/datasets/...)
  cifar10                the binary version: `$TNJAX_DATA_DIR/[cifar10/]cifar-10-batches-bin/`
  any of the above,      TFDS (`tfds.load(..., download=False)` with TensorFlow, else
  imagenet2012           `tfds.data_source`, which needs no TensorFlow)
  synthetic              Gaussian images labelled by a fixed random linear teacher
  synthetic_clicks       click logs with a planted low-rank embedding teacher (for DLRM)

Batching is a pure function of `(seed, step)` so that a restarted run sees exactly the
batches it would have seen: `train_batch(ds, step, batch_size, seed=...)` permutes the
training set once per epoch with `np.random.default_rng([seed, epoch])` and draws the
augmentation from `np.random.default_rng([seed, step, 1])`. `eval_batches` visits every
example once, padding the last batch to a static shape and marking real rows in `"mask"`.

Check what a config would load with::

  python -m experiments.input_pipeline --name=fashion_mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import importlib.util
import math
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

__all__ = [
    "DATASET_NAMES",
    "AUGMENTATIONS",
    "DatasetError",
    "DatasetNotFoundError",
    "CorruptDatasetError",
    "Dataset",
    "LazySplit",
    "load_dataset",
    "read_idx",
    "read_cifar10_batch",
    "planted_click_logits",
    "steps_per_epoch",
    "train_batch",
    "eval_batches",
    "shard_batch",
    "process_slice",
    "process_rows",
    "check_batch_size",
]

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
AUGMENTATIONS = (None, "none", "cifar", "imagenet")
DATA_DIR_ENV = "TNJAX_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# ImageNet statistics of the usual (RGB, [0, 1]) pipelines: a lazy split cannot afford a pass
# over 1.28M images to measure them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_CENTER_CROP = 0.875  # fraction of the shorter side kept at eval time


# ------------------------------------------------------------------------------------ errors


class DatasetError(RuntimeError):
    """Base class of the input pipeline's errors about data on disk."""


class DatasetNotFoundError(DatasetError):
    """The dataset is neither in a local directory nor prepared for TFDS."""


class CorruptDatasetError(DatasetError):
    """A dataset file exists but its contents are not what its format promises."""


# ----------------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True, eq=False)  # identity equality: fields hold arrays
class Dataset:
    """A train/test pair of splits held as column dicts.

    Attributes:
      name: one of `DATASET_NAMES`.
      train: columns of the training split, every value with the same leading size N, e.g.
        `{"image": (N, H, W, C) float32 normalised, "label": (N,) int32}` or, for clicks,
        `{"dense": (N, D) float32, "sparse": (N, T) int32, "label": (N,) int32}`. For
        ImageNet a `LazySplit` whose columns decode on indexing.
      test: columns of the test split, same keys as `train`.
      num_classes: number of label values (2 for clicks).
      source: where the data came from: `"local:<dir>"`, `"tfds"` or `"synthetic"`.
      info: dataset facts for models and reports; images: `image_shape`, per-channel `mean`
        and `std` used for normalisation; clicks: `vocab_sizes`, `embed_rank`, `num_dense`,
        `embed_dim` and the `planted` teacher (see `planted_click_logits`).
    """

    name: str
    train: Mapping[str, Any]
    test: Mapping[str, Any]
    num_classes: int
    source: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for split_name in ("train", "test"):
            _split_len(getattr(self, split_name), f"{self.name}.{split_name}")

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return _split_len(self.train)

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return _split_len(self.test)


def _split_len(split: Mapping[str, Any], what: str = "split") -> int:
    if isinstance(split, LazySplit):
        return split.num_examples
    if not split:
        raise ValueError(f"{what} has no columns")
    sizes = {key: len(value) for key, value in split.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{what}: columns have different leading sizes {sizes}")
    return next(iter(sizes.values()))


def _readonly(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Batches are fancy-indexed copies; the stored arrays are shared and must stay put.
    for value in columns.values():
        value.setflags(write=False)
    return columns


# ------------------------------------------------------------------------------ file readers

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str) -> bytes:
    """Reads a file, gunzipping it when it starts with the gzip magic (whatever its name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise CorruptDatasetError(
            f"{path}: not a valid gzip file ({type(e).__name__}: {e}); the download was probably "
            "truncated or damaged: delete it and fetch it again"
        ) from e


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not.

    The header is two zero bytes, a dtype code (0x08 = uint8), the number of dimensions d,
    then d big-endian uint32 sizes; the data follow in row-major order. Images files have
    magic 0x00000803 (N, rows, cols) and label files 0x00000801 (N,).

    Args:
      path: the file, e.g. `train-images-idx3-ubyte.gz`.
      ndim: if given, the number of dimensions the file must have.

    Returns:
      The array with the file's shape, in native byte order (uint8 for MNIST files).

    Raises:
      CorruptDatasetError: bad gzip stream, bad magic, unexpected number of dimensions, or
        a data size that is not exactly the product of the dimensions.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise CorruptDatasetError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    zeros, code, d = data[:2], data[2], data[3]
    if zeros != b"\x00\x00" or code not in _IDX_DTYPES or d == 0:
        raise CorruptDatasetError(
            f"{path}: bad IDX magic 0x{magic:08x}; expected 0x000008NN with NN the number of "
            "dimensions (0x00000803 for images, 0x00000801 for labels). Is this an IDX file?"
        )
    if ndim is not None and d != ndim:
        raise CorruptDatasetError(
            f"{path}: IDX file has {d} dimensions (magic 0x{magic:08x}), expected {ndim} "
            f"(magic 0x{0x800 + ndim:08x}); are the images and labels files swapped?"
        )
    header = 4 + 4 * d
    if len(data) < header:
        raise CorruptDatasetError(
            f"{path}: truncated IDX header: {len(data)} bytes, expected at least {header}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(d))
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes after the data"
        raise CorruptDatasetError(
            f"{path}: {what}: the header says shape {shape} of {dtype.name}, i.e. {expected} "
            f"bytes in all, but the (decompressed) file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=dtype.byteorder == ">")


_CIFAR_RECORD = 1 + 32 * 32 * 3


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one file of the CIFAR-10 binary version (`data_batch_1.bin`, `test_batch.bin`).

    Each record is 1 label byte then 3072 image bytes: the 32x32 red plane, then green, then
    blue, rows first.

    Args:
      path: the `.bin` file.

    Returns:
      images: (N, 32, 32, 3) uint8.
      labels: (N,) int32 in [0, 10).

    Raises:
      CorruptDatasetError: the size is not a positive multiple of 3073 bytes, or a label is
        out of range.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if not data or len(data) % _CIFAR_RECORD:
        hint = ""
        if data and len(data) % (_CIFAR_RECORD + 1) == 0:
            hint = " (records of 3074 bytes look like the CIFAR-100 binary version)"
        raise CorruptDatasetError(
            f"{path}: {len(data)} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte "
            f"CIFAR-10 record (1 label byte + 3072 image bytes){hint}; the file is truncated or "
            "not from cifar-10-binary.tar.gz"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= 10:
        bad = int(np.argmax(labels >= 10))
        raise CorruptDatasetError(
            f"{path}: record {bad} has label {labels[bad]}, CIFAR-10 labels are 0..9"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


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


def _local_dirs(name: str, data_dir: str | None) -> list[str]:
    dirs = []
    if data_dir:
        subdirs = {
            "fashion_mnist": ["fashion_mnist", "fashion-mnist"],
            "mnist": ["mnist"],
            "cifar10": [os.path.join("cifar10", "cifar-10-batches-bin"), "cifar-10-batches-bin"],
        }.get(name, [])
        dirs += [os.path.join(data_dir, s) for s in subdirs]
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


def _load_local(name: str, data_dir: str | None) -> tuple[tuple[dict, dict] | None, list[str]]:
    """Returns ((train, test) uint8 columns or None, the directories looked in)."""
    looked_in = _local_dirs(name, data_dir)
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
    return tfds, builder, None


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


# ----------------------------------------------------------------------------- normalisation


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 images (N, H, W, C) on the [0, 1] scale."""
    c = images.shape[-1]
    counts = np.zeros((c, 256), np.int64)
    flat = images.reshape(-1, c)
    step = 1 << 22  # bounds the intp temporary of bincount
    for start in range(0, len(flat), step):
        block = flat[start : start + step]
        for k in range(c):
            counts[k] += np.bincount(block[:, k], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    var = counts @ values**2 / total - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (x / 255 - mean) / std, with one float32 allocation."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    out = images.astype(np.float32)
    out *= (1.0 / (255.0 * std)).astype(np.float32)
    out -= (mean / std).astype(np.float32)
    return out


def _subset_indices(n: int, take: int | None, seed: int, *, shuffle: bool, what: str):
    if take is None:
        return None
    take = int(take)
    if not 0 < take <= n:
        raise ValueError(f"{what}={take} must be in [1, {n}] (the split has {n} examples)")
    if not shuffle:
        return np.arange(take)
    return np.random.default_rng([seed, 0x5EB5E7]).permutation(n)[:take]


def _image_dataset(name, train_u8, test_u8, *, num_classes, source, cfg_num, seed) -> Dataset:
    """Subsets and normalises uint8 image columns with the full training set's statistics."""
    mean, std = _channel_stats(train_u8["image"])
    num_train, num_test = cfg_num
    splits = []
    for columns, take, shuffle, what in (
        (train_u8, num_train, True, "num_train"),
        (test_u8, num_test, False, "num_test"),
    ):
        idx = _subset_indices(len(columns["label"]), take, seed, shuffle=shuffle, what=what)
        if idx is not None:
            columns = {k: v[idx] for k, v in columns.items()}
        splits.append(
            _readonly(
                {
                    "image": _normalise(columns["image"], mean, std),
                    "label": np.ascontiguousarray(columns["label"], dtype=np.int32),
                }
            )
        )
    info = {
        "image_shape": tuple(int(s) for s in train_u8["image"].shape[1:]),
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
    }
    return Dataset(name, splits[0], splits[1], num_classes, source, info)


# ------------------------------------------------------------------------- lazy (ImageNet)


class LazySplit(Mapping):
    """A random-access split decoded on demand, for datasets too big for host memory.

    As a mapping it has the columns `"image"` and `"label"`; each column has `len()` (the
    number of examples) and `column[indices]` decodes those examples. `take` decodes both
    columns at once and is what `train_batch` / `eval_batches` call.

    Images are resized to `image_size` x `image_size`: at eval time the central 87.5% square
    of the shorter side; with an `rng` (training) an Inception-style random-resized crop
    (area 8%..100%, aspect 3/4..4/3) and a random horizontal flip. Pixels are then scaled to
    [0, 1] and normalised per channel with `mean` and `std`.

    Args:
      source: a random-access sequence of records `{"image": (H, W, 3) uint8, "label": int}`,
        such as a `tfds.data_source` split.
      image_size: side of the square output images.
      mean, std: per-channel normalisation on the [0, 1] scale.
      indices: optional subset (and order) of the source's records.
    """

    def __init__(
        self,
        source,
        *,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        indices: np.ndarray | None = None,
    ):
        self.source = source
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.indices = None if indices is None else np.asarray(indices, np.int64)

    @property
    def num_examples(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, key: str) -> _LazyColumn:
        if key not in ("image", "label"):
            raise KeyError(key)
        return _LazyColumn(self, key)

    def __iter__(self):
        return iter(("image", "label"))

    def __len__(self) -> int:
        return 2

    def take(self, indices, *, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Decodes examples.

        Args:
          indices: (B,) positions in this split.
          rng: if given, random-resized crop and flip (training); else center crop.

        Returns:
          {"image": (B, S, S, 3) float32, "label": (B,) int32} with S = image_size.
        """
        from PIL import Image  # only ImageNet needs it

        indices = np.asarray(indices, np.int64).reshape(-1)
        ids = indices if self.indices is None else self.indices[indices]
        ids = [int(i) for i in ids]
        get_many = getattr(self.source, "__getitems__", None)
        records = get_many(ids) if get_many else [self.source[i] for i in ids]
        s = self.image_size
        images = np.empty((len(ids), s, s, 3), np.uint8)
        for b, record in enumerate(records):
            image = np.asarray(record["image"])
            h, w = image.shape[:2]
            if image.ndim == 2 or image.shape[-1] == 1:  # a few ImageNet JPEGs are grayscale
                image = np.repeat(image.reshape(h, w, 1), 3, axis=-1)
            box = _random_resized_box(h, w, rng) if rng is not None else _center_box(h, w)
            pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
            out = np.asarray(pil.resize((s, s), Image.Resampling.BILINEAR, box=box))
            if rng is not None and rng.random() < 0.5:
                out = out[:, ::-1]
            images[b] = out
        labels = np.asarray([int(r["label"]) for r in records], np.int32)
        return {"image": _normalise(images, self.mean, self.std), "label": labels}


class _LazyColumn:
    """One column of a `LazySplit`: `len()` and `column[indices]`."""

    def __init__(self, split: LazySplit, key: str):
        self._split, self._key = split, key

    def __len__(self) -> int:
        return self._split.num_examples

    @property
    def shape(self) -> tuple[int, ...]:
        s = self._split.image_size
        return (len(self), s, s, 3) if self._key == "image" else (len(self),)

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        return self._split.take(np.atleast_1d(indices))[self._key]


def _center_box(h: int, w: int) -> tuple[float, float, float, float]:
    side = _IMAGENET_CENTER_CROP * min(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    return (left, top, left + side, top + side)


def _random_resized_box(h: int, w: int, rng: np.random.Generator):
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if cw <= w and ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (left, top, left + cw, top + ch)
    return _center_box(h, w)


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


# --------------------------------------------------------------------------------- synthetic


def _synthetic_images(cfg, seed: int) -> Dataset:
    """Gaussian images labelled by a random linear teacher on a coarse view of the image.

    Each image is a Gaussian latent of resolution (H/s, W/s, C), s = `latent_stride`,
    upsampled by repetition, plus `pixel_noise` white noise, scaled to unit variance. The
    label is the argmax of an orthonormal random linear map of the latent, so classes are
    balanced in expectation and a linear classifier on s x s average-pooled images learns
    them (the pixel noise is what it has to ignore).
    """
    shape = tuple(int(d) for d in _get(cfg, "image_shape", (28, 28, 1)))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {shape}")
    k = int(_get(cfg, "num_classes", 10))
    stride = int(_get(cfg, "latent_stride", 4))
    noise = float(_get(cfg, "pixel_noise", 0.5))
    if k < 2 or stride < 1 or noise < 0:
        raise ValueError(
            f"synthetic needs num_classes >= 2, latent_stride >= 1, pixel_noise >= 0; got "
            f"{k}, {stride}, {noise}"
        )
    h, w, c = shape
    latent = (-(-h // stride), -(-w // stride), c)
    d = math.prod(latent)
    teacher_rng = np.random.default_rng([seed, 0x7EAC])
    teacher = teacher_rng.standard_normal((d, k))
    if d >= k:
        teacher = np.linalg.qr(teacher)[0]  # orthonormal columns: iid class scores
    else:
        teacher /= np.linalg.norm(teacher, axis=0, keepdims=True)

    def make(n: int, stream: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, stream])
        z = rng.standard_normal((n, *latent), dtype=np.float32)
        x = np.repeat(np.repeat(z, stride, axis=1), stride, axis=2)[:, :h, :w]
        x = x + noise * rng.standard_normal(x.shape, dtype=np.float32)
        x *= np.float32(1.0 / math.sqrt(1.0 + noise**2))
        y = np.argmax(z.reshape(n, d) @ teacher, axis=1).astype(np.int32)
        return _readonly({"image": np.ascontiguousarray(x, np.float32), "label": y})

    num_train = int(_get(cfg, "num_train", 2048))
    num_test = int(_get(cfg, "num_test", 512))
    info = {
        "image_shape": shape,
        "mean": (0.0,) * c,
        "std": (1.0,) * c,
        "latent_stride": stride,
        "pixel_noise": noise,
    }
    return Dataset("synthetic", make(num_train, 1), make(num_test, 2), k, "synthetic", info)


def _synthetic_clicks(cfg, seed: int) -> Dataset:
    """Click logs whose logit has a planted rank-`embed_rank` pairwise-interaction part.

    Per table t an embedding E_t = U_t @ V_t of shape (vocab_t, embed_dim) and rank r; ids
    follow a Zipf law with exponent `zipf_exponent` (0 = uniform) over a random ordering of
    the vocabulary; dense features are standard normal. The logit is

      scale * sum_{a < b} <E_a[id_a], E_b[id_b]> + dense @ w + bias

    with `scale` set so the interaction part has std `interaction_std` (2.0), w so the dense
    part has std about 1, and bias -0.5; the label is Bernoulli(sigmoid(logit)).
    """
    num_dense = int(_get(cfg, "num_dense", 13))
    vocab_sizes = tuple(int(v) for v in _get(cfg, "vocab_sizes", (1000, 1000, 500, 200)))
    rank = int(_get(cfg, "embed_rank", 2))
    dim = int(_get(cfg, "embed_dim", 16))
    zipf = float(_get(cfg, "zipf_exponent", 1.0))
    interaction_std = float(_get(cfg, "interaction_std", 2.0))
    if len(vocab_sizes) < 2 or min(vocab_sizes) < 1:
        raise ValueError(f"vocab_sizes needs >= 2 positive sizes for interactions: {vocab_sizes}")
    if not 1 <= rank <= dim or num_dense < 0:
        raise ValueError(
            f"need 1 <= embed_rank <= embed_dim and num_dense >= 0, got embed_rank={rank}, "
            f"embed_dim={dim}, num_dense={num_dense}"
        )
    rng = np.random.default_rng([seed, 0xC11C])
    embeddings, id_probs = [], []
    for v in vocab_sizes:
        u = rng.standard_normal((v, rank)) / math.sqrt(rank)
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # (rank, dim) orthonormal
        embeddings.append((u @ basis).astype(np.float32))
        p = np.arange(1, v + 1, dtype=np.float64) ** -zipf
        id_probs.append(rng.permutation(p / p.sum()))
    dense_w = (rng.standard_normal(num_dense) / math.sqrt(max(num_dense, 1))).astype(np.float32)
    planted = {
        "embeddings": tuple(embeddings),
        "dense_weights": dense_w,
        "scale": 1.0,
        "bias": -0.5,
    }

    def features(n: int, stream: int):
        r = np.random.default_rng([seed, stream])
        sparse = np.stack([r.choice(len(p), size=n, p=p) for p in id_probs], axis=1)
        dense = r.standard_normal((n, num_dense), dtype=np.float32)
        return dense, sparse.astype(np.int32), r

    # The scale comes from a fixed pilot sample so it does not depend on num_train.
    pilot_dense, pilot_sparse, _ = features(8192, 3)
    pilot = planted_click_logits(planted, np.zeros_like(pilot_dense), pilot_sparse) + 0.5
    planted["scale"] = interaction_std / max(float(np.std(pilot)), 1e-12)

    def make(n: int, stream: int) -> dict[str, np.ndarray]:
        dense, sparse, r = features(n, stream)
        logits = planted_click_logits(planted, dense, sparse)
        labels = (r.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int32)
        return _readonly({"dense": dense, "sparse": sparse, "label": labels})

    info = {
        "vocab_sizes": vocab_sizes,
        "embed_rank": rank,
        "embed_dim": dim,
        "num_dense": num_dense,
        "zipf_exponent": zipf,
        "planted": planted,
    }
    train = make(int(_get(cfg, "num_train", 8192)), 1)
    test = make(int(_get(cfg, "num_test", 2048)), 2)
    return Dataset("synthetic_clicks", train, test, 2, "synthetic", info)


def planted_click_logits(
    planted: Mapping[str, Any], dense: np.ndarray, sparse: np.ndarray
) -> np.ndarray:
    """The true logits of `synthetic_clicks` (the Bayes-optimal scores).

    Args:
      planted: `dataset.info["planted"]` (or the whole `dataset.info`).
      dense: (N, num_dense) float32.
      sparse: (N, T) int ids, one column per embedding table.

    Returns:
      (N,) float32 logits; `sigmoid` of them is the click probability.
    """
    planted = planted.get("planted", planted)
    rows = [e[sparse[:, t]] for t, e in enumerate(planted["embeddings"])]
    total = sum(rows[1:], rows[0])
    # sum_{a<b} <x_a, x_b> = (|sum_a x_a|^2 - sum_a |x_a|^2) / 2
    inter = 0.5 * (np.sum(total**2, axis=1) - sum(np.sum(x**2, axis=1) for x in rows))
    logits = planted["scale"] * inter + dense @ planted["dense_weights"] + planted["bias"]
    return logits.astype(np.float32)


# ------------------------------------------------------------------------------- load_dataset


def _as_config(config) -> Any:
    if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        return ml_collections.ConfigDict(dict(config))
    return config


def _get(cfg, key: str, default=None):
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


PLANTED_FORMATS = ("ttm", "cp", "tucker", "tr")


def planted_kernel(fmt: str, in_modes, out_modes, ranks, seed: int) -> np.ndarray:
    """A (prod in_modes, prod out_modes) kernel whose tensor format has exactly `ranks`.

    ttm: TT-matrix with internal ranks `ranks` (e.g. (3, 2) for 3 modes a side); cp: the
    kernel tensor (I_1..I_d, J_1..J_d) of CP rank `ranks[0]`; tucker: the kernel matrix
    (I, J) = U_in G U_out^T of multilinear ranks `ranks` = (R_in, R_out); tr: a tensor ring
    over (I_1..I_d, J_1..J_d) with ranks `ranks` = (r_0..r_{2d-1}). The scale makes the
    outputs of unit-variance inputs have unit variance.
    """
    from tnjax import formats

    rng = np.random.default_rng([seed, 7])
    in_modes, out_modes = tuple(in_modes), tuple(out_modes)
    n_in, n_out = math.prod(in_modes), math.prod(out_modes)
    if fmt == "ttm":
        r = (1, *ranks, 1)
        cores = [
            rng.standard_normal((r[k], i, j, r[k + 1]))
            for k, (i, j) in enumerate(zip(in_modes, out_modes, strict=True))
        ]
        kernel = np.asarray(formats.TTMatrix(cores).to_dense())
    elif fmt == "cp":
        (rank,) = ranks
        factors = [rng.standard_normal((n, rank)) for n in in_modes + out_modes]
        kernel = np.asarray(formats.CP(np.ones(rank), factors).to_dense()).reshape(n_in, n_out)
    elif fmt == "tucker":
        modes = in_modes + out_modes
        if len(ranks) != len(modes):
            raise ValueError(f"tucker planted_ranks {ranks} need one rank per mode of {modes}")
        factors = [
            np.linalg.qr(rng.standard_normal((n, r)))[0] for n, r in zip(modes, ranks, strict=True)
        ]
        core = rng.standard_normal(tuple(ranks))
        kernel = np.asarray(formats.Tucker(core, factors).to_dense())
    elif fmt == "tr":
        modes = in_modes + out_modes
        if len(ranks) != len(modes):
            raise ValueError(f"tr planted_ranks {ranks} need one rank per mode of {modes}")
        cores = [
            rng.standard_normal((ranks[k], n, ranks[(k + 1) % len(modes)]))
            for k, n in enumerate(modes)
        ]
        kernel = np.asarray(formats.TR(cores).to_dense())
    else:
        raise ValueError(f"planted format {fmt!r} is not one of {PLANTED_FORMATS}")
    kernel = kernel.reshape(n_in, n_out)
    return (kernel / np.sqrt(np.mean(np.sum(kernel**2, axis=0)))).astype(np.float32)


def _planted_linear(cfg, seed: int) -> Dataset:
    """Regression data y = x W + noise with W of planted tensor ranks (rank-recovery checks)."""
    fmt = _get(cfg, "planted_format", "ttm")
    in_modes = tuple(_get(cfg, "in_modes", (4, 8, 8)))
    out_modes = tuple(_get(cfg, "out_modes", (4, 8, 8)))
    ranks = tuple(_get(cfg, "planted_ranks", (3, 2)))
    noise = float(_get(cfg, "noise", 0.05))
    n_train, n_test = int(_get(cfg, "num_train", 4096)), int(_get(cfg, "num_test", 1024))
    kernel = planted_kernel(fmt, in_modes, out_modes, ranks, seed)
    rng = np.random.default_rng([seed, 8])

    def split(n):
        x = rng.standard_normal((n, kernel.shape[0])).astype(np.float32)
        y = x @ kernel + noise * rng.standard_normal((n, kernel.shape[1])).astype(np.float32)
        return _readonly({"x": x, "label": y.astype(np.float32)})

    info = {
        "planted_format": fmt,
        "planted_ranks": ranks,
        "in_modes": in_modes,
        "out_modes": out_modes,
        "noise": noise,
        "kernel": kernel,
    }
    return Dataset("planted_linear", split(n_train), split(n_test), 0, "synthetic", info)


def load_dataset(config) -> Dataset:
    """Loads the dataset a config names.

    Args:
      config: an `ml_collections.ConfigDict`, a dict, or any object with attributes. Fields
        (all but `name` optional): `name` (one of `DATASET_NAMES`), `source` ("auto": local
        files if found, else TFDS; "local"; "tfds"), `data_dir` (default `$TNJAX_DATA_DIR`),
        `tfds_data_dir`, `num_train` / `num_test` (keep the first n of a seeded shuffle of
        the training set / the first n of the test set), `seed` (0), `image_size` (224, for
        ImageNet); for "synthetic": `image_shape` ((28, 28, 1)), `num_classes` (10),
        `num_train` (2048), `num_test` (512), `latent_stride` (4), `pixel_noise` (0.5); for
        "synthetic_clicks": `num_dense` (13), `vocab_sizes` ((1000, 1000, 500, 200)),
        `embed_rank` (2), `embed_dim` (16), `zipf_exponent` (1.0), `interaction_std` (2.0),
        `num_train` (8192), `num_test` (2048).

    Returns:
      The `Dataset`; images are float32, normalised per channel with the training set's mean
      and std (recorded in `info`).

    Raises:
      ValueError: unknown name, source or bad sizes.
      DatasetNotFoundError: no local copy and no prepared TFDS copy; the message says how to
        get one.
      CorruptDatasetError: a local file is damaged.
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
    data_dir = _get(cfg, "data_dir") or os.environ.get(DATA_DIR_ENV) or None
    tfds_data_dir = _get(cfg, "tfds_data_dir")
    num_train, num_test = _get(cfg, "num_train"), _get(cfg, "num_test")

    looked_in: list[str] = []
    if source in ("auto", "local") and name != "imagenet2012":
        found, looked_in = _load_local(name, data_dir)
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
    elif name == "imagenet2012" and source == "local":
        raise _not_found(name, [], "source='local' was asked for", tfds_data_dir or "DIR")
    if source == "local":
        raise _not_found(name, looked_in, None, tfds_data_dir or "DIR")

    tfds, builder, problem = _tfds_builder(name, tfds_data_dir)
    if problem is not None:
        raise _not_found(name, looked_in, problem, _tfds_dir_for_message(builder, tfds_data_dir))
    if name == "imagenet2012":
        sources = _tfds_data_source(tfds, name, tfds_data_dir)
        train_split, test_split = _TFDS_SPLITS[name]
        return _lazy_imagenet(
            sources[train_split],
            sources[test_split],
            image_size=int(_get(cfg, "image_size", 224)),
            num_train=num_train,
            num_test=num_test,
            seed=seed,
            source="tfds",
        )
    train, test = _load_tfds_arrays(tfds, name, tfds_data_dir)
    return _image_dataset(
        name,
        train,
        test,
        num_classes=10,
        source="tfds",
        cfg_num=(num_train, num_test),
        seed=seed,
    )


# ----------------------------------------------------------------------------------- batching


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches per epoch (the remainder is dropped).

    Raises:
      ValueError: batch_size < 1 or larger than num_examples.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {num_examples} training examples; "
            "lower the batch size or use more data (num_train)"
        )
    return num_examples // batch_size


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm


def _pad_crop_flip(
    images: np.ndarray, rng: np.random.Generator, rows: slice = slice(None), total: int = 0
) -> np.ndarray:
    """Zero-pads (B, H, W, C) by 4, crops a random H x W window and flips half of them.

    `images` may be the rows `rows` of a batch of `total`: the draws are made for the whole
    batch and sliced, so a process's rows are augmented exactly as in a one-process run.
    """
    pad = 4
    b, h, w, _ = images.shape
    total = total or b
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, 2 * pad + 1, size=total)[rows]
    left = rng.integers(0, 2 * pad + 1, size=total)[rows]
    r = top[:, None] + np.arange(h)  # (B, H)
    c = left[:, None] + np.arange(w)  # (B, W)
    out = padded[np.arange(b)[:, None, None], r[:, :, None], c[:, None, :]]
    return _flip(out, rng, rows, total)


def _flip(
    images: np.ndarray, rng: np.random.Generator, rows: slice = slice(None), total: int = 0
) -> np.ndarray:
    flip = (rng.random(total or images.shape[0]) < 0.5)[rows]
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def process_slice(batch_size: int, process: tuple[int, int] = (0, 1)) -> slice:
    """The rows [i B/P, (i+1) B/P) of a global batch of B that process i of P feeds.

    Raises:
      ValueError: P does not divide B, or i is not in [0, P).
    """
    index, count = process
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process {index} of {count}: need 0 <= index < count")
    if batch_size % count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {count} processes that feed it; "
            f"use a multiple of {count}"
        )
    per = batch_size // count
    return slice(index * per, (index + 1) * per)


def process_rows(batch: Mapping[str, np.ndarray], process: tuple[int, int]) -> dict:
    """This process's rows (`process_slice`) of every column of a global batch."""
    if process[1] == 1:
        return dict(batch)
    rows = process_slice(len(next(iter(batch.values()))), process)
    return {key: value[rows] for key, value in batch.items()}


def train_batch(
    ds: Dataset,
    step: int,
    batch_size: int,
    *,
    seed: int,
    augment: str | None = None,
    process: tuple[int, int] = (0, 1),
) -> dict[str, np.ndarray]:
    """The training batch of a step, a pure function of (seed, step).

    Epoch e = step // steps_per_epoch visits the training set in the order
    `np.random.default_rng([seed, e]).permutation(N)`, batch_size examples per step, dropping
    the remainder. Augmentation draws from `np.random.default_rng([seed, step, 1])`.

    Args:
      ds: the dataset.
      step: global step, >= 0.
      batch_size: examples per global batch (over all processes).
      seed: non-negative int.
      augment: None / "none"; "cifar" (zero-pad 4, random crop back to H x W, random
        horizontal flip); "imagenet" (random flip; for a lazy split, a random-resized crop
        and flip while decoding).
      process: (index, count): return only the rows `process_slice` gives this process
        (reading only those); the same rows, augmented alike, as in a one-process run,
        except a lazy split's "imagenet" crops, drawn per process.

    Returns:
      The columns of the batch, each with leading size batch_size / count, e.g.
      {"image": (B, H, W, C) float32, "label": (B,) int32}.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {AUGMENTATIONS}")
    if step < 0 or seed < 0:
        raise ValueError(f"step and seed must be non-negative, got step={step}, seed={seed}")
    n = ds.num_train
    spe = steps_per_epoch(n, batch_size)
    epoch, i = divmod(int(step), spe)
    rows = process_slice(batch_size, process)
    idx = _epoch_permutation(int(seed), epoch, n)[i * batch_size : (i + 1) * batch_size][rows]
    rng = np.random.default_rng([int(seed), int(step), 1])
    if isinstance(ds.train, LazySplit):
        if process[1] > 1:
            rng = np.random.default_rng([int(seed), int(step), 1, process[0]])
        batch = ds.train.take(idx, rng=rng if augment == "imagenet" else None)
        if augment == "imagenet":
            return batch  # the crop and flip happened while decoding
    else:
        batch = {key: value[idx] for key, value in ds.train.items()}
    if augment in (None, "none"):
        return batch
    if "image" not in batch or np.ndim(batch["image"]) != 4:
        raise ValueError(
            f"augment={augment!r} needs an 'image' column of shape (B, H, W, C); the batch has "
            f"{ {k: np.shape(v) for k, v in batch.items()} }"
        )
    images = batch["image"]
    if augment == "cifar":
        batch["image"] = _pad_crop_flip(images, rng, rows, batch_size)
    else:
        batch["image"] = _flip(images, rng, rows, batch_size)
    return batch


def eval_batches(split: Mapping[str, Any], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Yields every example of a split once, in order, in batches of a static shape.

    The last batch is zero-padded to batch_size. Each batch has a `"mask"` column, (B,)
    float32, 1 for real examples and 0 for padding: weight per-example metrics with it.

    Args:
      split: `ds.test` (or `ds.train`): columns with a common leading size N, or a LazySplit.
      batch_size: B.

    Yields:
      {**columns (B, ...), "mask": (B,) float32}; ceil(N / B) batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = _split_len(split)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        if isinstance(split, LazySplit):
            batch = split.take(idx)
        else:
            batch = {key: np.asarray(value[idx]) for key, value in split.items()}
        real = len(idx)
        if real < batch_size:
            batch = {
                key: np.pad(value, [(0, batch_size - real)] + [(0, 0)] * (value.ndim - 1))
                for key, value in batch.items()
            }
        mask = np.zeros(batch_size, np.float32)
        mask[:real] = 1.0
        batch["mask"] = mask
        yield batch


# ----------------------------------------------------------------------------------- devices


def check_batch_size(batch_size: int, num_devices: int) -> None:
    """Raises ValueError unless batch_size splits evenly over num_devices."""
    if num_devices < 1 or batch_size < 1:
        raise ValueError(
            f"batch_size and num_devices must be >= 1, got {batch_size} and {num_devices}"
        )
    if batch_size % num_devices:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {num_devices} devices it is split "
            f"over; use a multiple of {num_devices}, e.g. "
            f"{max(num_devices, batch_size // num_devices * num_devices)}"
        )


def _leading_shards(sharding: jax.sharding.Sharding, ndim: int) -> int:
    """How many pieces `sharding` cuts the leading axis of an ndim-array into."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = sharding.spec
        axes = spec[0] if len(spec) else None
        if axes is None:
            return 1
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        return math.prod(sharding.mesh.shape[a] for a in axes)
    if sharding.is_fully_replicated:
        return 1
    # Other shardings: the shard count of an axis divides the device count, so a probe of
    # that size along every axis is divisible.
    n = len(sharding.device_set)
    return n // sharding.shard_shape((n,) * ndim)[0]


def shard_batch(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding | None
) -> dict[str, jax.Array]:
    """Puts a host batch on devices, split along the leading (batch) axis.

    Args:
      batch: columns with a common leading size B (this process's examples).
      sharding: a data-parallel sharding such as
        `NamedSharding(mesh, PartitionSpec("data"))`, or None for the default device.

    Returns:
      The same columns as jax.Arrays. With several processes the result is the global
      array assembled from each process's batch.

    Raises:
      ValueError: B (times the process count) is not divisible by the number of shards of
        the leading axis.
    """
    if sharding is None:
        return {key: jax.device_put(value) for key, value in batch.items()}
    nproc = jax.process_count()
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch[{key!r}] is a scalar; batch columns need a leading axis")
        shards = _leading_shards(sharding, value.ndim)
        global_b = value.shape[0] * nproc
        if global_b % shards:
            raise ValueError(
                f"batch[{key!r}] has leading size {global_b} (shape {value.shape}"
                f"{f' x {nproc} processes' if nproc > 1 else ''}), not divisible by the "
                f"{shards} devices along the sharded axis; make the batch size a multiple of "
                f"{shards} (see check_batch_size)"
            )
        if nproc > 1:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[key] = jax.device_put(value, sharding)
    return out


# --------------------------------------------------------------------------------------- CLI


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.input_pipeline",
        description="Load a dataset as a config would and print what came out.",
    )
    parser.add_argument("--name", required=True, choices=DATASET_NAMES)
    parser.add_argument("--source", default="auto", choices=SOURCES)
    parser.add_argument("--data_dir", default=None, help=f"default: ${DATA_DIR_ENV}")
    parser.add_argument("--tfds_data_dir", default=None)
    parser.add_argument("--num_train", type=int, default=None)
    parser.add_argument("--num_test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        ds = load_dataset(vars(args))
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{ds.name}: source={ds.source} num_classes={ds.num_classes}")
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        shapes = ", ".join(
            f"{k} {tuple(np.shape(v)) if not isinstance(v, _LazyColumn) else v.shape} "
            f"{getattr(v, 'dtype', 'lazy')}"
            for k, v in split.items()
        )
        print(f"  {split_name}: {_split_len(split)} examples: {shapes}")
        if isinstance(split, LazySplit):
            print("    class counts: not computed for a lazy split")
        else:
            counts = np.bincount(split["label"], minlength=ds.num_classes)
            print(f"    class counts: {counts.tolist()}")
    info = {k: v for k, v in ds.info.items() if k != "planted"}
    print(f"  info: {info}")


if __name__ == "__main__":
    _main()
