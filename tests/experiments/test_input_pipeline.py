"""Tests of experiments.input_pipeline: file readers, loaders, synthetic data, batching."""

import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import input_pipeline as ip
from experiments.input_pipeline import sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASHION_DIR = ip.DEBIAN_FASHION_MNIST_DIR


# ------------------------------------------------------------------------------ helpers


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def _write(path, data: bytes, gz: bool = False):
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return str(path)


def _write_mnist(directory, n_train=30, n_test=12, seed=0, gz=True):
    """Writes a tiny MNIST-like IDX set; returns the raw (images, labels) per split."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            _write(os.path.join(directory, f"{split}-{kind}-ubyte{suffix}"), _idx_bytes(array), gz)
        raw[split] = (images, labels)
    return raw


def _write_cifar(directory, records_per_file=3, seed=0):
    """Writes a tiny CIFAR-10 binary set; returns the raw (N, 3, 32, 32) images and labels."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name in sources._CIFAR_FILES:
        labels = rng.integers(0, 10, records_per_file, dtype=np.uint8)
        chw = rng.integers(0, 256, (records_per_file, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], chw.reshape(records_per_file, -1)], axis=1)
        _write(os.path.join(directory, name), records.tobytes())
        out[name] = (chw, labels)
    return out


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _small_ds(n=50, num_classes=5):
    train = {
        "image": np.arange(n * 4 * 4 * 1, dtype=np.float32).reshape(n, 4, 4, 1),
        "label": (np.arange(n) % num_classes).astype(np.int32),
        "id": np.arange(n),
    }
    test = {k: v[:7] for k, v in train.items()}
    return ip.Dataset("toy", train, test, num_classes, "synthetic")


@pytest.fixture(scope="module")
def fashion():
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(
            f"{FASHION_DIR} is absent: `apt-get install dataset-fashion-mnist` to run this test"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TNJAX_DATA_DIR", raising=False)  # no data_dir at all: Debian's copy
        return ip.load_dataset({"name": "fashion_mnist", "source": "local"})


# ------------------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    p_images = _write(tmp_path / "images", _idx_bytes(images), gz)
    p_labels = _write(tmp_path / "labels", _idx_bytes(labels), gz)
    np.testing.assert_array_equal(ip.read_idx(p_images), images)
    np.testing.assert_array_equal(ip.read_idx(p_labels, ndim=1), labels)
    assert ip.read_idx(p_images).dtype == np.uint8


def _good_idx():
    return _idx_bytes(np.zeros((4, 5, 6), np.uint8))


@pytest.mark.parametrize(
    "make, gz, match",
    [
        (lambda: b"\x00\x00\x07\x03" + _good_idx()[4:], False, "bad IDX magic"),
        (lambda: b"\x12\x34" + _good_idx()[2:], False, "bad IDX magic"),
        (lambda: _good_idx()[:-1], False, "truncated"),
        (lambda: _good_idx()[:10], False, "truncated IDX header"),
        (lambda: _good_idx() + b"\x00", False, "trailing bytes"),
        (lambda: _good_idx()[:-7], True, "truncated"),  # gzip stream fine, data short
        (lambda: gzip.compress(_good_idx())[:-20], False, "not a valid gzip file"),
        (lambda: b"\x1f\x8b" + b"garbage" * 10, False, "not a valid gzip file"),
    ],
    ids=[
        "magic-dtype",
        "magic-zeros",
        "truncated",
        "short-header",
        "trailing",
        "gz-truncated",
        "gz-cut",
        "gz-garbage",
    ],
)
def test_read_idx_corrupt(tmp_path, make, gz, match):
    path = _write(tmp_path / "broken-idx3-ubyte.gz", make(), gz)
    with pytest.raises(ip.CorruptDatasetError, match=match) as err:
        ip.read_idx(path)
    assert "broken-idx3-ubyte.gz" in str(err.value)


def test_read_idx_wrong_ndim_and_sizes_named(tmp_path):
    path = _write(tmp_path / "labels", _idx_bytes(np.zeros(7, np.uint8)))
    with pytest.raises(ip.CorruptDatasetError, match="1 dimensions.*expected 3"):
        ip.read_idx(path, ndim=3)
    path = _write(tmp_path / "short", _idx_bytes(np.zeros((2, 3), np.uint8))[:-2])
    with pytest.raises(ip.CorruptDatasetError, match=r"\(2, 3\) of uint8, i.e. 18 bytes.*has 16"):
        ip.read_idx(path)


# ------------------------------------------------------------------------------ local IDX


def test_local_mnist_from_data_dir(tmp_path, monkeypatch):
    raw = _write_mnist(tmp_path / "mnist", gz=False)
    monkeypatch.setenv("TNJAX_DATA_DIR", str(tmp_path))  # the default data_dir
    ds = ip.load_dataset({"name": "mnist", "source": "local"})
    assert ds.source == f"local:{tmp_path / 'mnist'}"
    assert ds.train["image"].shape == (30, 28, 28, 1) and ds.train["image"].dtype == np.float32
    assert ds.test["label"].dtype == np.int32 and ds.num_test == 12 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train["label"], raw["train"][1])
    mean, std = ds.info["mean"][0], ds.info["std"][0]
    u8 = raw["train"][0].astype(np.float64) / 255
    assert mean == pytest.approx(u8.mean()) and std == pytest.approx(u8.std())
    np.testing.assert_allclose(
        ds.test["image"][..., 0], (raw["t10k"][0] / 255 - mean) / std, rtol=1e-5, atol=1e-5
    )
    assert abs(ds.train["image"].mean()) < 1e-4
    assert ds.train["image"].std() == pytest.approx(1, 1e-4)
    assert not ds.train["image"].flags.writeable


def test_local_idx_count_mismatch_and_partial_dir(tmp_path):
    d = tmp_path / "mnist"
    _write_mnist(d)
    _write(d / "t10k-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(11, np.uint8)), gz=True)
    with pytest.raises(ip.CorruptDatasetError, match="12 images but .*t10k-labels.* 11 labels"):
        ip.load_dataset({"name": "mnist", "data_dir": str(tmp_path)})
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ip.DatasetNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        ip.load_dataset({"name": "mnist", "data_dir": str(tmp_path)})


def test_fashion_mnist_debian_package(fashion):
    ds = fashion
    assert ds.source == f"local:{FASHION_DIR}"
    assert ds.train["image"].shape == (60000, 28, 28, 1)
    assert ds.test["image"].shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.train["label"]), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test["label"]), [1000] * 10)
    x = ds.train["image"]
    assert abs(float(x.mean(dtype=np.float64))) < 1e-3
    assert float(x.std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-3)
    assert ds.info["mean"][0] == pytest.approx(0.2860, abs=1e-3)  # the usual Fashion-MNIST stats
    assert ds.info["std"][0] == pytest.approx(0.3530, abs=1e-3)


def test_subsets_are_seeded_and_share_full_train_stats(fashion):
    cfg = {"name": "fashion_mnist", "data_dir": FASHION_DIR, "num_train": 500, "num_test": 64}
    a = ip.load_dataset(cfg)
    b = ip.load_dataset(cfg)
    c = ip.load_dataset({**cfg, "seed": 1})
    assert a.num_train == 500 and a.num_test == 64
    np.testing.assert_array_equal(a.train["image"], b.train["image"])
    assert not np.array_equal(a.train["label"], c.train["label"])
    assert a.info == fashion.info  # normalised with the full training set's statistics
    np.testing.assert_array_equal(a.test["image"], fashion.test["image"][:64])
    # a shuffle, not the head of the file: every image is one of the training images
    assert not np.array_equal(a.train["label"], fashion.train["label"][:500])
    assert len(np.unique(a.train["label"])) == 10
    with pytest.raises(ValueError, match=r"num_train=70000 must be in \[1, 60000\]"):
        ip.load_dataset({**cfg, "num_train": 70000})


# ------------------------------------------------------------------------------ missing data


def test_missing_local_dataset_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TNJAX_DATA_DIR", str(tmp_path))  # the default data_dir
    with pytest.raises(ip.DatasetNotFoundError) as err:
        ip.load_dataset({"name": "mnist", "source": "local"})
    msg = str(err.value)
    assert "TNJAX_DATA_DIR" in msg and "tfds" in msg and str(tmp_path / "mnist") in msg
    assert "train-images-idx3-ubyte" in msg
    with pytest.raises(ip.DatasetNotFoundError, match="cifar-10-batches-bin"):
        ip.load_dataset({"name": "cifar10", "source": "local"})


def test_missing_tfds_dataset_does_not_download(tmp_path, monkeypatch):
    tfds_dir = tmp_path / "no_tfds_here"
    with pytest.raises(ip.DatasetNotFoundError) as err:
        ip.load_dataset({"name": "mnist", "source": "tfds", "tfds_data_dir": str(tfds_dir)})
    msg = str(err.value)
    assert "not prepared" in msg and "download_and_prepare" in msg and str(tfds_dir) in msg
    assert not tfds_dir.exists()
    # auto: no local copy either -> one error naming both places
    monkeypatch.setenv("TNJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(ip.DatasetNotFoundError, match="looked in: .*nor in TFDS"):
        ip.load_dataset({"name": "mnist", "tfds_data_dir": str(tfds_dir)})
    # both directories given explicitly: both are read, and nothing else
    with pytest.raises(ip.DatasetNotFoundError) as err:
        ip.load_dataset(
            {"name": "mnist", "data_dir": str(tmp_path), "tfds_data_dir": str(tfds_dir)}
        )
    msg = str(err.value)
    assert f"mnist not found in data_dir {tmp_path};" in msg
    assert f"{os.path.join(tmp_path, '')} itself; nor in TFDS (not prepared in {tfds_dir}" in msg
    assert "data_dir and tfds_data_dir were given explicitly" in msg
    with pytest.raises(ip.DatasetNotFoundError, match="ILSVRC2012_img_train.tar"):
        ip.load_dataset({"name": "imagenet2012", "tfds_data_dir": str(tfds_dir)})


def test_bad_name_and_source():
    with pytest.raises(ValueError, match="valid names: mnist, fashion_mnist, cifar10"):
        ip.load_dataset({"name": "emnist"})
    with pytest.raises(ValueError, match="unknown data source 'gcs'"):
        ip.load_dataset({"name": "mnist", "source": "gcs"})


# ------------------------------------------------------------------------------ explicit data_dir


def _no_tfds(monkeypatch):
    def fail(name, tfds_data_dir):
        raise AssertionError("TFDS was consulted although data_dir was given explicitly")

    monkeypatch.setattr(sources, "_tfds_builder", fail)


def _explicit_error(data_dir, monkeypatch, source="auto"):
    _no_tfds(monkeypatch)
    cfg = {"name": "fashion_mnist", "source": source, "data_dir": str(data_dir)}
    with pytest.raises(ip.DatasetNotFoundError) as err:
        ip.load_dataset(cfg)
    msg = str(err.value)
    assert len(msg.splitlines()) <= 2, msg
    assert "data_dir was given explicitly, so no other copy is used" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg and "t10k-labels-idx1-ubyte[.gz]" in msg
    assert str(data_dir) in msg
    return msg


@pytest.mark.parametrize("source", ["auto", "local"])
def test_explicit_data_dir_that_does_not_exist(tmp_path, monkeypatch, source):
    missing = tmp_path / "no_such_dir"
    msg = _explicit_error(missing, monkeypatch, source)
    assert f"data_dir {missing} does not exist" in msg
    assert not missing.exists()


def test_explicit_empty_data_dir_uses_no_other_copy(tmp_path, monkeypatch):
    msg = _explicit_error(tmp_path, monkeypatch)
    assert f"fashion_mnist not found in data_dir {tmp_path};" in msg
    for where in ("fashion_mnist", "fashion-mnist"):
        assert os.path.join(tmp_path, where, "") in msg
    assert f"or {os.path.join(tmp_path, '')} itself" in msg
    assert FASHION_DIR in msg  # only as the default that an unset data_dir would search


def test_explicit_flat_data_dir_gives_the_debian_arrays(tmp_path, monkeypatch):
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(f"{FASHION_DIR} is absent: `apt-get install dataset-fashion-mnist`")
    for name in os.listdir(FASHION_DIR):
        shutil.copy(os.path.join(FASHION_DIR, name), tmp_path / name)
    _no_tfds(monkeypatch)
    monkeypatch.delenv("TNJAX_DATA_DIR", raising=False)
    cfg = {"name": "fashion_mnist", "num_train": 300, "num_test": 40, "seed": 2}
    flat = ip.load_dataset({**cfg, "data_dir": str(tmp_path)})
    debian = ip.load_dataset(cfg)
    assert flat.source == f"local:{tmp_path}" and debian.source == f"local:{FASHION_DIR}"
    assert flat.info == debian.info
    for split in ("train", "test"):
        for key in ("image", "label"):
            np.testing.assert_array_equal(getattr(flat, split)[key], getattr(debian, split)[key])


@pytest.mark.parametrize("subdir", ["fashion_mnist", "fashion-mnist"])
def test_explicit_nested_data_dir(tmp_path, monkeypatch, subdir):
    raw = _write_mnist(tmp_path / subdir, n_train=20, n_test=10)
    _no_tfds(monkeypatch)
    ds = ip.load_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path)})
    assert ds.source == f"local:{tmp_path / subdir}"
    assert ds.num_train == 20 and ds.num_test == 10
    np.testing.assert_array_equal(ds.test["label"], raw["t10k"][1])
    mean, std = ds.info["mean"][0], ds.info["std"][0]
    np.testing.assert_array_equal(
        np.rint((ds.train["image"][..., 0] * std + mean) * 255).astype(np.uint8), raw["train"][0]
    )


@pytest.mark.parametrize("layout", ["flat", "fashion_mnist"])
def test_explicit_data_dir_truncated_file_is_an_error(tmp_path, monkeypatch, layout):
    directory = tmp_path if layout == "flat" else tmp_path / layout
    _write_mnist(directory, n_train=20, n_test=10)
    broken = directory / "train-labels-idx1-ubyte.gz"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _no_tfds(monkeypatch)
    # Debian's copy (if installed) is never used instead
    with pytest.raises(ip.CorruptDatasetError, match="not a valid gzip file") as err:
        ip.load_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path)})
    assert str(broken) in str(err.value)


def test_explicit_tfds_data_dir_is_the_only_tfds_root(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    elsewhere = tmp_path / "elsewhere" / "mnist" / "3.0.1"

    class PreparedElsewhere:
        data_dir = str(elsewhere)

        def is_prepared(self):
            return True

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: PreparedElsewhere())
    mine = tmp_path / "mine"
    with pytest.raises(ip.DatasetNotFoundError) as err:
        ip.load_dataset({"name": "mnist", "source": "tfds", "tfds_data_dir": str(mine)})
    msg = str(err.value)
    assert f"not prepared in {mine}" in msg and "tfds_data_dir was given explicitly" in msg
    assert str(elsewhere) in msg


# ------------------------------------------------------------------------------ CIFAR-10


@pytest.mark.parametrize("layout", ["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin", ""])
def test_local_cifar10_binary(tmp_path, layout):
    raw = _write_cifar(tmp_path / layout)
    ds = ip.load_dataset({"name": "cifar10", "source": "local", "data_dir": str(tmp_path)})
    assert ds.train["image"].shape == (15, 32, 32, 3) and ds.test["image"].shape == (3, 32, 32, 3)
    chw = np.concatenate([raw[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    labels = np.concatenate([raw[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.train["label"], labels)
    mean, std = np.array(ds.info["mean"]), np.array(ds.info["std"])
    restored = np.rint((ds.train["image"] * std + mean) * 255).astype(np.uint8)
    np.testing.assert_array_equal(restored, chw.transpose(0, 2, 3, 1))  # (N, H, W, C)
    assert ds.info["image_shape"] == (32, 32, 3) and len(ds.info["mean"]) == 3


def test_cifar10_wrong_size_file(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    _write_cifar(d)
    with open(d / "data_batch_3.bin", "ab") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(ip.CorruptDatasetError, match="data_batch_3.bin: 9319 bytes .*3073-byte"):
        ip.load_dataset({"name": "cifar10", "data_dir": str(tmp_path)})
    _write(d / "data_batch_3.bin", b"\x0c" + b"\x00" * 3072)
    with pytest.raises(ip.CorruptDatasetError, match="data_batch_3.bin: record 0 has label 12"):
        ip.load_dataset({"name": "cifar10", "data_dir": str(tmp_path)})


# ------------------------------------------------------------------------------ TFDS (faked)


class _FakeSource:
    """A random-access split like `tfds.data_source(...)[split]`."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": np.int64(self.labels[i])}


def _fake_tfds(monkeypatch, splits):
    class FakeTfds:
        @staticmethod
        def data_source(name, data_dir=None, download=True):
            assert download is False
            return splits

    monkeypatch.setattr(sources, "_tfds_builder", lambda name, d: (FakeTfds, object(), None))
    monkeypatch.setattr(sources, "_has_tensorflow", lambda: False)


def test_tfds_data_source_path_without_tensorflow(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(20) % 10
    train, test = _FakeSource(images[:15], labels[:15]), _FakeSource(images[15:], labels[15:])
    _fake_tfds(monkeypatch, {"train": train, "test": test})
    ds = ip.load_dataset({"name": "fashion_mnist", "source": "tfds"})
    assert ds.source == "tfds" and ds.num_train == 15 and ds.num_test == 5
    np.testing.assert_array_equal(ds.test["label"], labels[15:])
    assert ds.info["mean"][0] == pytest.approx(images[:15].mean() / 255)


def test_lazy_imagenet_batches(monkeypatch):
    rng = np.random.default_rng(0)
    shapes = [(40, 60), (50, 30), (33, 33), (64, 48), (20, 90), (45, 45), (30, 31)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    images[2] = images[2][..., :1]  # grayscale JPEGs exist
    source = _FakeSource(images, np.arange(7) * 100)
    _fake_tfds(monkeypatch, {"train": source, "validation": _FakeSource(images[:3], [1, 2, 3])})
    ds = ip.load_dataset({"name": "imagenet2012", "image_size": 16, "num_train": 6})
    assert isinstance(ds.train, ip.LazySplit) and ds.num_train == 6 and ds.num_test == 3
    assert ds.train["image"].shape == (6, 16, 16, 3) and ds.num_classes == 1000
    a = ip.train_batch(ds, 5, 4, seed=3, augment="imagenet")
    b = ip.train_batch(ds, 5, 4, seed=3, augment="imagenet")
    assert a["image"].shape == (4, 16, 16, 3) and a["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], b["image"])
    plain = ip.train_batch(ds, 5, 4, seed=3)
    np.testing.assert_array_equal(plain["label"], a["label"])
    assert not np.allclose(plain["image"], a["image"])
    batches = list(ip.eval_batches(ds.test, 2))
    np.testing.assert_array_equal(np.concatenate([x["label"] for x in batches]), [1, 2, 3, 0])
    np.testing.assert_array_equal(batches[1]["mask"], [1, 0])
    # center crop of a constant image is that constant, normalised
    const = ip.LazySplit(_FakeSource([np.full((10, 20, 3), 255, np.uint8)], [0]), image_size=4)
    expected = (1 - np.array(ip.IMAGENET_MEAN)) / np.array(ip.IMAGENET_STD)
    np.testing.assert_allclose(
        const["image"][[0]][0], np.broadcast_to(expected, (4, 4, 3)), rtol=1e-5
    )


# ------------------------------------------------------------------------------ batching


def test_steps_per_epoch():
    assert ip.steps_per_epoch(100, 32) == 3 and ip.steps_per_epoch(64, 64) == 1
    with pytest.raises(ValueError, match="batch_size 65 is larger than the 64"):
        ip.steps_per_epoch(64, 65)
    with pytest.raises(ValueError, match=">= 1"):
        ip.steps_per_epoch(64, 0)


def test_train_batch_is_a_pure_function_of_seed_and_step():
    ds = _small_ds(50)
    spe = ip.steps_per_epoch(50, 8)  # 6 steps, 2 examples dropped per epoch
    a, b = ip.train_batch(ds, 3, 8, seed=7), ip.train_batch(ds, 3, 8, seed=7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert set(a) == {"image", "label", "id"} and a["image"].shape == (8, 4, 4, 1)
    np.testing.assert_array_equal(a["image"][:, 0, 0, 0], a["id"] * 16.0)  # columns aligned
    assert not np.array_equal(a["id"], ip.train_batch(ds, 4, 8, seed=7)["id"])
    assert not np.array_equal(a["id"], ip.train_batch(ds, 3, 8, seed=8)["id"])
    epochs = [
        np.concatenate([ip.train_batch(ds, e * spe + i, 8, seed=7)["id"] for i in range(spe)])
        for e in range(2)
    ]
    for ids in epochs:
        assert len(ids) == 48 and len(np.unique(ids)) == 48  # each example at most once
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    expected = np.random.default_rng([7, 1]).permutation(50)[:48]
    np.testing.assert_array_equal(epochs[1], expected)  # the documented order
    with pytest.raises(ValueError, match="unknown augment"):
        ip.train_batch(ds, 0, 8, seed=0, augment="mixup")


def test_cifar_augmentation():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 32, 32, 3)).astype(np.float32)
    train = {"image": images, "label": np.zeros(40, np.int32)}
    ds = ip.Dataset("toy", train, {k: v[:2] for k, v in train.items()}, 10, "synthetic")
    a = ip.train_batch(ds, 2, 16, seed=1, augment="cifar")
    b = ip.train_batch(ds, 2, 16, seed=1, augment="cifar")
    plain = ip.train_batch(ds, 2, 16, seed=1)
    assert a["image"].shape == (16, 32, 32, 3) and a["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], plain["image"])
    # every augmented image is a shifted (maybe flipped) window of its zero-padded original
    for aug, orig in zip(a["image"], plain["image"], strict=True):
        padded = np.pad(orig, ((4, 4), (4, 4), (0, 0)))
        crops = [padded[dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        windows = crops + [c[:, ::-1] for c in crops]
        assert any(np.array_equal(aug, w) for w in windows)
    flipped = ip.train_batch(ds, 2, 16, seed=1, augment="imagenet")["image"]
    for f, orig in zip(flipped, plain["image"], strict=True):
        assert np.array_equal(f, orig) or np.array_equal(f, orig[:, ::-1])


def test_eval_batches_cover_each_example_once():
    ds = _small_ds(23)
    batches = list(ip.eval_batches(ds.train, 8))
    assert len(batches) == 3
    for batch in batches:
        assert {k: v.shape[0] for k, v in batch.items()} == dict.fromkeys(batch, 8)
        assert batch["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    ids = np.concatenate([b["id"] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 23 + [0])
    np.testing.assert_array_equal(ids[mask == 1], np.arange(23))
    assert np.all(batches[-1]["image"][-1] == 0)
    assert len(list(ip.eval_batches(ds.train, 23))) == 1


# ------------------------------------------------------------------------------ synthetic


def test_synthetic_images_are_learnable_and_deterministic():
    cfg = {"name": "synthetic", "seed": 3}
    ds, again = ip.load_dataset(cfg), ip.load_dataset(cfg)
    other = ip.load_dataset({**cfg, "seed": 4})
    np.testing.assert_array_equal(ds.train["image"], again.train["image"])
    np.testing.assert_array_equal(ds.test["label"], again.test["label"])
    assert not np.array_equal(ds.train["label"], other.train["label"])
    assert ds.train["image"].shape == (2048, 28, 28, 1)
    assert ds.test["image"].shape == (512, 28, 28, 1)
    assert ds.train["image"].dtype == np.float32 and ds.train["label"].dtype == np.int32
    assert ds.source == "synthetic" and ds.num_classes == 10
    counts = np.bincount(ds.train["label"], minlength=10)
    assert counts.min() > 0.6 * 2048 / 10 and counts.max() < 1.4 * 2048 / 10, counts
    assert abs(ds.train["image"].mean()) < 0.02
    assert ds.train["image"].std() == pytest.approx(1, 0.02)

    def features(x):  # 4x4 average pooling, then a least-squares linear classifier
        pooled = x.reshape(len(x), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), -1)
        return np.c_[pooled, np.ones(len(x))]

    coef = np.linalg.lstsq(features(ds.train["image"]), np.eye(10)[ds.train["label"]])[0]
    accuracy = np.mean(features(ds.test["image"]).dot(coef).argmax(1) == ds.test["label"])
    assert accuracy > 0.5, accuracy
    small = ip.load_dataset(
        {
            "name": "synthetic",
            "image_shape": (8, 8, 3),
            "num_classes": 3,
            "num_train": 64,
            "num_test": 16,
        }
    )
    assert small.train["image"].shape == (64, 8, 8, 3) and small.test["label"].max() < 3


def test_synthetic_clicks_have_a_planted_low_rank_signal():
    cfg = {"name": "synthetic_clicks", "seed": 0}
    ds, again = ip.load_dataset(cfg), ip.load_dataset(cfg)
    for key in ("dense", "sparse", "label"):
        np.testing.assert_array_equal(ds.train[key], again.train[key])
    assert ds.train["dense"].shape == (8192, 13) and ds.train["dense"].dtype == np.float32
    assert ds.train["sparse"].shape == (8192, 4) and ds.train["sparse"].dtype == np.int32
    assert ds.test["label"].shape == (2048,) and ds.num_classes == 2
    vocab = np.array(ds.info["vocab_sizes"])
    assert np.all(ds.train["sparse"] >= 0) and np.all(ds.train["sparse"] < vocab)
    assert ds.info["embed_rank"] == 2 and ds.info["num_dense"] == 13
    for table, v in zip(ds.info["planted"]["embeddings"], vocab, strict=True):
        assert table.shape == (v, 16) and np.linalg.matrix_rank(table, tol=1e-4) == 2
    rate = ds.train["label"].mean()
    assert 0.25 < rate < 0.75, rate
    logits = ip.planted_click_logits(ds.info, ds.test["dense"], ds.test["sparse"])
    assert _auc(logits, ds.test["label"]) > 0.75
    # the interactions matter: dense features alone are a much weaker ranking
    dense_only = ds.test["dense"] @ ds.info["planted"]["dense_weights"]
    assert _auc(dense_only, ds.test["label"]) < _auc(logits, ds.test["label"]) - 0.05
    other = ip.load_dataset(
        {**cfg, "embed_rank": 3, "vocab_sizes": (50, 40, 30), "num_train": 100, "num_test": 10}
    )
    assert other.train["sparse"].shape == (100, 3)
    assert np.linalg.matrix_rank(other.info["planted"]["embeddings"][0], tol=1e-4) == 3


# ------------------------------------------------------------------------------ CLI


def test_cli_prints_shapes_and_class_counts():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.input_pipeline",
            "--name=synthetic_clicks",
            "--num_train=64",
            "--num_test=16",
        ],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sparse (64, 4) int32" in proc.stdout and "class counts" in proc.stdout
