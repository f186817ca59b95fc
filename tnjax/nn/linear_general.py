"""Tensorized drop-in replacement for `flax.nnx.LinearGeneral`: several input and output
axes, e.g. the (features) -> (heads, head_dim) projections of attention.

The kernel W (*in_features, *out_features) is the matrix (prod in_features, prod
out_features) of a `tnjax.nn.Linear` layout, stored in any Linear format (cp, tucker, tt,
ttm, tr, rcp, rtk, rtt, rtr). The forward pass moves the contracted input axes last,
flattens them, applies `tnjax.functional.linear` and unflattens the output features, which
come last, as in `nnx.LinearGeneral`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax import functional
from tnjax.formats.layout import Layout
from tnjax.formats.weights import linear_layout
from tnjax.nn._common import ZEROS, TensorLayer

__all__ = ["LinearGeneral"]


def _shape(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not dims or not all(isinstance(d, int) and d >= 1 for d in dims):
        raise ValueError(f"{name}={value!r}: use a positive int or a sequence of them")
    return tuple(int(d) for d in dims)


class LinearGeneral(TensorLayer):
    """Tensorized `nnx.LinearGeneral`: contracts the input axes `axis` (sizes `in_features`)
    with W (*in_features, *out_features) stored in a tensor format; output (..., *out_features).

    Args:
      in_features: size(s) of the contracted input axes (an int or a tuple, one per axis).
      out_features: size(s) of the output axes, appended last (an int or a tuple).
      axis: the input axes contracted, one per `in_features` entry (default -1).
      format, rank, compression, in_modes, out_modes, num_modes: those of `tnjax.nn.Linear`
        for the (prod in_features, prod out_features) matrix.
      use_bias, kernel_init, bias_init, dtype, param_dtype, precision, optimize, contract,
        rngs: as in `tnjax.nn.Linear`; the bias is stored flat (prod out_features,).

    No `batch_axis` (a kernel per batch index): convert such layers per slice.
    """

    _KIND = "linear"
    _LAYOUT_ARGS = ("format", "rank", "compression", "in_modes", "out_modes", "num_modes")
    _LAYOUT_FN = staticmethod(linear_layout)

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axis: int | Sequence[int] = -1,
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
        layout = self._resolve_layout(
            locals(),
            math.prod(_shape(in_features, "in_features")),
            math.prod(_shape(out_features, "out_features")),
        )
        axis = (axis,) if isinstance(axis, int) else tuple(int(a) for a in axis)
        if len(axis) != len(_shape(in_features, "in_features")):
            raise ValueError(
                f"axis={axis} and in_features={in_features}: one axis per input feature size"
            )
        self._setup(layout, locals())
        self.in_shape = _shape(in_features, "in_features")
        self.out_shape = _shape(out_features, "out_features")
        # replace_cores rebuilds the layer from its options: the feature shapes go with them
        self._options += (("in_features", self.in_shape), ("out_features", self.out_shape))

    @staticmethod
    def _layout_args(layout: Layout) -> tuple:
        return (layout.in_features, layout.out_features)

    @classmethod
    def _constructor_sizes(cls, layout: Layout, kwargs: dict[str, Any]) -> tuple:
        """The feature shapes given to `from_cores` (default: the layout's flat sizes)."""
        return (
            kwargs.pop("in_features", layout.in_features),
            kwargs.pop("out_features", layout.out_features),
        )

    def _flat_input(self, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        """x with the contracted axes moved last and flattened; the batch shape."""
        axes = tuple(a % x.ndim for a in self.axis) if x.ndim else ()
        if len(set(axes)) != len(axes) or tuple(x.shape[a] for a in axes) != self.in_shape:
            raise ValueError(
                f"LinearGeneral expects axes {self.axis} of sizes {self.in_shape}, got an input "
                f"of shape {x.shape}"
            )
        x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
        batch = x.shape[: x.ndim - len(axes)]
        return x.reshape((*batch, self.in_features)), batch

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """(..., *in_features at `axis`, ...) -> (..., *out_features) (`out_sharding`, as in
        `nnx.LinearGeneral`, constrains the output's sharding)."""
        with jax.named_scope("tnjax.nn.LinearGeneral"):
            x, batch = self._flat_input(jnp.asarray(inputs))
            (x,), cores = self._promoted(x)
            y = functional.linear(
                self.layout,
                cores,
                x,
                self._bias(x.dtype),
                contract=self.contract,
                optimize=self.optimize,
                precision=self.precision,
            )
            return self._constrained(y.reshape((*batch, *self.out_shape)), out_sharding)

    def cost(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and forward FLOPs for inputs of `input_shape` (see
        `tnjax.functional.cost`)."""
        shape = tuple(input_shape)
        axes = {a % len(shape) for a in self.axis}
        batch = [d for i, d in enumerate(shape) if i not in axes]
        return functional.cost(self.layout, (*batch, self.in_features), optimize=self.optimize)

    def kernel(self) -> jax.Array:
        """The reconstructed dense kernel (*in_features, *out_features)."""
        return super().kernel().reshape((*self.in_shape, *self.out_shape))

    @classmethod
    def from_linear_general(
        cls,
        layer: nnx.LinearGeneral,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        num_modes: int | None = None,
        rngs: nnx.Rngs | None = None,
        decompose: bool = True,
        **kwargs: Any,
    ) -> LinearGeneral:
        """Tensorized layer initialised by decomposing a trained `nnx.LinearGeneral`'s
        kernel, flattened to (prod in_features, prod out_features) (see
        `tnjax.nn.Linear.from_linear`); its axis, bias, dtypes and precision are kept. At full
        rank the layer reproduces the original.
        `decompose=False` gives random cores at Flax's default scale instead.

        Raises:
          ValueError: the layer has a `batch_axis`.
        """
        if layer.batch_axis:
            raise ValueError(
                f"from_linear_general: batch_axis={dict(layer.batch_axis)} (a kernel per batch "
                "index) is not supported"
            )
        kernel = layer.kernel[...]
        n_in, n_out = math.prod(layer.in_features), math.prod(layer.out_features)
        rngs = rngs or nnx.Rngs(0)
        layout = cls._resolve_layout(locals(), n_in, n_out)
        with jax.named_scope("tnjax.nn.LinearGeneral.from_linear_general"):
            cores = cls._initial_cores(layout, kernel.reshape(n_in, n_out), rngs, decompose)
        bias = None if layer.bias is None else layer.bias[...].reshape(-1)
        kwargs = cls._options_of(layer, kwargs)
        return cls.from_cores(
            layout,
            cores,
            bias,
            in_features=layer.in_features,
            out_features=layer.out_features,
            axis=layer.axis,
            **kwargs,
        )
