"""Tensorized drop-in replacement for `flax.nnx.Linear`.

The (in, out) kernel is reshaped to the tensor (I_1..I_d, J_1..J_d) with
in_features = prod I (row-major) and out_features = prod J, and stored in a tensor format.
Plain formats decompose that order-2d tensor (n_1..n_2d = I_1..I_d, J_1..J_d):

  cp      factors (n_k, R) (no separate weight vector).        params R sum_k n_k
  tucker  core (R_1..R_2d) and factors (n_k, R_k).     params prod_k R_k + sum_k n_k R_k
  tt      TT cores (r_{k-1}, n_k, r_k), r_0 = r_2d = 1.   params sum_k r_{k-1} n_k r_k
  tr      tensor-ring cores (r_{k-1}, n_k, r_k), r_0 = r_2d.   params sum_k r_{k-1} n_k r_k
  ttm     TT-matrix cores (r_{k-1}, I_k, J_k, r_k), r_0 = r_d = 1 (Novikov et al.).
                                                      params sum_k r_{k-1} I_k J_k r_k

Reshaped formats (Su et al.; the TNN paper, section 3) decompose instead the order-d
tensor with the paired modes (I_1 J_1, ..., I_d J_d) (I_k major), so input mode I_k and
output mode J_k share one core; they are the reshaped convolutions of `tnjax.nn.Conv`
without a spatial core (a Linear is a 1x1 conv), so a whole network can use one format:

  rcp     CP factors (I_k, J_k, R).                            params R sum_k I_k J_k
  rtk     Tucker core (R_1..R_d) and factors (I_k, J_k, R_k).
                                              params prod_k R_k + sum_k R_k I_k J_k
  rtt     TT over the pairs, which is exactly ttm: the same cores, ranks and spec
          (`format` stays "rtt").
  rtr     TR cores (r_{k-1}, I_k, J_k, r_k), r_0 = r_d.   params sum_k r_{k-1} I_k J_k r_k

E.g. RCP with d = 3 is the spec "Zabc,adg,beg,cfg->Zdef" over x (Z, I_1, I_2, I_3).
The forward pass is one `tnjax.ops.contract` call over the input and the cores; its planner
picks the order for the actual batch size, which includes "reconstruct the kernel, then one
matmul" when that is cheaper.
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

__all__ = ["Linear", "LinearLayout", "linear_layout", "LINEAR_FORMATS", "RESHAPED_LINEAR_FORMATS"]

LINEAR_FORMATS = ("cp", "tucker", "tt", "ttm", "tr", "rcp", "rtk", "rtt", "rtr")
RESHAPED_LINEAR_FORMATS = ("rcp", "rtk", "rtt", "rtr")
_ZEROS = nnx.initializers.zeros_init()
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY"  # "Z" is the batch mode
# The format each one decomposes with. A reshaped format applies its plain one to the
# tensor whose modes are the pairs (I_k J_k); "ttm" already pairs them, so "rtt" is "ttm".
_BASE = {"rcp": "cp", "rtk": "tucker", "rtt": "ttm", "rtr": "tr"}
_FORMAT_CLASSES = {"cp": formats.CP, "tucker": formats.Tucker, "tt": formats.TT, "tr": formats.TR}
_RANK_ORDER = {
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


# --------------------------------------------------------------------------- format algebra
# Each function below is pure Python on static sizes: core shapes, rank bounds, counts, specs.


def _base_format(fmt: str) -> str:
    """The format whose decomposition (and core layout) `fmt` uses."""
    if fmt not in LINEAR_FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {LINEAR_FORMATS}")
    return _BASE.get(fmt, fmt)


def _tensor_modes(fmt: str, rows: tuple[int, ...], cols: tuple[int, ...]) -> list[list[int]]:
    """Modes of the tensor the format decomposes, as the kernel modes each one merges.

    Kernel modes are numbered I_1..I_d = 0..d-1 and J_1..J_d = d..2d-1: plain formats
    decompose (I_1..I_d, J_1..J_d), paired ones (I_1 J_1, ..., I_d J_d) (I_k major).
    """
    d = len(rows)
    if _base_format(fmt) == "ttm" or fmt in RESHAPED_LINEAR_FORMATS:
        return [[k, d + k] for k in range(d)]
    return [[k] for k in range(2 * d)]


def _tensor_shape(fmt: str, rows: tuple[int, ...], cols: tuple[int, ...]) -> tuple[int, ...]:
    sizes = rows + cols
    return tuple(math.prod(sizes[a] for a in mode) for mode in _tensor_modes(fmt, rows, cols))


def _core_axes(fmt: str, rows, cols, ranks) -> list[list[tuple[str, int]]]:
    """The stored cores, each a list of its axes (einsum letter, size).

    Kernel mode a has the letter `_LETTERS[a]`, the bonds the letters after the 2d modes.
    """
    base = _base_format(fmt)
    d = len(rows)
    sizes = rows + cols
    tmodes = [[(_LETTERS[a], sizes[a]) for a in mode] for mode in _tensor_modes(fmt, rows, cols)]
    n = len(tmodes)
    rk = _LETTERS[2 * d :]
    if base in ("tt", "ttm"):  # open chain: boundary bonds of size 1
        r = (1, *ranks, 1)
        return [[(rk[k], r[k]), *tmodes[k], (rk[k + 1], r[k + 1])] for k in range(n)]
    if base == "tr":
        return [
            [(rk[k], ranks[k]), *m, (rk[(k + 1) % n], ranks[(k + 1) % n])]
            for k, m in enumerate(tmodes)
        ]
    if base == "cp":
        return [[*m, (rk[0], ranks[0])] for m in tmodes]
    bonds = [(rk[k], r) for k, r in enumerate(ranks)]  # tucker: core first
    return [bonds] + [[*m, bonds[k]] for k, m in enumerate(tmodes)]


def _core_shapes(fmt: str, rows, cols, ranks) -> list[tuple[int, ...]]:
    return [tuple(n for _, n in core) for core in _core_axes(fmt, rows, cols, ranks)]


def _max_ranks(fmt: str, rows: tuple[int, ...], cols: tuple[int, ...]) -> tuple[int, ...]:
    """Largest useful rank per bond, from the modes of the decomposed tensor."""
    base = _base_format(fmt)
    modes = _tensor_shape(fmt, rows, cols)
    total = math.prod(modes)
    if base in ("tt", "ttm"):
        return tuple(
            min(math.prod(modes[: k + 1]), math.prod(modes[k + 1 :])) for k in range(len(modes) - 1)
        )
    if base == "tr":  # cutting bonds 0 and k: r_0 * r_k <= min(both arcs); r_0 <= n_1
        return (modes[0],) + tuple(
            modes[0] * min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))
        )
    if base == "cp":
        return (total // max(modes),)
    return tuple(min(m, total // m) for m in modes)  # tucker


def _num_params(fmt, rows, cols, ranks) -> int:
    return sum(math.prod(s) for s in _core_shapes(fmt, rows, cols, ranks))


def _forward_spec(fmt: str, rows, cols, ranks) -> str:
    """Spec contracting x (Z, I_1..I_d) with the cores into (Z, J_1..J_d)."""
    d = len(rows)
    cores = ["".join(c for c, _ in core) for core in _core_axes(fmt, rows, cols, ranks)]
    return f"Z{_LETTERS[:d]}," + ",".join(cores) + f"->Z{_LETTERS[d : 2 * d]}"


def _format_rank(fmt: str, ranks: tuple[int, ...]) -> Any:
    """The `rank` argument of the base format's `random`/`from_dense`."""
    base = _base_format(fmt)
    if base == "cp":
        return ranks[0]
    return (1, *ranks, 1) if base in ("tt", "ttm") else tuple(ranks)


def _cores_of(t: Any) -> list[jax.Array]:
    """Cores of a format object over the decomposed tensor (CP weights folded in)."""
    if isinstance(t, formats.CP):
        factors = list(t.factors)
        factors[0] = factors[0] * t.weights[None, :]
        return factors
    if isinstance(t, formats.Tucker):
        return [t.core, *t.factors]
    return list(t.cores)


def _ranks_of_cores(fmt: str, cores: Sequence[jax.Array]) -> tuple[int, ...]:
    """Ranks of cores over the decomposed tensor, with or without its modes split."""
    base = _base_format(fmt)
    if base in ("ttm", "tt"):
        return tuple(int(c.shape[-1]) for c in cores[:-1])
    if base == "tr":
        return tuple(int(c.shape[0]) for c in cores)
    if base == "cp":
        return (int(cores[0].shape[-1]),)
    return tuple(int(n) for n in cores[0].shape)


def _split_cores(fmt, cores, rows, cols) -> list[jax.Array]:
    """Cores over the (merged) tensor modes -> the stored cores (paired modes split)."""
    shapes = _core_shapes(fmt, rows, cols, _ranks_of_cores(fmt, cores))
    return [c.reshape(s) for c, s in zip(cores, shapes, strict=True)]


def _random_cores(fmt, key, rows, cols, ranks, std, dtype) -> list[jax.Array]:
    base = _base_format(fmt)
    rank = _format_rank(fmt, ranks)
    if base == "ttm":
        t = formats.TTMatrix.random(key, rows, cols, rank, std=std, dtype=dtype)
    else:
        shape = _tensor_shape(fmt, rows, cols)
        t = _FORMAT_CLASSES[base].random(key, shape, rank, std=std, dtype=dtype)
    return _split_cores(fmt, _cores_of(t), rows, cols)


def _decompose(fmt, kernel, rows, cols, ranks, key) -> list[jax.Array]:
    """Decomposes the padded kernel (prod I, prod J); the ranks may clip."""
    base = _base_format(fmt)
    rank = _format_rank(fmt, ranks)
    if base == "ttm":
        t = formats.TTMatrix.from_dense(kernel, rows, cols, rank=rank, key=key)
    else:
        # (I_1..I_d, J_1..J_d) -> the tensor modes in order, then merged (I_k J_k for pairs)
        order = [a for mode in _tensor_modes(fmt, rows, cols) for a in mode]
        tensor = jnp.transpose(kernel.reshape(rows + cols), order)
        tensor = tensor.reshape(_tensor_shape(fmt, rows, cols))
        t = _FORMAT_CLASSES[base].from_dense(tensor, rank=rank, key=key)
    return _split_cores(fmt, _cores_of(t), rows, cols)


@dataclasses.dataclass(frozen=True)
class LinearLayout:
    """Static structure of a tensorized Linear layer (pure Python, no arrays).

    Attributes:
      format: one of `LINEAR_FORMATS` ("rtt" keeps its name but is a "ttm" layout).
      in_modes, out_modes: (I_1..I_d), (J_1..J_d); their products are the padded sizes.
      in_padded, out_padded: prod(in_modes), prod(out_modes) (>= the feature sizes).
      ranks: one rank per bond (see `Linear`).
      max_ranks: the largest useful rank per bond; the full-rank layer.
      tensor_shape: shape of the tensor the format decomposes: (I_1..I_d, J_1..J_d), or
        (I_1 J_1, ..., I_d J_d) for ttm and the reshaped formats.
      core_shapes: shapes of the stored cores.
      spec: the `contract` spec of the forward pass, x (Z, I_1..I_d) -> (Z, J_1..J_d).
    """

    format: str
    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]
    in_padded: int
    out_padded: int
    ranks: tuple[int, ...]
    max_ranks: tuple[int, ...]
    tensor_shape: tuple[int, ...]
    core_shapes: tuple[tuple[int, ...], ...]
    spec: str

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.core_shapes)


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
) -> LinearLayout:
    """Resolves modes, padding and ranks of a tensorized Linear without allocating it.

    Arguments are those of `Linear`; `padded_modes` re-uses modes resolved before.

    Raises:
      ValueError: unknown format, both or neither of rank/compression, modes that do not
        multiply to the feature size, ranks beyond what the modes allow.
    """
    _base_format(format)  # rejects unknown formats
    if (rank is None) == (compression is None):
        raise ValueError(
            "give exactly one of rank= or compression= "
            f"(got rank={rank!r}, compression={compression!r})"
        )
    if padded_modes is not None:
        rows, cols = padded_modes
        in_pad, out_pad = math.prod(rows), math.prod(cols)
    else:
        d = num_modes or (
            len(in_modes) if in_modes else len(out_modes) if out_modes else DEFAULT_NUM_MODES
        )
        rows, in_pad = resolve_modes(in_features, in_modes, d, "in_modes")
        cols, out_pad = resolve_modes(out_features, out_modes, d, "out_modes")
    if len(rows) != len(cols):
        raise ValueError(f"in_modes {rows} and out_modes {cols} need the same number of modes")
    rows, cols = tuple(rows), tuple(cols)
    max_ranks = _max_ranks(format, rows, cols)
    n_ranks = len(max_ranks)
    if compression is not None:
        if not 0 < compression <= 1:
            raise ValueError(f"compression={compression} must be in (0, 1]")
        ranks = fit_ranks(
            lambda r: _num_params(format, rows, cols, r),
            max_ranks,
            compression * in_features * out_features,
            what=f"Linear({in_features}, {out_features}, format={format!r})",
        )
    else:
        try:
            ranks = uniform_ranks(rank, n_ranks, f"Linear(format={format!r}) rank")
        except ValueError as e:
            raise ValueError(f"{e}; format {format!r} takes {_RANK_ORDER[format]}") from None
        if isinstance(rank, int):  # an int is clipped per bond, as TensorLy does
            too_big = n_ranks > 0 and rank > max(max_ranks)
            ranks = tuple(min(r, m) for r, m in zip(ranks, max_ranks, strict=True))
        else:
            too_big = any(r > m for r, m in zip(ranks, max_ranks, strict=True))
        if too_big:
            raise ValueError(
                f"rank {rank} exceeds what modes {rows} x {cols} allow for format "
                f"{format!r}: the maxima are {max_ranks}; lower the rank"
            )
    ranks = tuple(int(r) for r in ranks)
    return LinearLayout(
        format=format,
        in_modes=rows,
        out_modes=cols,
        in_padded=in_pad,
        out_padded=out_pad,
        ranks=ranks,
        max_ranks=max_ranks,
        tensor_shape=_tensor_shape(format, rows, cols),
        core_shapes=tuple(_core_shapes(format, rows, cols, ranks)),
        spec=_forward_spec(format, rows, cols, ranks),
    )


# --------------------------------------------------------------------------- the layer


class Linear(nnx.Module):
    """Tensorized `nnx.Linear`: y = x @ W + b with W (in, out) stored in a tensor format.

    Args:
      in_features, out_features: sizes of the dense kernel (in, out).
      format: one of "cp", "tucker", "tt", "ttm", "tr" or the reshaped "rcp", "rtk",
        "rtt", "rtr" (see the module docstring for the core shapes and parameter counts;
        "rtt" builds exactly the "ttm" layer).
      rank: int (the same for every bond, clipped to what each bond allows) or a tuple
        with one entry per bond: cp, rcp 1; tucker 2d (one per I_k, then J_k); tt 2d-1;
        tr 2d (r_0..r_2d-1); ttm, rtt d-1; rtk d (one per pair I_k J_k); rtr d (r_0..r_d-1).
      compression: instead of `rank`, the fraction of the dense kernel's parameters
        (in*out) to keep; ranks are fitted to it (see `fit_ranks`, which warns when no
        ranks come within 10%). The ranks chosen are in `self.ranks`.
      in_modes, out_modes: factorisations of in/out_features (default: balanced with
        `num_modes` modes, padded invisibly when the size factors badly).
      num_modes: d, the number of modes per side when modes are not given.
      use_bias, bias_init, dtype, param_dtype, precision: as in `nnx.Linear`.
      kernel_init: initialiser whose dense kernel's standard deviation the reconstructed
        kernel matches (default: Flax's LeCun normal).
      optimize: contraction strategy passed to `tnjax.ops.contract` ("cost", "autotune", ...).
      rngs: `nnx.Rngs` with a `params` stream.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        num_modes: int | None = None,
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
        layout = linear_layout(
            in_features,
            out_features,
            format=format,
            rank=rank,
            compression=compression,
            in_modes=in_modes,
            out_modes=out_modes,
            num_modes=num_modes,
            padded_modes=_padded_modes,
        )
        self.layout = layout
        self.in_features, self.out_features = in_features, out_features
        self.format, self.in_modes, self.out_modes = format, layout.in_modes, layout.out_modes
        self.in_padded, self.out_padded = layout.in_padded, layout.out_padded
        self.ranks, self.spec = layout.ranks, layout.spec
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.precision, self.optimize = precision, optimize
        rows, cols = layout.in_modes, layout.out_modes
        shapes = layout.core_shapes
        if _cores is None:
            key = rngs.params()
            std = dense_init_std(
                kernel_init, (in_features, out_features), in_features, jax.random.fold_in(key, 1)
            )
            _cores = _random_cores(format, key, rows, cols, self.ranks, std, param_dtype)
        got = [tuple(c.shape) for c in _cores]
        if got != [tuple(s) for s in shapes]:
            raise ValueError(f"cores have shapes {got}, expected {shapes}")
        self.cores = nnx.List([Core(jnp.asarray(c, param_dtype)) for c in _cores])
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )

    # ------------------------------------------------------------------ evaluation

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the layer to the last axis: (..., in_features) -> (..., out_features)."""
        with jax.named_scope("tnjax.nn.Linear"):
            if inputs.shape[-1] != self.in_features:
                raise ValueError(
                    f"Linear expects inputs (..., {self.in_features}), got shape {inputs.shape}"
                )
            cores = [c[...] for c in self.cores]
            bias = self.bias[...] if self.bias is not None else None
            inputs, *cores = nnx.nn.dtypes.promote_dtype((inputs, *cores), dtype=self.dtype)
            if bias is not None:
                bias = jnp.asarray(bias, inputs.dtype)
            lead = inputs.shape[:-1]
            x = inputs.reshape((-1, self.in_features))
            if self.in_padded != self.in_features:
                x = jnp.pad(x, ((0, 0), (0, self.in_padded - self.in_features)))
            x = x.reshape((x.shape[0], *self.in_modes))
            y = contract(self.spec, x, *cores, optimize=self.optimize, precision=self.precision)
            y = y.reshape((y.shape[0], self.out_padded))[:, : self.out_features]
            if bias is not None:
                y = y + bias
            return y.reshape((*lead, self.out_features))

    def kernel(self) -> jax.Array:
        """The reconstructed dense kernel (in_features, out_features); materialises it."""
        d = len(self.in_modes)
        spec = self.spec.split("->")[0].split(",", 1)[1]
        modes = _LETTERS[: 2 * d]
        w = contract(f"{spec}->{modes}", *[c[...] for c in self.cores])
        w = w.reshape(self.in_padded, self.out_padded)
        return w[: self.in_features, : self.out_features]

    @property
    def num_params(self) -> int:
        """Parameters of the cores (bias excluded)."""
        return sum(int(np.prod(c.shape)) for c in self.cores)

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def cost(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and forward FLOPs for inputs of `input_shape` (..., in_features)."""
        batch = int(np.prod(input_shape[:-1])) if len(input_shape) > 1 else 1
        shapes = [(batch, *self.in_modes)] + [tuple(c.shape) for c in self.cores]
        plan = contract_path(
            self.spec, *shapes, optimize=self.optimize if self.optimize != "autotune" else "cost"
        )
        return {
            "params": self.num_params,
            "dense_params": self.dense_params,
            "flops": plan.cost.flops,
            "dense_flops": 2 * batch * self.in_features * self.out_features,
            "path": plan.chosen,
            "ranks": self.ranks,
        }

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_linear(
        cls,
        layer_or_kernel: nnx.Linear | jax.typing.ArrayLike,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        bias: jax.typing.ArrayLike | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        num_modes: int | None = None,
        rngs: nnx.Rngs | None = None,
        **kwargs: Any,
    ) -> Linear:
        """Tensorized layer initialised by decomposing a trained kernel.

        Args:
          layer_or_kernel: an `nnx.Linear` (its kernel and bias are used) or a kernel
            array (in, out).
          format, rank, compression, in_modes, out_modes, num_modes: as in `Linear`.
          bias: bias (out,) when a kernel array is given.
          rngs: used for the CP-ALS initialisation (default `nnx.Rngs(0)`).
          **kwargs: other `Linear` arguments (dtype, precision, optimize, ...).

        The kernel is zero-padded to the padded modes, reshaped to (I_1..I_d, J_1..J_d)
        (for the reshaped formats then permuted to (I_1, J_1, ..., I_d, J_d) and merged to
        (I_1 J_1, ..., I_d J_d)) and decomposed: CP-ALS (cp, rcp), HOSVD+HOOI (tucker,
        rtk), TT-SVD (tt), TTM-SVD (ttm, rtt) or TR-SVD (tr, rtr); the factors are then
        split back to (I_k, J_k). Ranks that a decomposition clips shrink the layer (see
        `self.ranks`). At full rank the layer reproduces the original (CP-ALS up to its
        convergence, ~1e-4 relative for small tensors).
        """
        if isinstance(layer_or_kernel, nnx.Linear):
            kernel = layer_or_kernel.kernel[...]
            if bias is None and layer_or_kernel.bias is not None:
                bias = layer_or_kernel.bias[...]
        else:
            kernel = jnp.asarray(layer_or_kernel)
        if kernel.ndim != 2:
            raise ValueError(f"expected a kernel (in, out), got shape {kernel.shape}")
        rngs = rngs or nnx.Rngs(0)
        n_in, n_out = kernel.shape
        probe = linear_layout(
            n_in,
            n_out,
            format=format,
            rank=rank,
            compression=compression,
            in_modes=in_modes,
            out_modes=out_modes,
            num_modes=num_modes,
        )
        with jax.named_scope("tnjax.nn.Linear.from_linear"):
            padded = jnp.pad(kernel, ((0, probe.in_padded - n_in), (0, probe.out_padded - n_out)))
            cores = _decompose(
                format, padded, probe.in_modes, probe.out_modes, probe.ranks, rngs.params()
            )
            # keep the budget's ranks where the decomposition stopped short of them
            grown = pad_cores(cores, probe.core_shapes, rngs.params())
            cores = grown if grown is not None else cores
        layer = cls(
            n_in,
            n_out,
            format=format,
            rank=_ranks_of_cores(format, cores),
            use_bias=bias is not None,
            rngs=rngs,
            _cores=cores,
            _padded_modes=(probe.in_modes, probe.out_modes),
            **kwargs,
        )
        if bias is not None:
            layer.bias[...] = jnp.asarray(bias, layer.param_dtype)
        return layer
