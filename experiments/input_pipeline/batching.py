"""Deterministic batching: training batches as a pure function of (seed, step), their
augmentation, padded evaluation batches, and each process's rows of a global batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from experiments.input_pipeline.dataset import Dataset, LazySplit, _split_len

AUGMENTATIONS = (None, "none", "cifar", "imagenet")


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
