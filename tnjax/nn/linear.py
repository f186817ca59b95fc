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
The structure (cores, counts, specs, bounds, decomposition, rank groups) is the layout of
`tnjax.formats.weights.linear_layout`; the forward pass is `tnjax.functional.linear`, one
`tnjax.ops.contract` call whose planner picks the order for the actual batch size, which
includes "reconstruct the kernel, then one matmul" when that is cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax import functional
from tnjax.formats.layout import Layout
from tnjax.formats.weights import LINEAR_FORMATS, RESHAPED_LINEAR_FORMATS, linear_layout
from tnjax.nn._common import ZEROS, TensorLayer

__all__ = ["Linear", "LinearLayout", "linear_layout", "LINEAR_FORMATS", "RESHAPED_LINEAR_FORMATS"]

LinearLayout = Layout  # the layout of a Linear is a `tnjax.formats.layout.Layout`


class Linear(TensorLayer):
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
      optimize: contraction strategy passed to the contraction ("cost", "autotune", ...).
      contract: the contraction function (default `tnjax.ops.contract`), as `nnx.Linear`
        takes `dot_general`.
      rngs: `nnx.Rngs` with a `params` stream.
    """

    _KIND = "linear"
    _LAYOUT_ARGS = ("format", "rank", "compression", "in_modes", "out_modes", "num_modes")
    _LAYOUT_FN = staticmethod(linear_layout)

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
        bias_init: Callable = ZEROS,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        optimize: Any = "cost",
        contract: Callable | None = None,
        rngs: nnx.Rngs,
        _cores: Sequence[jax.Array] | None = None,
        _padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
        _layout: Layout | None = None,
    ):
        layout = self._resolve_layout(locals(), in_features, out_features)
        self._setup(layout, locals())

    @staticmethod
    def _layout_args(layout: Layout) -> tuple:
        return (layout.in_features, layout.out_features)

    spec = property(lambda self: self.layout.spec, doc="The forward `contract` spec.")

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Applies the layer to the last axis: (..., in_features) -> (..., out_features)
        (`out_sharding`, as in `nnx.Linear`, constrains the output's sharding)."""
        with jax.named_scope("tnjax.nn.Linear"):
            (x,), cores = self._promoted(jnp.asarray(inputs))
            y = functional.linear(
                self.layout,
                cores,
                x,
                self._bias(x.dtype),
                contract=self.contract,
                optimize=self.optimize,
                precision=self.precision,
            )
            return self._constrained(y, out_sharding)

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
        decompose: bool = True,
        **kwargs: Any,
    ) -> Linear:
        """Tensorized layer initialised by decomposing a trained kernel.

        Args:
          layer_or_kernel: an `nnx.Linear` (its kernel and bias are used) or a kernel
            array (in, out).
          format, rank, compression, in_modes, out_modes, num_modes: as in `Linear`.
          bias: bias (out,) when a kernel array is given.
          rngs: keys of the decomposition (default `nnx.Rngs(0)`).
          decompose: False: random cores at Flax's default scale instead of the
            decomposition (the structure, bias and options of the trained layer).
          **kwargs: other `Linear` arguments (dtype, precision, optimize, ...).

        The kernel is zero-padded to the padded modes, reshaped to (I_1..I_d, J_1..J_d)
        (for the paired formats permuted and merged to (I_1 J_1, ..., I_d J_d)) and
        decomposed: CP-ALS (cp, rcp), HOSVD+HOOI (tucker, rtk), TT-SVD (tt, ttm, rtt) or
        TR-SVD (tr, rtr) (`tnjax.formats.layout.Layout.from_dense`). Ranks a decomposition
        stops short of are grown back with small noise, so the layer keeps its budget. At
        full rank the layer reproduces the original.
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
        layout = cls._resolve_layout(locals(), *kernel.shape)
        with jax.named_scope("tnjax.nn.Linear.from_linear"):
            cores = cls._initial_cores(layout, kernel, rngs, decompose)
        return cls.from_cores(layout, cores, bias, **kwargs)
