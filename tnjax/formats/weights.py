"""Layouts of the tensorized weights of Linear, Conv and Embed layers, in every format.

Each function resolves modes, padding and ranks and returns a `tnjax.formats.layout.Layout`;
all they decide is which tensor each format decomposes (which kernel axes it merges into one
mode, and in what order), and in what order the user lists the ranks. The cores, counts,
specs, bounds, initialisation, decomposition and rank groups follow from the layout.

Linear: the (in, out) kernel is the tensor (I_1..I_d, J_1..J_d), in = prod I, out = prod J.

  cp, tucker, tt, tr   over the 2d modes (I_1..I_d, J_1..J_d) (tt ranks r_1..r_{2d-1};
                       tr r_0..r_{2d-1}; tucker one per mode)
  ttm                  TT over the pairs (I_k J_k): cores (r_{k-1}, I_k, J_k, r_k)
  rcp, rtk, rtt, rtr   CP, Tucker, TT (= ttm), TR over the pairs (I_k J_k) (Su et al.)

Conv: the (kh, kw, S, T) kernel (Flax layout; 1-D (k, S, T) and 3-D (kd, kh, kw, S, T)
alike, with one spatial mode per dimension); reshaped formats split S and T into M modes.

  cp, tucker           over (kh, kw, S, T); tucker is Tucker-2: kh, kw stay in the core
                       (kh, kw, R2, R1); ranks (R1, R2) = (output, input) as in the paper
  tt, tr               over (T, kh, kw, S): (1, T, R1), (R1, kh, R2), (R2, kw, R3), (R3, S, 1)
  rcp, rtk, rtt, rtr   over (T_1 S_1, ..., T_M S_M, kh kw), merged modes stored as one axis
                       (the spatial modes merged into one); rtk ranks (R_0, R_1..R_M) with
                       R_0 the spatial rank

Embed: the (V, E) table as (v_1..v_d, e_1..e_m), V <= prod v (padded), E = prod e.

  cp, tucker, tt, tr   over the d + m modes
  ttm                  TT over the pairs (v_k e_k) (m = d)
  rcp, rtk, rtt, rtr   CP, Tucker, TT (= ttm), TR over the pairs (v_k e_k) (m = d)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tnjax.formats.layout import (
    DEFAULT_NUM_MODES,
    Layout,
    build,
    resolve_modes,
    resolve_ranks,
)

__all__ = [
    "linear_layout",
    "conv_layout",
    "embed_layout",
    "LINEAR_FORMATS",
    "RESHAPED_LINEAR_FORMATS",
    "CONV_FORMATS",
    "PLAIN_CONV_FORMATS",
    "RESHAPED_CONV_FORMATS",
    "EMBED_FORMATS",
]

# format -> the family it decomposes with; "r" formats pair input and output modes.
_FAMILY = {
    "cp": "cp",
    "tucker": "tucker",
    "tt": "tt",
    "tr": "tr",
    "ttm": "tt",
    "rcp": "cp",
    "rtk": "tucker",
    "rtt": "tt",
    "rtr": "tr",
}
_PAIRED = ("ttm", "rcp", "rtk", "rtt", "rtr")
LINEAR_FORMATS = ("cp", "tucker", "tt", "ttm", "tr", "rcp", "rtk", "rtt", "rtr")
RESHAPED_LINEAR_FORMATS = ("rcp", "rtk", "rtt", "rtr")
PLAIN_CONV_FORMATS = ("cp", "tucker", "tt", "tr")
RESHAPED_CONV_FORMATS = ("rcp", "rtk", "rtt", "rtr")
CONV_FORMATS = PLAIN_CONV_FORMATS + RESHAPED_CONV_FORMATS
EMBED_FORMATS = ("cp", "tucker", "tt", "ttm", "tr", "rcp", "rtk", "rtt", "rtr")
_MAX_CONV_MODES = 10

_LINEAR_RANKS = {
    "cp": "(R,)",
    "tucker": "(R_1..R_2d), one per mode of (I_1..I_d, J_1..J_d)",
    "tt": "(r_1..r_{2d-1})",
    "ttm": "(r_1..r_{d-1})",
    "tr": "(r_0..r_{2d-1})",
    "rcp": "(R,)",
    "rtk": "(R_1..R_d), one per pair I_k J_k",
    "rtt": "(r_1..r_{d-1})",
    "rtr": "(r_0..r_{d-1})",
}


def _conv_rank_names(fmt: str, m: int, n: int = 2) -> str:
    """The rank order of a conv format with m channel modes and n spatial dimensions."""
    tt = ", ".join(f"R{i}" for i in range(1, n + 2))
    return {
        "cp": "(R,)",
        "tucker": "(R1, R2) = (output rank, input rank)",
        "tt": f"({tt})",
        "tr": f"(R0, {tt})",
        "rcp": "(R,)",
        "rtk": f"(R0, R1, ..., R{m}) with R0 the spatial rank",
        "rtt": f"(R1, ..., R{m})",
        "rtr": f"(R0, R1, ..., R{m})",
    }[fmt]


def _embed_rank_names(fmt: str) -> str:
    return {
        "ttm": "(r_1..r_{d-1})",
        "tt": "(r_1..r_{d+m-1})",
        "cp": "(R,)",
        "tucker": "(R_1..R_{d+m})",
        "tr": "(r_0..r_{d+m-1})",
        "rcp": "(R,)",
        "rtk": "(R_1..R_d), one per pair v_k e_k",
        "rtt": "(r_1..r_{d-1})",
        "rtr": "(r_0..r_{d-1})",
    }[fmt]


def _named(prefix: str, sizes: Sequence[int]) -> list[tuple[str, int]]:
    return [(f"{prefix}{k}", int(n)) for k, n in enumerate(sizes)]


def _feature_modes(
    in_features: int,
    out_features: int,
    in_modes: Sequence[int] | None,
    out_modes: Sequence[int] | None,
    num_modes: int | None,
    padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output modes, the same number on each side (each pair can share a core).

    `padded_modes` are modes resolved before; otherwise `in_modes`/`out_modes` are checked,
    or balanced ones chosen with `num_modes` modes (default: the given modes' count, else 3).
    """
    if padded_modes is not None:
        rows, cols = (tuple(int(n) for n in m) for m in padded_modes)
    else:
        d = num_modes or (
            len(in_modes) if in_modes else len(out_modes) if out_modes else DEFAULT_NUM_MODES
        )
        rows, _ = resolve_modes(in_features, in_modes, d, "in_modes")
        cols, _ = resolve_modes(out_features, out_modes, d, "out_modes")
    if len(rows) != len(cols):
        raise ValueError(
            f"in_modes {rows} and out_modes {cols} need the same number of modes: "
            "each output/input mode pair shares one core"
        )
    return rows, cols


def _matrix_layout(
    kind: str,
    format: str,
    inputs: tuple[str, Sequence[int]],
    outputs: tuple[str, Sequence[int]],
    features: tuple[int, int],
    rank: int | Sequence[int] | None,
    compression: float | None,
    what: str,
    rank_names: str,
    decompose_options: dict | None = None,
) -> Layout:
    """The layout of a matrix (Linear kernel, Embed table) with input and output modes.

    `inputs`/`outputs` are (name prefix, mode sizes); plain formats decompose every mode,
    the paired ones (ttm, rcp, rtk, rtt, rtr) the pairs (in_k, out_k).
    """
    ins, outs = _named(*inputs), _named(*outputs)
    layout = build(
        kind=kind,
        format=format,
        family=_FAMILY[format],
        spatial=(),
        inputs=ins,
        outputs=outs,
        in_features=int(features[0]),
        out_features=int(features[1]),
        tensor_modes=_modes(format, ins, outs),
        decompose_options=decompose_options,
    )
    return resolve_ranks(layout, rank, compression, what=what, rank_names=rank_names)


def _modes(fmt: str, ins: list, outs: list) -> list[tuple[str, ...]]:
    """Tensor modes over input then output axes: paired (in_k, out_k) or one per axis."""
    if fmt in _PAIRED:
        return [(i, o) for (i, _), (o, _) in zip(ins, outs, strict=True)]
    return [(n,) for n, _ in ins + outs]


def linear_layout(
    in_features: int,
    out_features: int,
    *,
    format: str,
    rank: int | Sequence[int] | None = None,
    compression: float | None = None,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    num_modes: int | None = None,
    padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> Layout:
    """The layout of a tensorized (in_features, out_features) Linear kernel.

    Args:
      in_features, out_features: the dense kernel's sizes.
      format: one of `LINEAR_FORMATS` (see the module docstring).
      rank, compression: exactly one: ranks (an int for every bond, clipped per bond, or
        one per bond) or the fraction of in*out parameters to keep.
      in_modes, out_modes: factorisations (default balanced with `num_modes` modes, padded
        invisibly when a size factors badly).
      num_modes: d, modes per side when none are given (default 3).
      padded_modes: (in_modes, out_modes) resolved before (may be padded).

    Raises:
      ValueError: unknown format, both or neither of rank/compression, modes that do not
        multiply to the feature size, ranks beyond what the modes allow.
    """
    if format not in LINEAR_FORMATS:
        raise ValueError(f"format={format!r} is not one of {LINEAR_FORMATS}")
    rows, cols = _feature_modes(
        in_features, out_features, in_modes, out_modes, num_modes, padded_modes
    )
    what = f"Linear({in_features}, {out_features}, format={format!r})"
    return _matrix_layout(
        "linear",
        format,
        ("in", rows),
        ("out", cols),
        (in_features, out_features),
        rank,
        compression,
        what,
        _LINEAR_RANKS[format],
    )


# The spatial axes of a 1-, 2- or 3-D conv kernel (channels last, as in `nnx.Conv`), and
# how messages name the input's spatial dimensions.
SPATIAL_AXES = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}
SPATIAL_DIM_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def kernel_dims(kernel_size: int | Sequence[int]) -> tuple[int, ...]:
    """A conv's kernel size as a tuple: an int is a square 2-D kernel (k, k); a sequence
    of 1, 2 or 3 ints is a 1-, 2- or 3-D kernel.

    Raises:
      ValueError: not an int or a sequence of 1-3 ints.
    """
    if _is_int(kernel_size):
        return (int(kernel_size),) * 2
    try:
        dims = tuple(kernel_size)
    except TypeError:
        dims = ()
    if not 1 <= len(dims) <= 3 or not all(_is_int(k) for k in dims):
        raise ValueError(
            f"kernel_size={kernel_size!r}: use an int (a square 2-D kernel) or 1, 2 or 3 ints "
            "(a 1-, 2- or 3-D convolution)"
        )
    return tuple(int(k) for k in dims)


def spatial_ints(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """`value` (an int, or one int per spatial dimension) as n ints.

    Raises:
      ValueError: not an int or a sequence of n ints.
    """
    if _is_int(value):
        return (int(value),) * n
    try:
        values = tuple(value)
    except TypeError:
        values = ()
    if len(values) != n or not all(_is_int(v) for v in values):
        raise ValueError(f"{name}={value!r}: use an int or {n} ints for a {n}-D convolution")
    return tuple(int(v) for v in values)


def conv_layout(
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    format: str,
    rank: int | Sequence[int] | None = None,
    compression: float | None = None,
    num_modes: int | None = None,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    feature_group_count: int = 1,
) -> Layout:
    """The layout of a tensorized (k_1..k_n, in_features / G, out_features) Conv kernel,
    n = 1, 2 or 3 spatial dimensions (an int `kernel_size` is a square 2-D kernel), G =
    `feature_group_count` (1: an ordinary convolution).

    A grouped kernel is decomposed as the (k_1..k_n, S / G, T) kernel it is (as stored by
    `nnx.Conv`), with its output channel split into (G, T / G), the group axis also indexing
    the input's channel groups; the reshaped formats factor S / G and T / G into modes
    (the group axis joins the first output mode). Depthwise convolutions are G = S.

    Args are those of `tnjax.nn.Conv`; `padded_modes` re-uses channel modes resolved before
    (per group when grouped).

    Raises:
      ValueError: unknown format, both or neither of rank/compression, modes that do not
        multiply to the channel counts (exactly, per group, when grouped), channels that
        G does not divide, ranks beyond what the kernel allows.
    """
    if format not in CONV_FORMATS:
        raise ValueError(
            f"format={format!r} is not a Conv format; use one of {CONV_FORMATS} "
            f"(the reshaped ones, {RESHAPED_CONV_FORMATS}, split the channels into modes)"
        )
    kernel_size = kernel_dims(kernel_size)
    if min(kernel_size) < 1 or in_features < 1 or out_features < 1:
        raise ValueError(
            f"kernel_size {kernel_size} and features ({in_features}, {out_features}) must be >= 1"
        )
    groups = int(feature_group_count)
    if groups < 1 or in_features % groups or out_features % groups:
        raise ValueError(
            f"feature_group_count={feature_group_count} must be >= 1 and divide both "
            f"in_features={in_features} and out_features={out_features}"
        )
    group_in, group_out = in_features // groups, out_features // groups
    if format in PLAIN_CONV_FORMATS:
        if in_modes is not None or out_modes is not None:
            reshaped = RESHAPED_CONV_FORMATS[PLAIN_CONV_FORMATS.index(format)]
            raise ValueError(
                f"in_modes/out_modes apply to the reshaped formats {RESHAPED_CONV_FORMATS}, "
                f"not to format={format!r}; drop them or use format={reshaped!r}"
            )
        ins_sizes, outs_sizes = (group_in,), (group_out,)
    else:
        ins_sizes, outs_sizes = _feature_modes(
            group_in, group_out, in_modes, out_modes, num_modes, padded_modes
        )
        if groups > 1 and (math.prod(ins_sizes), math.prod(outs_sizes)) != (group_in, group_out):
            raise ValueError(
                f"a grouped {format!r} conv (feature_group_count={groups}) needs channel modes "
                f"that multiply exactly to the per-group channels ({group_in}, {group_out}); "
                f"the modes {ins_sizes} x {outs_sizes} pad them: pass in_modes/out_modes"
            )
    m = len(ins_sizes)
    if m > _MAX_CONV_MODES:
        raise ValueError(f"at most {_MAX_CONV_MODES} channel modes are supported, got {m}")
    names = SPATIAL_AXES[len(kernel_size)]
    spatial = list(zip(names, kernel_size, strict=True))
    ins, outs = _named("in", ins_sizes), _named("out", outs_sizes)
    # the output channel of a grouped kernel is (group, per-group output): the group axis
    # joins the first output mode wherever that is
    first_out = ("grp", "out0") if groups > 1 else ("out0",)
    absorbed: tuple[int, ...] = ()
    rank_order = None
    if format in ("cp", "tucker"):
        modes = [(a,) for a in names] + [("in0",), first_out]
        if format == "tucker":  # Tucker-2; the user lists (output, input) ranks
            absorbed, rank_order = tuple(range(len(names))), (1, 0)
    elif format in ("tt", "tr"):
        modes = [first_out] + [(a,) for a in names] + [("in0",)]
    else:
        modes = [(o, i) for (i, _), (o, _) in zip(ins, outs, strict=True)] + [names]
        modes[0] = first_out + ("in0",)
        if format == "rtk":  # the spatial rank R_0 first
            rank_order = (m,) + tuple(range(m))
    layout = build(
        kind="conv",
        format=format,
        family=_FAMILY[format],
        spatial=spatial,
        inputs=ins,
        outputs=([("grp", groups)] if groups > 1 else []) + outs,
        in_features=in_features,
        out_features=out_features,
        tensor_modes=modes,
        absorbed=absorbed,
        split_stored=False,
        rank_order=rank_order,
        decompose_options={"refit_largest": True} if format in ("cp", "rcp") else None,
        groups=groups,
    )
    what = (
        f"Conv({in_features}, {out_features}, kernel_size={kernel_size}, format={format!r}"
        + (f", feature_group_count={groups}" if groups > 1 else "")
        + (f", modes {ins_sizes} x {outs_sizes})" if format in RESHAPED_CONV_FORMATS else ")")
    )
    rank_names = _conv_rank_names(format, m, len(kernel_size))
    return resolve_ranks(layout, rank, compression, what=what, rank_names=rank_names)


def _resolve_vocab(num_embeddings: int, vocab_modes, num_modes: int) -> tuple[int, ...]:
    if vocab_modes is None:
        return resolve_modes(num_embeddings, None, num_modes, "vocab_modes")[0]
    modes = tuple(int(m) for m in vocab_modes)
    if not modes or any(m < 1 for m in modes) or math.prod(modes) < num_embeddings:
        raise ValueError(
            f"vocab_modes={modes} multiply to {math.prod(modes)} < num_embeddings="
            f"{num_embeddings}; pass modes (>= 1) whose product is at least {num_embeddings} "
            f"(larger products pad the vocabulary, e.g. (200, 220, 250) for 10,131,227 rows) "
            "or leave vocab_modes=None"
        )
    return modes


def embed_layout(
    num_embeddings: int,
    features: int,
    *,
    format: str,
    rank: int | Sequence[int] | None = None,
    compression: float | None = None,
    num_modes: int = DEFAULT_NUM_MODES,
    vocab_modes: Sequence[int] | None = None,
    feature_modes: Sequence[int] | None = None,
    padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> Layout:
    """The layout of a tensorized (num_embeddings, features) table.

    Args are those of `tnjax.nn.Embed`; `padded_modes` (vocab_modes, feature_modes) re-uses
    modes resolved before (feature modes may then be padded).

    Raises:
      ValueError: unknown format, both or neither of rank/compression, modes that do not
        fit the vocabulary or the features, ranks beyond what the modes allow.
    """
    if format not in EMBED_FORMATS:
        raise ValueError(f"format={format!r} is not one of {EMBED_FORMATS}")
    for name, v in (("num_embeddings", num_embeddings), ("features", features)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if padded_modes is not None:
        vocab, feats = (tuple(int(m) for m in ms) for ms in padded_modes)
    else:
        if vocab_modes is not None:
            d = len(vocab_modes)
        elif format in _PAIRED and feature_modes is not None:
            d = len(feature_modes)
        else:
            d = num_modes
        vocab = _resolve_vocab(num_embeddings, vocab_modes, d)
        if format in _PAIRED:
            feats = resolve_modes(features, feature_modes, len(vocab), "feature_modes")[0]
        elif feature_modes is None:
            feats = (features,)
        else:
            feats = resolve_modes(features, feature_modes, 1, "feature_modes")[0]
    if format in _PAIRED and len(vocab) != len(feats):
        raise ValueError(
            f"format={format!r} pairs vocab and feature modes: vocab_modes {vocab} and "
            f"feature_modes {feats} need the same number of modes (pad with 1s)"
        )
    if math.prod(vocab) < num_embeddings or math.prod(feats) < features:
        raise ValueError(
            f"modes {vocab} x {feats} give a ({math.prod(vocab)}, {math.prod(feats)}) table, "
            f"smaller than ({num_embeddings}, {features})"
        )
    what = f"Embed({num_embeddings}, {features}, format={format!r})"
    return _matrix_layout(
        "embed",
        format,
        ("vocab", vocab),
        ("feat", feats),
        (num_embeddings, features),
        rank,
        compression,
        what,
        _embed_rank_names(format),
        # CP weights into the feature factor: the vocabulary factors' rows stay on one scale
        {"fold_last": True} if format == "cp" else None,
    )
