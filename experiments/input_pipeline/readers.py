"""Byte readers of the dataset file formats: IDX (MNIST) and the CIFAR-10 binary version.

Each checks what its format promises (gzip stream, magic, sizes, label range) and raises
`CorruptDatasetError` naming the file when the bytes disagree.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from experiments.input_pipeline.dataset import CorruptDatasetError

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
