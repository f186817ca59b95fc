"""Synthetic datasets: Gaussian images, click logs with a planted embedding teacher, and
regression data whose kernel has planted tensor ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.input_pipeline.dataset import Dataset, _get, _readonly


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
