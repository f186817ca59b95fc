"""What a dataset is: the `Dataset` of two splits, its errors, normalisation and subsets.

A split is a dict of NumPy columns held in host memory, or a `LazySplit` that decodes
(ImageNet) examples on indexing. Images are normalised per channel with the full training
set's statistics; `num_train` / `num_test` subsets are seeded. `_get` reads an optional
config field, None meaning unset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

# ImageNet statistics of the usual (RGB, [0, 1]) pipelines: a lazy split cannot afford a pass
# over 1.28M images to measure them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_CENTER_CROP = 0.875  # fraction of the shorter side kept at eval time


# ------------------------------------------------------------------------------------ errors


class DatasetError(RuntimeError):
    """Base class of the input pipeline's errors about data on disk."""


class DatasetNotFoundError(DatasetError):
    """The dataset is not in the given data_dir, or (without one) neither local nor in TFDS."""


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


# ----------------------------------------------------------------------------- config fields


def _as_config(config) -> Any:
    if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        return ml_collections.ConfigDict(dict(config))
    return config


def _get(cfg, key: str, default=None):
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


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
