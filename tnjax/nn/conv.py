"""Tensorized drop-in replacement for `flax.nnx.Conv` (1-, 2- or 3-D, channels last).

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

The structure is the layout of `tnjax.formats.weights.conv_layout`; the forward pass is
`tnjax.functional.conv`, one `tnjax.ops.contract` call whose spec convolves the spatial
modes (e.g. RCP with M = 3 contracts x (B, H, W, S_1, S_2, S_3) with the merged cores
reshaped to (T_m, S_m, R) and (kh, kw, R), which is free under jit). Its planner picks the
evaluation order from the actual shapes, including "reconstruct the kernel from the small
cores, then one convolution" when that is cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax import functional
from tnjax.formats.layout import Layout
from tnjax.formats.weights import (
    CONV_FORMATS,
    PLAIN_CONV_FORMATS,
    RESHAPED_CONV_FORMATS,
    SPATIAL_DIM_NAMES,
    conv_layout,
    spatial_ints,
)
from tnjax.nn._common import ZEROS, TensorLayer

__all__ = [
    "Conv",
    "ConvLayout",
    "conv_layout",
    "CONV_FORMATS",
    "PLAIN_CONV_FORMATS",
    "RESHAPED_CONV_FORMATS",
]

ConvLayout = Layout  # the layout of a Conv is a `tnjax.formats.layout.Layout`


class Conv(TensorLayer):
    """Tensorized `nnx.Conv` (1-, 2- or 3-D, channels last): the (k_1..k_n, in, out) kernel
    in a tensor format.

    The module docstring shows the 2-D case; a 1-D (k, S, T) or 3-D (kd, kh, kw, S, T)
    kernel has one spatial mode per dimension (cp/tucker/tt/tr) or merges them into one
    (the reshaped formats).

    `y = conv(x, W) + b` as `jax.lax.conv_general_dilated` computes it (cross-correlation),
    with W stored in one of `CONV_FORMATS` (see the module docstring for the core shapes,
    rank orders and parameter counts) and evaluated by one `tnjax.ops.contract` call.

    Args:
      in_features, out_features: channels S and T of the dense kernel (kh, kw, S, T).
      kernel_size: 1, 2 or 3 ints (a 1-, 2- or 3-D convolution), or an int for a square
        2-D kernel (unlike `nnx.Conv`, where an int means a 1-D kernel).
      strides: int or one per spatial dimension.
      padding: "SAME", "VALID", "CIRCULAR", "REFLECT", an int, or one int or (low, high)
        pair per spatial dimension, as in `nnx.Conv`.
      kernel_dilation: int or one per spatial dimension.
      feature_group_count: G, as in `nnx.Conv`: the channels split into G groups, each
        group's outputs computed from its own inputs (G = in_features: depthwise). The
        kernel is (kh, kw, S / G, T); every format decomposes it with the output channel
        split into (G, T / G), the group axis shared with the input in the contraction
        (reshaped formats factor the per-group channels S / G and T / G, exactly).
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
      contract: the contraction function (default `tnjax.ops.contract`).
      rngs: `nnx.Rngs` with a `params` stream.

    Attributes:
      cores: `nnx.List` of `Core` variables (`layout.core_shapes`).
      bias: `nnx.Param` (T,) or None.
      ranks, layout: the resolved ranks and static structure (`tnjax.formats.layout.Layout`).
    """

    _KIND = "conv"
    _LAYOUT_ARGS = (
        "format",
        "rank",
        "compression",
        "num_modes",
        "in_modes",
        "out_modes",
        "feature_group_count",
    )
    _LAYOUT_FN = staticmethod(conv_layout)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        *,
        padding: Any = "SAME",
        kernel_dilation: int | Sequence[int] = 1,
        feature_group_count: int = 1,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        num_modes: int | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
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
        layout = self._resolve_layout(locals(), in_features, out_features, kernel_size)
        # (no new local variables here: the constructor's locals() are the layer's options)
        strides = spatial_ints(strides, len(layout.kernel_size), "strides")
        kernel_dilation = spatial_ints(kernel_dilation, len(layout.kernel_size), "kernel_dilation")
        functional.conv_padding(padding, layout.kernel_size, kernel_dilation)  # validates
        self._setup(layout, locals())

    @staticmethod
    def _layout_args(layout: Layout) -> tuple:
        return (layout.in_features, layout.out_features, layout.kernel_size)

    kernel_size = property(lambda self: self.layout.kernel_size)

    def _conv_options(self) -> dict[str, Any]:
        return dict(strides=self.strides, padding=self.padding, dilation=self.kernel_dilation)

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Applies the convolution: (..., H, W, in_features) -> (..., H', W', out_features)
        in 2-D ((..., L, in) in 1-D, (..., D, H, W, in) in 3-D); `out_sharding`, as in
        `nnx.Conv`, constrains the output's sharding.

        Leading batch dimensions are flattened into one and restored; an unbatched
        (H, W, in_features) input gives (H', W', out_features), as in `nnx.Conv`.
        """
        with jax.named_scope("tnjax.nn.Conv"):
            inputs = jnp.asarray(inputs)
            n = len(self.kernel_size)
            if inputs.ndim < n + 1 or inputs.shape[-1] != self.in_features:
                raise ValueError(
                    f"Conv expects inputs (..., {SPATIAL_DIM_NAMES[n]}, {self.in_features}) for "
                    f"a kernel {(*self.kernel_size, self.in_features, self.out_features)}, got "
                    f"shape {inputs.shape}"
                )
            (x,), cores = self._promoted(inputs)
            y = functional.conv(
                self.layout,
                cores,
                x,
                self._bias(x.dtype),
                contract=self.contract,
                optimize=self.optimize,
                precision=self.precision,
                **self._conv_options(),
            )
            return self._constrained(y, out_sharding)

    def cost(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and forward FLOPs for inputs of `input_shape` (..., H, W, in_features).

        Returns:
          dict with params, dense_params, flops (of the planned contraction), dense_flops
          (2*B*H'*W'*kh*kw*in*out), path (the chosen candidate's name), steps (the pairwise
          contractions) and ranks.
        """
        return functional.cost(
            self.layout, input_shape, optimize=self.optimize, **self._conv_options()
        )

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
        feature_group_count: int | None = None,
        rngs: nnx.Rngs | None = None,
        decompose: bool = True,
        **kwargs: Any,
    ) -> Conv:
        """Tensorized layer initialised by decomposing a trained kernel.

        The kernel (zero-padded to the padded channel modes) is permuted/reshaped to the
        format's tensor and decomposed (`tnjax.formats.layout.Layout.from_dense`): CP-ALS
        (cp, rcp), HOSVD+HOOI (rtk; tucker is a Tucker decomposition of (kh, kw, S, T) with
        ranks (kh, kw, R2, R1) whose orthogonal spatial factors are absorbed into the core,
        i.e. the partial Tucker-2 over (S, T)), TT-SVD (tt, rtt) or TR-SVD (tr, rtr). Ranks
        the decomposition stops short of are grown back with small noise. At full rank the
        layer reproduces the original.

        Args:
          conv_or_kernel: an `nnx.Conv` (1-, 2- or 3-D, grouped or not, no input dilation, no
            mask; its kernel, bias, strides, padding, kernel dilation, feature groups, dtype,
            param_dtype and precision are used) or a kernel array (k_1..k_n, in / G, out),
            n = 1, 2 or 3.
          format, rank, compression, num_modes, in_modes, out_modes: as in `Conv`.
          feature_group_count: G (default: the conv's, or 1 for a kernel array).
          bias: bias (out,) (overrides the conv's).
          strides, padding, kernel_dilation: override the conv's; for a kernel array they
            default to 1, "SAME", 1.
          rngs: keys of the decomposition (default `nnx.Rngs(0)`).
          decompose: False: random cores at Flax's default scale instead of the
            decomposition (the structure, bias and options of the trained layer).
          **kwargs: other `Conv` arguments (dtype, precision, optimize, ...).
        """
        conv_kwargs: dict[str, Any] = {"strides": 1, "padding": "SAME", "kernel_dilation": 1}
        if isinstance(conv_or_kernel, nnx.Conv):
            src = conv_or_kernel
            if src.mask is not None:
                raise ValueError(
                    f"from_conv supports convolutions without masks; got a mask of shape "
                    f"{src.mask.shape}"
                )
            if feature_group_count not in (None, src.feature_group_count):
                raise ValueError(
                    f"from_conv: feature_group_count={feature_group_count} differs from the "
                    f"conv's {src.feature_group_count} (its kernel {src.kernel.shape} is grouped "
                    "by the conv's own count)"
                )
            feature_group_count = src.feature_group_count
            kernel = src.kernel[...]
            dilation = spatial_ints(src.input_dilation or 1, kernel.ndim - 2, "input_dilation")
            if set(dilation) != {1}:
                raise ValueError(f"from_conv does not support input_dilation={src.input_dilation}")
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
        if not 3 <= kernel.ndim <= 5:
            raise ValueError(
                "expected a conv kernel (k_1..k_n, in, out) with n = 1, 2 or 3 spatial "
                f"dimensions, got shape {kernel.shape}"
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
        feature_group_count = feature_group_count or 1
        *spatial, n_in, n_out = (int(n) for n in kernel.shape)
        layout = cls._resolve_layout(locals(), n_in * feature_group_count, n_out, tuple(spatial))
        with jax.named_scope("tnjax.nn.Conv.from_conv"):
            cores = cls._initial_cores(layout, jnp.asarray(kernel, jnp.float32), rngs, decompose)
        return cls.from_cores(
            layout, cores, bias, feature_group_count=feature_group_count, **conv_kwargs
        )
