"""Tensorized drop-in replacement for `flax.nnx.Linear`.

The (in, out) kernel is reshaped to the tensor (I_1..I_d, J_1..J_d) with
in_features = prod I (row-major) and out_features = prod J, and stored in a tensor format:

  ttm     TT-matrix cores (r_{k-1}, I_k, J_k, r_k)                 (Novikov et al.)
  tt      TT cores over (I_1..I_d, J_1..J_d): (r_{k-1}, n_k, r_k)
  tr      tensor-ring cores over the same 2d modes
  cp      factors (I_k, R) and (J_k, R) (no separate weight vector)
  tucker  core (R_1..R_2d) and factors (I_k, R_k), (J_k, R_k)

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
    resolve_modes,
    uniform_ranks,
)
from tnjax.ops import contract, contract_path

__all__ = ["Linear", "LinearLayout", "linear_layout", "LINEAR_FORMATS"]

LINEAR_FORMATS = ("cp", "tucker", "tt", "ttm", "tr")
_ZEROS = nnx.initializers.zeros_init()
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY"  # "Z" is the batch mode


# --------------------------------------------------------------------------- format algebra
# Each function below is pure Python on static sizes: core shapes, rank bounds, counts, specs.


def _num_ranks(fmt: str, d: int) -> int:
    return {"cp": 1, "tucker": 2 * d, "tt": 2 * d - 1, "ttm": d - 1, "tr": 2 * d}[fmt]


def _core_shapes(fmt: str, rows: tuple[int, ...], cols: tuple[int, ...], ranks: tuple[int, ...]):
    modes = rows + cols
    if fmt == "ttm":
        r = (1,) + ranks + (1,)
        return [(r[k], rows[k], cols[k], r[k + 1]) for k in range(len(rows))]
    if fmt == "tt":
        r = (1,) + ranks + (1,)
        return [(r[k], n, r[k + 1]) for k, n in enumerate(modes)]
    if fmt == "tr":
        n = len(modes)
        return [(ranks[k], m, ranks[(k + 1) % n]) for k, m in enumerate(modes)]
    if fmt == "cp":
        return [(m, ranks[0]) for m in modes]
    if fmt == "tucker":
        return [tuple(ranks)] + [(m, r) for m, r in zip(modes, ranks, strict=True)]
    raise ValueError(f"format={fmt!r} is not one of {LINEAR_FORMATS}")


def _max_ranks(fmt: str, rows: tuple[int, ...], cols: tuple[int, ...]) -> tuple[int, ...]:
    modes = rows + cols
    total = math.prod(modes)
    if fmt == "ttm":
        pairs = [i * j for i, j in zip(rows, cols, strict=True)]
        return tuple(
            min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(rows) - 1)
        )
    if fmt == "tt":
        return tuple(
            min(math.prod(modes[: k + 1]), math.prod(modes[k + 1 :])) for k in range(len(modes) - 1)
        )
    if fmt == "tr":  # cutting bonds 0 and k: r_0 * r_k <= min(both arcs); r_0 <= I_1
        return (modes[0],) + tuple(
            modes[0] * min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))
        )
    if fmt == "cp":
        return (total // max(modes),)
    if fmt == "tucker":
        return tuple(min(m, total // m) for m in modes)
    raise ValueError(f"format={fmt!r} is not one of {LINEAR_FORMATS}")


def _num_params(fmt, rows, cols, ranks) -> int:
    return sum(math.prod(s) for s in _core_shapes(fmt, rows, cols, ranks))


def _forward_spec(fmt: str, d: int) -> str:
    """Spec contracting x (Z, I_1..I_d) with the cores into (Z, J_1..J_d)."""
    ins, outs = _LETTERS[:d], _LETTERS[d : 2 * d]
    modes = ins + outs
    rk = _LETTERS[2 * d :]
    if fmt == "ttm":
        cores = [f"{rk[k]}{ins[k]}{outs[k]}{rk[k + 1]}" for k in range(d)]
    elif fmt == "tt":
        cores = [f"{rk[k]}{m}{rk[k + 1]}" for k, m in enumerate(modes)]
    elif fmt == "tr":
        n = 2 * d
        cores = [f"{rk[k]}{m}{rk[(k + 1) % n]}" for k, m in enumerate(modes)]
    elif fmt == "cp":
        cores = [f"{m}{rk[0]}" for m in modes]
    else:  # tucker
        cores = [rk[: 2 * d]] + [f"{m}{rk[k]}" for k, m in enumerate(modes)]
    return "Z" + ins + "," + ",".join(cores) + "->Z" + outs


def _random_cores(fmt, key, rows, cols, ranks, std, dtype) -> list[jax.Array]:
    shape = rows + cols
    if fmt == "ttm":
        t = formats.TTMatrix.random(key, rows, cols, (1,) + ranks + (1,), std=std, dtype=dtype)
        return list(t.cores)
    if fmt == "tt":
        return list(formats.TT.random(key, shape, (1,) + ranks + (1,), std=std, dtype=dtype).cores)
    if fmt == "tr":
        return list(formats.TR.random(key, shape, ranks, std=std, dtype=dtype).cores)
    if fmt == "cp":
        cp = formats.CP.random(key, shape, ranks[0], std=std, dtype=dtype)
        return _fold_cp_weights(cp)
    t = formats.Tucker.random(key, shape, ranks, std=std, dtype=dtype)
    return [t.core, *t.factors]


def _fold_cp_weights(cp) -> list[jax.Array]:
    factors = list(cp.factors)
    factors[0] = factors[0] * cp.weights[None, :]
    return factors


def _decompose(fmt, kernel_tensor, rows, cols, ranks, key) -> list[jax.Array]:
    if fmt == "ttm":
        matrix = kernel_tensor.reshape(math.prod(rows), math.prod(cols))
        t = formats.TTMatrix.from_dense(matrix, rows, cols, rank=(1,) + ranks + (1,))
        return list(t.cores)
    if fmt == "tt":
        return list(formats.TT.from_dense(kernel_tensor, rank=(1,) + ranks + (1,)).cores)
    if fmt == "tr":
        return list(formats.TR.from_dense(kernel_tensor, rank=ranks).cores)
    if fmt == "cp":
        return _fold_cp_weights(formats.CP.from_dense(kernel_tensor, rank=ranks[0], key=key))
    t = formats.Tucker.from_dense(kernel_tensor, rank=ranks)
    return [t.core, *t.factors]


@dataclasses.dataclass(frozen=True)
class LinearLayout:
    """Static structure of a tensorized Linear layer (pure Python, no arrays).

    Attributes:
      format: "cp", "tucker", "tt", "ttm" or "tr".
      in_modes, out_modes: (I_1..I_d), (J_1..J_d); their products are the padded sizes.
      in_padded, out_padded: prod(in_modes), prod(out_modes) (>= the feature sizes).
      ranks: one rank per bond (see `Linear`).
      core_shapes: shapes of the stored cores.
      spec: the `contract` spec of the forward pass, x (Z, I_1..I_d) -> (Z, J_1..J_d).
    """

    format: str
    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]
    in_padded: int
    out_padded: int
    ranks: tuple[int, ...]
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
    if format not in LINEAR_FORMATS:
        raise ValueError(f"format={format!r} is not one of {LINEAR_FORMATS}")
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
    d = len(rows)
    n_ranks = _num_ranks(format, d)
    max_ranks = _max_ranks(format, rows, cols)
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
        ranks = uniform_ranks(rank, n_ranks, f"Linear(format={format!r}) rank")
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
    ranks = tuple(ranks)
    return LinearLayout(
        format=format,
        in_modes=tuple(rows),
        out_modes=tuple(cols),
        in_padded=in_pad,
        out_padded=out_pad,
        ranks=ranks,
        core_shapes=tuple(tuple(c) for c in _core_shapes(format, rows, cols, ranks)),
        spec=_forward_spec(format, d),
    )


def _ranks_of_cores(fmt: str, cores: Sequence[jax.Array]) -> tuple[int, ...]:
    if fmt in ("ttm", "tt"):
        return tuple(int(c.shape[-1]) for c in cores[:-1])
    if fmt == "tr":
        return tuple(int(c.shape[0]) for c in cores)
    if fmt == "cp":
        return (int(cores[0].shape[1]),)
    return tuple(int(n) for n in cores[0].shape)


# --------------------------------------------------------------------------- the layer


class Linear(nnx.Module):
    """Tensorized `nnx.Linear`: y = x @ W + b with W (in, out) stored in a tensor format.

    Args:
      in_features, out_features: sizes of the dense kernel (in, out).
      format: one of "cp", "tucker", "tt", "ttm", "tr".
      rank: int (the same for every bond, clipped to what each bond allows) or a tuple
        with one entry per bond (ttm: d-1, tt: 2d-1, tr: 2d, tucker: 2d, cp: 1).
      compression: instead of `rank`, the fraction of the dense kernel's parameters
        (in*out) to keep; ranks are fitted to it (see `fit_ranks`).
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
        and decomposed: TTM-SVD, TT-SVD, TR-SVD, CP-ALS or HOSVD+HOOI. At full rank the
        layer reproduces the original.
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
        padded = jnp.pad(kernel, ((0, probe.in_padded - n_in), (0, probe.out_padded - n_out)))
        tensor = padded.reshape(probe.in_modes + probe.out_modes)
        cores = _decompose(
            format, tensor, probe.in_modes, probe.out_modes, probe.ranks, rngs.params()
        )
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
