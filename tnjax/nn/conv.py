"""Tensorized drop-in replacement for `flax.nnx.Conv` (2-D, NHWC).

The dense kernel W (kh, kw, S, T) (Flax layout: S input, T output channels) is stored in a
tensor format. Plain formats (Lebedev et al., Kim et al., the TNN paper's section 3.2):

  cp      factors (kh, R), (kw, R), (S, R), (T, R); no weight vector (folded into a
          factor).                                        params R (T + S + kh + kw)
  tucker  Tucker-2: core (kh, kw, R2, R1), U_s (S, R2), U_t (T, R1); rank (R1, R2) is
          (output rank, input rank) as in the paper.     params R1 T + R2 S + R1 R2 kh kw
  tt      TT over the kernel permuted to (T, kh, kw, S): cores (1, T, R1), (R1, kh, R2),
          (R2, kw, R3), (R3, S, 1).                      params R1 T + R1 R2 kh + R2 R3 kw + R3 S
  tr      TR over (T, kh, kw, S): cores (R0, T, R1), (R1, kh, R2), (R2, kw, R3), (R3, S, R0).
                                              params R0 R1 T + R1 R2 kh + R2 R3 kw + R3 R0 S

Reshaped formats (Su et al.; the TNN paper): S = prod_m S_m and T = prod_m T_m are split
into M = `num_modes` modes and the order-(M+1) tensor with modes
(T_1 S_1, ..., T_M S_M, kh kw) (T_m major within a merged mode) is decomposed, so each
output/input mode pair shares one core and the spatial part has its own core:

  rcp     CP factors (T_m S_m, R), (kh kw, R).            params R (sum_m T_m S_m + kh kw)
  rtk     Tucker core (R_1, ..., R_M, R_0), factors (T_m S_m, R_m), (kh kw, R_0);
          rank (R_0, R_1, ..., R_M), R_0 the spatial rank.
                                          params sum_m R_m T_m S_m + R_0 kh kw + prod_m R_m
  rtt     TT cores (R_{m-1}, T_m S_m, R_m) with R_0 = 1, then (R_M, kh kw, 1);
          rank (R_1, ..., R_M).   params T_1 S_1 R_1 + sum_{m>1} R_{m-1} R_m T_m S_m + R_M kh kw
  rtr     TR cores (R_{m-1}, T_m S_m, R_m), then (R_M, kh kw, R_0); rank (R_0, ..., R_M).
                                          params sum_m R_{m-1} R_m T_m S_m + R_M R_0 kh kw

The forward pass is one `tnjax.ops.contract` call whose spec convolves h and w, e.g. CP is
"bhws,hA,wA,sA,tA->bhwt|hw" and RCP with M = 3 is
"bhwsij,tsA,ciA,djA,hwA->bhwtcd|hw" (input reshaped to (B, H, W, S_1, S_2, S_3), merged
cores reshaped to (T_m, S_m, R) and (kh, kw, R), which is free under jit). Its planner
picks the evaluation order from the actual shapes, including "reconstruct the kernel from
the small cores, then one convolution" when that is cheaper.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tnjax import formats
from tnjax.nn._common import (
    DEFAULT_NUM_MODES,
    Core,
    dense_init_std,
    fit_ranks,
    pad_cores,
    resolve_modes,
    uniform_ranks,
)
from tnjax.ops import contract, contract_path

__all__ = [
    "Conv",
    "ConvLayout",
    "conv_layout",
    "CONV_FORMATS",
    "PLAIN_CONV_FORMATS",
    "RESHAPED_CONV_FORMATS",
]

PLAIN_CONV_FORMATS = ("cp", "tucker", "tt", "tr")
RESHAPED_CONV_FORMATS = ("rcp", "rtk", "rtt", "rtr")
CONV_FORMATS = PLAIN_CONV_FORMATS + RESHAPED_CONV_FORMATS
_RESHAPED_OF = dict(zip(PLAIN_CONV_FORMATS, RESHAPED_CONV_FORMATS, strict=True))

_ZEROS = nnx.initializers.zeros_init()
# Einsum letters: "b" batch, "h"/"w" the convolved spatial modes, then input-channel and
# output-channel modes (disjoint pools), and upper case for ranks.
_IN_LETTERS = "sijklmnopq"
_OUT_LETTERS = "tcdefgaruv"
_RANK_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MAX_MODES = len(_IN_LETTERS)
_PADDING_STRINGS = ("SAME", "VALID", "CIRCULAR", "REFLECT")

# A group is (letters, sizes): one stored dimension of size prod(sizes) that `__call__`
# reshapes into len(sizes) dimensions named by `letters` (empty for a TT boundary rank 1).
_Group = tuple[str, tuple[int, ...]]


# --------------------------------------------------------------------------- format algebra
# Pure Python on static sizes: tensor modes, core shapes, rank bounds, parameter counts, specs.


def _rank_names(fmt: str, m: int) -> str:
    names = {
        "cp": "(R,)",
        "tucker": "(R1, R2) = (output rank, input rank)",
        "tt": "(R1, R2, R3)",
        "tr": "(R0, R1, R2, R3)",
        "rcp": "(R,)",
        "rtk": f"(R0, R1, ..., R{m}) with R0 the spatial rank",
        "rtt": f"(R1, ..., R{m})",
        "rtr": f"(R0, R1, ..., R{m})",
    }
    return names[fmt]


def _num_ranks(fmt: str, m: int) -> int:
    return {"cp": 1, "tucker": 2, "tt": 3, "tr": 4, "rcp": 1, "rtk": m + 1, "rtt": m, "rtr": m + 1}[
        fmt
    ]


def _tensor_modes(
    fmt: str, kernel_size: tuple[int, int], ins: tuple[int, ...], outs: tuple[int, ...]
) -> list[_Group]:
    """Modes of the tensor that the format decomposes, as (letters, sizes) groups."""
    kh, kw = kernel_size
    if fmt in ("cp", "tucker"):
        return [("h", (kh,)), ("w", (kw,)), ("s", ins), ("t", outs)]
    if fmt in ("tt", "tr"):
        return [("t", outs), ("h", (kh,)), ("w", (kw,)), ("s", ins)]
    m = len(ins)
    pairs = [(_OUT_LETTERS[k] + _IN_LETTERS[k], (outs[k], ins[k])) for k in range(m)]
    return pairs + [("hw", (kh, kw))]


def _core_groups(fmt: str, tmodes: list[_Group], ranks: tuple[int, ...]) -> list[list[_Group]]:
    """The cores, each a list of groups in stored-dimension order."""
    d = len(tmodes)
    rk = _RANK_LETTERS
    if fmt in ("cp", "rcp"):
        return [[mode, (rk[0], (ranks[0],))] for mode in tmodes]
    if fmt == "tucker":
        r1, r2 = ranks  # (output rank "A", input rank "B")
        h, w, s, t = tmodes
        out_r, in_r = ("A", (r1,)), ("B", (r2,))
        return [[h, w, in_r, out_r], [s, in_r], [t, out_r]]
    if fmt == "rtk":
        tr = ranks[1:] + ranks[:1]  # tensor order: (R_1..R_M, R_0)
        bonds = [(rk[k], (tr[k],)) for k in range(d)]
        return [bonds] + [[tmodes[k], bonds[k]] for k in range(d)]
    if fmt in ("tt", "rtt"):
        r = (1,) + tuple(ranks) + (1,)
        bonds = [("", ()) if k in (0, d) else (rk[k], (r[k],)) for k in range(d + 1)]
        return [[bonds[k], tmodes[k], bonds[k + 1]] for k in range(d)]
    if fmt in ("tr", "rtr"):
        bonds = [(rk[k], (ranks[k],)) for k in range(d)]
        return [[bonds[k], tmodes[k], bonds[(k + 1) % d]] for k in range(d)]
    raise ValueError(f"format={fmt!r} is not one of {CONV_FORMATS}")


def _max_ranks(fmt: str, tshape: tuple[int, ...], kernel_size, ins, outs) -> tuple[int, ...]:
    """Largest useful rank per position (in the order of the `rank` argument)."""
    total = math.prod(tshape)
    d = len(tshape)
    if fmt in ("cp", "rcp"):
        return (total // max(tshape),)
    if fmt == "tucker":
        khw = kernel_size[0] * kernel_size[1]
        s, t = ins[0], outs[0]
        return (min(t, khw * s), min(s, khw * t))
    if fmt == "rtk":
        per_mode = tuple(min(n, total // n) for n in tshape)
        return per_mode[-1:] + per_mode[:-1]
    if fmt in ("tt", "rtt"):
        return tuple(
            min(math.prod(tshape[: k + 1]), math.prod(tshape[k + 1 :])) for k in range(d - 1)
        )
    if fmt in ("tr", "rtr"):  # cutting bonds 0 and k: r_0 * r_k <= min(both arcs); r_0 <= I_1
        n0 = tshape[0]
        return (n0,) + tuple(
            n0 * min(math.prod(tshape[:k]), math.prod(tshape[k:])) for k in range(1, d)
        )
    raise ValueError(f"format={fmt!r} is not one of {CONV_FORMATS}")


def _format_rank(fmt: str, ranks: tuple[int, ...], kernel_size: tuple[int, int]) -> Any:
    """The `rank` argument of the format class's `random`/`from_dense`."""
    if fmt in ("cp", "rcp"):
        return ranks[0]
    if fmt == "tucker":
        return (*kernel_size, ranks[1], ranks[0])
    if fmt == "rtk":
        return ranks[1:] + ranks[:1]
    if fmt in ("tt", "rtt"):
        return (1,) + tuple(ranks) + (1,)
    return tuple(ranks)


def _ranks_of_cores(fmt: str, cores: Sequence[jax.Array]) -> tuple[int, ...]:
    if fmt in ("cp", "rcp"):
        return (int(cores[0].shape[-1]),)
    if fmt == "tucker":
        return (int(cores[0].shape[3]), int(cores[0].shape[2]))
    if fmt == "rtk":
        shape = tuple(int(n) for n in cores[0].shape)
        return shape[-1:] + shape[:-1]
    if fmt in ("tt", "rtt"):
        return tuple(int(c.shape[-1]) for c in cores[:-1])
    return tuple(int(c.shape[0]) for c in cores)


def _cores_of(fmt: str, t: Any) -> list[jax.Array]:
    """Stored cores from a format object over the layer's tensor."""
    if fmt in ("cp", "rcp"):  # fold the weights into the first factor
        factors = list(t.factors)
        factors[0] = factors[0] * t.weights[None, :]
        return factors
    if fmt == "tucker":  # Tucker over (kh, kw, S, T): absorb the spatial factors into the core
        fh, fw, us, ut = t.factors
        return [jnp.einsum("abqp,ha,wb->hwqp", t.core, fh, fw), us, ut]
    if fmt == "rtk":
        return [t.core, *t.factors]
    return list(t.cores)


_FORMAT_CLASSES = {
    "cp": formats.CP,
    "rcp": formats.CP,
    "tucker": formats.Tucker,
    "rtk": formats.Tucker,
    "tt": formats.TT,
    "rtt": formats.TT,
    "tr": formats.TR,
    "rtr": formats.TR,
}


@dataclasses.dataclass(frozen=True)
class ConvLayout:
    """Static structure of a tensorized Conv layer (pure Python, no arrays).

    Attributes:
      format: one of `CONV_FORMATS`.
      kernel_size: (kh, kw).
      in_features, out_features: S and T of the dense kernel (kh, kw, S, T).
      in_modes, out_modes: (S_1..S_M), (T_1..T_M) for reshaped formats, (S,), (T,) otherwise;
        their products are the padded channel counts.
      in_padded, out_padded: prod(in_modes), prod(out_modes) (>= S, T).
      ranks: the ranks in the order of the `rank` argument (see `Conv`).
      max_ranks: the largest useful rank per position (same order); the full-rank layer.
      tensor_shape: shape of the tensor the format decomposes (e.g. (T_1 S_1, ..., kh kw)).
      tensor_letters: einsum letters of that tensor's modes once the merged modes are split.
      core_shapes: shapes of the stored cores (the format's own layout).
      operand_shapes: the cores' shapes inside `contract` (merged modes split apart).
      core_terms: the cores' einsum terms.
      spec: the forward `contract` spec, x (B, H, W, S_1..S_M) -> (B, H', W', T_1..T_M).
      kernel_spec: the spec reconstructing the kernel (kh, kw, S_1..S_M, T_1..T_M).
    """

    format: str
    kernel_size: tuple[int, int]
    in_features: int
    out_features: int
    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]
    in_padded: int
    out_padded: int
    ranks: tuple[int, ...]
    max_ranks: tuple[int, ...]
    tensor_shape: tuple[int, ...]
    tensor_letters: str
    core_shapes: tuple[tuple[int, ...], ...]
    operand_shapes: tuple[tuple[int, ...], ...]
    core_terms: tuple[str, ...]
    spec: str
    kernel_spec: str

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.core_shapes)

    @property
    def kernel_letters(self) -> str:
        m = len(self.in_modes)
        return "hw" + _IN_LETTERS[:m] + _OUT_LETTERS[:m]


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair for a 2-D convolution, got {value}")
    return value


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
) -> ConvLayout:
    """Resolves modes, padding and ranks of a tensorized Conv without allocating it.

    Arguments are those of `Conv`; `padded_modes` re-uses modes resolved before.

    Raises:
      ValueError: unknown format, both or neither of rank/compression, modes that do not
        multiply to the channel counts, ranks beyond what the kernel allows.
    """
    if format not in CONV_FORMATS:
        raise ValueError(
            f"format={format!r} is not a Conv format; use one of {CONV_FORMATS} "
            f"(the reshaped ones, {RESHAPED_CONV_FORMATS}, split the channels into modes)"
        )
    if (rank is None) == (compression is None):
        raise ValueError(
            "give exactly one of rank= or compression= "
            f"(got rank={rank!r}, compression={compression!r})"
        )
    kernel_size = _pair(kernel_size, "kernel_size")
    if min(kernel_size) < 1 or in_features < 1 or out_features < 1:
        raise ValueError(
            f"kernel_size {kernel_size} and features ({in_features}, {out_features}) must be >= 1"
        )
    if format in PLAIN_CONV_FORMATS:
        if in_modes is not None or out_modes is not None:
            raise ValueError(
                f"in_modes/out_modes apply to the reshaped formats {RESHAPED_CONV_FORMATS}, "
                f"not to format={format!r}; drop them or use format={_RESHAPED_OF[format]!r}"
            )
        ins, outs = (in_features,), (out_features,)
        in_pad, out_pad = in_features, out_features
    elif padded_modes is not None:
        ins, outs = (tuple(int(n) for n in m) for m in padded_modes)
        in_pad, out_pad = math.prod(ins), math.prod(outs)
    else:
        m = num_modes or (
            len(in_modes) if in_modes else len(out_modes) if out_modes else DEFAULT_NUM_MODES
        )
        ins, in_pad = resolve_modes(in_features, in_modes, m, "in_modes")
        outs, out_pad = resolve_modes(out_features, out_modes, m, "out_modes")
    if len(ins) != len(outs):
        raise ValueError(
            f"in_modes {ins} and out_modes {outs} need the same number of modes: each "
            "output/input mode pair shares one core"
        )
    m = len(ins)
    if m > _MAX_MODES:
        raise ValueError(f"at most {_MAX_MODES} channel modes are supported, got {m}")
    tmodes = _tensor_modes(format, kernel_size, ins, outs)
    tshape = tuple(math.prod(sizes) for _, sizes in tmodes)
    max_ranks = _max_ranks(format, tshape, kernel_size, ins, outs)
    n_ranks = _num_ranks(format, m)
    what = f"Conv({in_features}, {out_features}, kernel_size={kernel_size}, format={format!r}" + (
        f", modes {ins} x {outs})" if format in RESHAPED_CONV_FORMATS else ")"
    )

    def count(r: tuple[int, ...]) -> int:
        return sum(
            math.prod(math.prod(s) for _, s in core) for core in _core_groups(format, tmodes, r)
        )

    if compression is not None:
        if not 0 < compression <= 1:
            raise ValueError(f"compression={compression} must be in (0, 1]")
        budget = compression * kernel_size[0] * kernel_size[1] * in_features * out_features
        ranks = fit_ranks(count, max_ranks, budget, what=what)
    else:
        try:
            ranks = uniform_ranks(rank, n_ranks, f"{what} rank")
        except ValueError as e:
            raise ValueError(f"{e}; format {format!r} takes {_rank_names(format, m)}") from None
        if isinstance(rank, (int, np.integer)):  # an int is clipped per bond, as TensorLy does
            too_big = rank > max(max_ranks)
            ranks = tuple(min(r, mx) for r, mx in zip(ranks, max_ranks, strict=True))
        else:
            too_big = any(r > mx for r, mx in zip(ranks, max_ranks, strict=True))
        if too_big:
            raise ValueError(
                f"rank {rank} exceeds what {what} allows: the maxima of "
                f"{_rank_names(format, m)} are {max_ranks}; lower the rank"
            )
    ranks = tuple(int(r) for r in ranks)
    cores = _core_groups(format, tmodes, ranks)
    terms = tuple("".join(letters for letters, _ in core) for core in cores)
    x_term = "bhw" + _IN_LETTERS[:m]
    out_term = "bhw" + _OUT_LETTERS[:m]
    kernel_letters = "hw" + _IN_LETTERS[:m] + _OUT_LETTERS[:m]
    return ConvLayout(
        format=format,
        kernel_size=kernel_size,
        in_features=in_features,
        out_features=out_features,
        in_modes=tuple(ins),
        out_modes=tuple(outs),
        in_padded=in_pad,
        out_padded=out_pad,
        ranks=ranks,
        max_ranks=tuple(max_ranks),
        tensor_shape=tshape,
        tensor_letters="".join(letters for letters, _ in tmodes),
        core_shapes=tuple(tuple(math.prod(s) for _, s in core) for core in cores),
        operand_shapes=tuple(tuple(n for _, s in core for n in s) for core in cores),
        core_terms=terms,
        spec=f"{x_term},{','.join(terms)}->{out_term}|hw",
        kernel_spec=f"{','.join(terms)}->{kernel_letters}",
    )


def _kernel_to_tensor(layout: ConvLayout, kernel: jax.Array) -> jax.Array:
    """Dense (kh, kw, S, T) kernel -> the tensor the format decomposes (zero-padded)."""
    kh, kw, s, t = kernel.shape
    kernel = jnp.pad(
        kernel, ((0, 0), (0, 0), (0, layout.in_padded - s), (0, layout.out_padded - t))
    )
    split = kernel.reshape((kh, kw, *layout.in_modes, *layout.out_modes))
    permuted = jnp.einsum(f"{layout.kernel_letters}->{layout.tensor_letters}", split)
    return permuted.reshape(layout.tensor_shape)


def _conv_geometry(padding: Any, kernel_size, kernel_dilation) -> tuple[Any, Any]:
    """(contract padding, input pre-padding or None) from an nnx-style padding argument."""
    if isinstance(padding, str):
        p = padding.upper()
        if p not in _PADDING_STRINGS:
            raise ValueError(
                f"padding={padding!r} is not supported; use one of {_PADDING_STRINGS}, an int, "
                "or a sequence of two ints or (low, high) pairs"
            )
        if p in ("CIRCULAR", "REFLECT"):  # pad the input like nnx.Conv, then VALID
            dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True)]
            return "VALID", (p, tuple(((k - 1) // 2, k // 2) for k in dilated))
        return p, None
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * 2, None
    try:
        pads = []
        for p in padding:
            if isinstance(p, (int, np.integer)):
                pads.append((int(p), int(p)))
            else:
                lo, hi = p
                pads.append((int(lo), int(hi)))
    except (TypeError, ValueError):
        pads = []
    if len(pads) != 2:
        raise ValueError(
            f"padding={padding!r} is not valid for a 2-D convolution; use 'SAME', 'VALID', "
            "'CIRCULAR', 'REFLECT', an int, or two ints or (low, high) pairs"
        )
    return tuple(pads), None


def _out_size(n: int, k: int, stride: int, dilation: int, pad: Any) -> int:
    k_eff = dilation * (k - 1) + 1
    if pad == "SAME":
        return -(-n // stride)
    lo, hi = (0, 0) if pad == "VALID" else pad
    return max((n + lo + hi - k_eff) // stride + 1, 0)


# --------------------------------------------------------------------------- the layer


class Conv(nnx.Module):
    """Tensorized `nnx.Conv` (2-D, NHWC): the (kh, kw, in, out) kernel in a tensor format.

    `y = conv(x, W) + b` as `jax.lax.conv_general_dilated` computes it (cross-correlation),
    with W stored in one of `CONV_FORMATS` (see the module docstring for the core shapes,
    rank orders and parameter counts) and evaluated by one `tnjax.ops.contract` call.

    Args:
      in_features, out_features: channels S and T of the dense kernel (kh, kw, S, T).
      kernel_size: (kh, kw), or an int for a square kernel (2-D only; unlike `nnx.Conv`,
        where an int means a 1-D kernel).
      strides: int or (sh, sw).
      padding: "SAME", "VALID", "CIRCULAR", "REFLECT", an int, or two ints or (low, high)
        pairs, as in `nnx.Conv`.
      kernel_dilation: int or (dh, dw).
      format: one of "cp", "tucker", "tt", "tr", "rcp", "rtk", "rtt", "rtr".
      rank: int (the same for every bond, clipped to what each bond allows) or a tuple in
        the format's order: cp/rcp (R,); tucker (R1, R2) = (output, input) ranks; tt
        (R1, R2, R3); tr (R0, R1, R2, R3); rtk (R0, R1..RM) with R0 the spatial rank; rtt
        (R1..RM); rtr (R0, R1..RM).
      compression: instead of `rank`, the fraction (0, 1] of the dense kernel's kh*kw*S*T
        parameters to keep; ranks are fitted to it (`fit_ranks`, warns when no ranks come
        within 10%). The ranks chosen are in `self.ranks`.
      num_modes: M, channel modes per side of the reshaped formats (default 3, or the length
        of `in_modes`/`out_modes`); ignored by the plain formats.
      in_modes, out_modes: explicit (S_1..S_M), (T_1..T_M) with products S and T (reshaped
        formats only). By default balanced factorisations (with 1s where needed, and zero
        padding, invisible to the caller, when a count factors badly).
      use_bias, bias_init, dtype, param_dtype, precision: as in `nnx.Conv`.
      kernel_init: initialiser whose dense kernel's standard deviation the reconstructed
        kernel matches (default: Flax's LeCun normal, std 1/sqrt(kh*kw*S)).
      optimize: contraction strategy of `tnjax.ops.contract` ("cost", "autotune", ...).
      rngs: `nnx.Rngs` with a `params` stream.

    Attributes:
      cores: `nnx.List` of `Core` variables (`layout.core_shapes`).
      bias: `nnx.Param` (T,) or None.
      ranks, layout: the resolved ranks and static structure (`ConvLayout`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        *,
        padding: Any = "SAME",
        kernel_dilation: int | Sequence[int] = 1,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        num_modes: int | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        use_bias: bool = True,
        kernel_init: Callable | None = None,
        bias_init: Callable = _ZEROS,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        optimize: Any = "cost",
        rngs: nnx.Rngs,
        _cores: Sequence[jax.Array] | None = None,
        _padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ):
        layout = conv_layout(
            in_features,
            out_features,
            kernel_size,
            format=format,
            rank=rank,
            compression=compression,
            num_modes=num_modes,
            in_modes=in_modes,
            out_modes=out_modes,
            padded_modes=_padded_modes,
        )
        self.layout = layout
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size = layout.kernel_size
        self.strides = _pair(strides, "strides")
        self.kernel_dilation = _pair(kernel_dilation, "kernel_dilation")
        self.padding = padding
        self._pad, self._pre_pad = _conv_geometry(padding, self.kernel_size, self.kernel_dilation)
        self.format, self.ranks = format, layout.ranks
        self.in_modes, self.out_modes = layout.in_modes, layout.out_modes
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.precision, self.optimize = precision, optimize
        kh, kw = self.kernel_size
        if _cores is None:
            key = rngs.params()
            std = dense_init_std(
                kernel_init,
                (kh, kw, in_features, out_features),
                kh * kw * in_features,
                jax.random.fold_in(key, 1),
            )
            t = _FORMAT_CLASSES[format].random(
                key,
                layout.tensor_shape,
                _format_rank(format, layout.ranks, layout.kernel_size),
                std=std,
                dtype=param_dtype,
            )
            _cores = _cores_of(format, t)
        got = [tuple(c.shape) for c in _cores]
        if got != [tuple(s) for s in layout.core_shapes]:
            raise ValueError(f"cores have shapes {got}, expected {list(layout.core_shapes)}")
        self.cores = nnx.List([Core(jnp.asarray(c, param_dtype)) for c in _cores])
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )

    # ------------------------------------------------------------------ evaluation

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the convolution: (..., H, W, in_features) -> (..., H', W', out_features).

        Leading batch dimensions are flattened into one and restored; an unbatched
        (H, W, in_features) input gives (H', W', out_features), as in `nnx.Conv`.
        """
        with jax.named_scope("tnjax.nn.Conv"):
            if inputs.ndim < 3 or inputs.shape[-1] != self.in_features:
                raise ValueError(
                    f"Conv expects inputs (..., H, W, {self.in_features}) for a kernel "
                    f"{(*self.kernel_size, self.in_features, self.out_features)}, got shape "
                    f"{inputs.shape}"
                )
            layout = self.layout
            cores = [c[...] for c in self.cores]
            bias = self.bias[...] if self.bias is not None else None
            inputs, *cores = nnx.nn.dtypes.promote_dtype((inputs, *cores), dtype=self.dtype)
            lead = inputs.shape[:-3]
            x = inputs.reshape((-1, *inputs.shape[-3:]))
            if self._pre_pad is not None:
                mode, pads = self._pre_pad
                x = jnp.pad(
                    x, ((0, 0), *pads, (0, 0)), mode="wrap" if mode == "CIRCULAR" else "reflect"
                )
            if layout.in_padded != self.in_features:
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, layout.in_padded - self.in_features)))
            batch, height, width = x.shape[:3]
            x = x.reshape((batch, height, width, *layout.in_modes))
            operands = [c.reshape(s) for c, s in zip(cores, layout.operand_shapes, strict=True)]
            y = contract(
                layout.spec,
                x,
                *operands,
                padding=self._pad,
                strides=self.strides,
                dilation=self.kernel_dilation,
                optimize=self.optimize,
                precision=self.precision,
            )
            y = y.reshape((*y.shape[:3], layout.out_padded))[..., : self.out_features]
            if bias is not None:
                y = y + jnp.asarray(bias, y.dtype)
            return y.reshape((*lead, *y.shape[1:]))

    def kernel(self) -> jax.Array:
        """The reconstructed dense kernel (kh, kw, in_features, out_features).

        For inspection and tests; `__call__` never forms it unless its planner finds that
        cheapest.
        """
        with jax.named_scope("tnjax.nn.Conv.kernel"):
            layout = self.layout
            operands = [
                c[...].reshape(s) for c, s in zip(self.cores, layout.operand_shapes, strict=True)
            ]
            w = contract(layout.kernel_spec, *operands)
            w = w.reshape((*self.kernel_size, layout.in_padded, layout.out_padded))
            return w[:, :, : self.in_features, : self.out_features]

    @property
    def num_params(self) -> int:
        """Parameters of the cores (bias excluded)."""
        return sum(int(np.prod(c.shape)) for c in self.cores)

    @property
    def dense_params(self) -> int:
        """Parameters of the dense kernel kh*kw*in*out."""
        return math.prod(self.kernel_size) * self.in_features * self.out_features

    def cost(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and forward FLOPs for inputs of `input_shape` (..., H, W, in_features).

        Returns:
          dict with params, dense_params, flops (of the planned contraction), dense_flops
          (2*B*H'*W'*kh*kw*in*out), path (the chosen candidate's name), steps (the pairwise
          contractions) and ranks.
        """
        input_shape = tuple(int(n) for n in input_shape)
        if len(input_shape) < 3 or input_shape[-1] != self.in_features:
            raise ValueError(
                f"cost expects an input shape (..., H, W, {self.in_features}), got {input_shape}"
            )
        batch = math.prod(input_shape[:-3])
        height, width = input_shape[-3:-1]
        if self._pre_pad is not None:
            (hl, hh), (wl, wh) = self._pre_pad[1]
            height, width = height + hl + hh, width + wl + wh
        layout = self.layout
        shapes = [(batch, height, width, *layout.in_modes), *layout.operand_shapes]
        plan = contract_path(
            layout.spec,
            *shapes,
            padding=self._pad,
            strides=self.strides,
            dilation=self.kernel_dilation,
            optimize=self.optimize if self.optimize != "autotune" else "cost",
        )
        per_mode = (self._pad,) * 2 if isinstance(self._pad, str) else self._pad
        out_h, out_w = (
            _out_size(n, k, s, d, p)
            for n, k, s, d, p in zip(
                (height, width),
                self.kernel_size,
                self.strides,
                self.kernel_dilation,
                per_mode,
                strict=True,
            )
        )
        return {
            "params": self.num_params,
            "dense_params": self.dense_params,
            "flops": plan.cost.flops,
            "dense_flops": 2 * batch * out_h * out_w * self.dense_params,
            "path": plan.chosen,
            "steps": plan.steps,
            "ranks": self.ranks,
        }

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_conv(
        cls,
        conv_or_kernel: nnx.Conv | jax.typing.ArrayLike,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        bias: jax.typing.ArrayLike | None = None,
        strides: int | Sequence[int] | None = None,
        padding: Any = None,
        kernel_dilation: int | Sequence[int] | None = None,
        num_modes: int | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        rngs: nnx.Rngs | None = None,
        **kwargs: Any,
    ) -> Conv:
        """Tensorized layer initialised by decomposing a trained kernel.

        The kernel (zero-padded to the padded channel modes) is permuted/reshaped to the
        format's tensor and decomposed with the format's `from_dense`: CP-ALS (cp, rcp),
        HOSVD+HOOI (rtk; tucker is a Tucker decomposition of (kh, kw, S, T) with ranks
        (kh, kw, R2, R1) whose orthogonal spatial factors are absorbed into the core, i.e.
        the partial Tucker-2 over (S, T)), TT-SVD (tt, rtt) or TR-SVD (tr, rtr). Ranks that
        the decomposition clips (more than the kernel can use) shrink the layer accordingly
        (see `self.ranks`). At full rank the layer reproduces the original.

        Args:
          conv_or_kernel: an `nnx.Conv` (2-D, no groups, no input dilation, no mask; its
            kernel, bias, strides, padding, kernel dilation, dtype, param_dtype and
            precision are used) or a kernel array (kh, kw, in, out).
          format, rank, compression, num_modes, in_modes, out_modes: as in `Conv`.
          bias: bias (out,) (overrides the conv's).
          strides, padding, kernel_dilation: override the conv's; for a kernel array they
            default to 1, "SAME", 1.
          rngs: used for the CP-ALS initialisation (default `nnx.Rngs(0)`).
          **kwargs: other `Conv` arguments (dtype, precision, optimize, ...).
        """
        conv_kwargs: dict[str, Any] = {"strides": 1, "padding": "SAME", "kernel_dilation": 1}
        if isinstance(conv_or_kernel, nnx.Conv):
            src = conv_or_kernel
            if src.feature_group_count != 1 or src.mask is not None:
                raise ValueError(
                    "from_conv supports convolutions without feature groups or masks; got "
                    f"feature_group_count={src.feature_group_count}, mask="
                    f"{None if src.mask is None else src.mask.shape}"
                )
            if _pair(src.input_dilation or 1, "input_dilation") != (1, 1):
                raise ValueError(f"from_conv does not support input_dilation={src.input_dilation}")
            kernel = src.kernel[...]
            if bias is None and src.bias is not None:
                bias = src.bias[...]
            conv_kwargs = {
                "strides": 1 if src.strides is None else src.strides,
                "padding": src.padding,
                "kernel_dilation": 1 if src.kernel_dilation is None else src.kernel_dilation,
                "dtype": src.dtype,
                "param_dtype": src.param_dtype,
                "precision": src.precision,
            }
        else:
            kernel = jnp.asarray(conv_or_kernel)
        if kernel.ndim != 4:
            raise ValueError(
                f"expected a 2-D conv kernel (kh, kw, in, out), got shape {kernel.shape}"
            )
        for name, value in (
            ("strides", strides),
            ("padding", padding),
            ("kernel_dilation", kernel_dilation),
        ):
            if value is not None:
                conv_kwargs[name] = value
        conv_kwargs.update(kwargs)
        rngs = rngs or nnx.Rngs(0)
        kh, kw, n_in, n_out = (int(n) for n in kernel.shape)
        probe = conv_layout(
            n_in,
            n_out,
            (kh, kw),
            format=format,
            rank=rank,
            compression=compression,
            num_modes=num_modes,
            in_modes=in_modes,
            out_modes=out_modes,
        )
        with jax.named_scope("tnjax.nn.Conv.from_conv"):
            tensor = _kernel_to_tensor(probe, jnp.asarray(kernel, jnp.float32))
            cores = _decompose(format, tensor, probe, rngs.params())
            # keep the budget's ranks where the decomposition stopped short of them
            grown = pad_cores(cores, probe.core_shapes, rngs.params())
            cores = grown if grown is not None else cores
        layer = cls(
            n_in,
            n_out,
            (kh, kw),
            format=format,
            rank=_ranks_of_cores(format, cores),
            use_bias=bias is not None,
            rngs=rngs,
            _cores=cores,
            _padded_modes=(probe.in_modes, probe.out_modes),
            **conv_kwargs,
        )
        if bias is not None:
            layer.bias[...] = jnp.asarray(bias, layer.param_dtype)
        return layer


def _decompose(fmt: str, tensor: jax.Array, layout: ConvLayout, key: jax.Array) -> list[jax.Array]:
    rank = _format_rank(fmt, layout.ranks, layout.kernel_size)
    if fmt in ("cp", "rcp"):
        # CP-ALS on the tensor with its largest mode last, then that mode's factor re-solved
        # by a QR-based least-squares fit against the Khatri-Rao product of the others (ALS
        # solves normal equations, which square the condition number); at any rank this can
        # only lower the error. At the maximal rank that Khatri-Rao product is square, so
        # the fit is exact for any generic factors of the other modes: ALS is skipped and
        # random ones are used (SVD-initialised ALS drives the spare columns together, to
        # condition numbers ~1e6, too many for float32).
        d = tensor.ndim
        order = sorted(range(d), key=lambda k: (tensor.shape[k], k))
        permuted = jnp.transpose(tensor, order)
        if rank >= math.prod(permuted.shape[:-1]):
            t = formats.CP.random(key, permuted.shape, rank, dtype=permuted.dtype)
        else:
            t = formats.CP.from_dense(permuted, rank=rank, key=key)
        factors = list(t.factors)
        factors[0] = factors[0] * t.weights[None, :]
        letters = "abcdefghijklmnopqrstuvwxy"[: d - 1]
        kr = jnp.einsum(",".join(f"{c}Z" for c in letters) + f"->{letters}Z", *factors[:-1])
        a = kr.reshape(-1, rank)
        b = permuted.reshape(-1, permuted.shape[-1])
        last = jnp.linalg.lstsq(a, b)[0]
        # One step of iterative refinement squares the relative residual of an
        # ill-conditioned (square) system.
        last = last + jnp.linalg.lstsq(a, b - a @ last)[0]
        factors[-1] = last.T
        stored = [None] * d
        for pos, k in enumerate(order):
            stored[k] = factors[pos]
        return stored
    t = _FORMAT_CLASSES[fmt].from_dense(tensor, rank=rank, key=key)
    return _cores_of(fmt, t)
