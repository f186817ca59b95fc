"""What every tensorized layer shares: the Core variable and the (layout, cores, bias) base."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax import functional, ops
from tnjax.formats.layout import (  # noqa: F401  (re-exported for older imports)
    DEFAULT_NUM_MODES,
    Layout,
    dense_init_std,
    fit_ranks,
    pad_cores,
    resolve_modes,
    uniform_ranks,
)
from tnjax.nn.graph import NAME_ATTR, layer_name

__all__ = ["Core", "TensorLayer"]

# Constructor arguments that are not options: they define the layout or only initialise.
STRUCTURAL_ARGS = frozenset(
    {
        "in_features",
        "out_features",
        "kernel_size",
        "num_embeddings",
        "features",
        "format",
        "rank",
        "compression",
        "in_modes",
        "out_modes",
        "num_modes",
        "vocab_modes",
        "feature_modes",
        "use_bias",
        "kernel_init",
        "bias_init",
        "embedding_init",
        "rngs",
        "_cores",
        "_padded_modes",
        "_layout",
    }
)
_NOT_ARGS = frozenset({"self", "layout", "__class__"})

ZEROS = nnx.initializers.zeros_init()


class Core(nnx.Param):
    """A factor or core of a tensorized layer.

    Select them with NNX filters, e.g. `nnx.state(model, tnjax.nn.Core)` for priors,
    pruning or a separate optimiser; they are also `nnx.Param`s, so plain optimisers see them.
    """


class TensorLayer(nnx.Module):
    """Base of `Linear`, `Conv` and `Embed`: a layout, its cores and an optional bias.

    Subclasses resolve their layout from their constructor arguments and call `_setup`;
    evaluation is a function of `tnjax.functional` on (layout, cores). Everything about the
    weight's structure is read from `self.layout` (`tnjax.formats.layout.Layout`).

    Attributes:
      layout: the static structure (formats, modes, ranks, core shapes).
      cores: `nnx.List` of `Core` variables, shapes `layout.core_shapes`.
      bias: `nnx.Param` (out_features,) or None.
    """

    layout: Layout

    def _setup(self, layout: Layout, args: dict[str, Any]) -> None:
        """Stores the layout, draws or checks the cores, and keeps the options.

        Args:
          layout: the resolved layout.
          args: the subclass constructor's arguments (its `locals()`). Those that are
            neither structural nor initialisation-only (`STRUCTURAL_ARGS`) are the layer's
            options: dtype, param_dtype, precision, optimize, contract, and a Conv's
            strides, padding and kernel dilation. They become attributes, and
            `replace_cores` passes them all to the rebuilt layer, so a new constructor
            argument is kept by pruning without anyone listing it.
        """
        options = {k: v for k, v in args.items() if k not in STRUCTURAL_ARGS and k not in _NOT_ARGS}
        self.layout = layout
        self._options = tuple(options.items())
        for name, value in options.items():
            setattr(self, name, value)
        self.precision = options.get("precision")
        self.contract = options.get("contract") or ops.contract
        param_dtype = options.get("param_dtype", jnp.float32)
        cores = args.get("_cores")
        if cores is None:
            kernel_init = args.get("kernel_init", args.get("embedding_init"))
            cores = functional.init(
                layout, args["rngs"].params(), kernel_init=kernel_init, dtype=param_dtype
            )
        layout.check_cores(cores)
        self.cores = nnx.List([Core(jnp.asarray(c, param_dtype)) for c in cores])
        bias = None
        if args.get("use_bias", False):
            shape = tuple(args.get("bias_shape") or (layout.out_features,))
            bias = nnx.Param(args["bias_init"](args["rngs"].params(), shape, param_dtype))
        self.bias = bias

    # ------------------------------------------------------------------ structure

    @property
    def format(self) -> str:
        return self.layout.format

    # Sizes of the dense weight and of its modes (an Embed names them for a table too).
    in_features = property(lambda self: self.layout.in_features)
    out_features = property(lambda self: self.layout.out_features)
    in_modes = property(lambda self: self.layout.in_modes)
    out_modes = property(lambda self: self.layout.out_modes)
    in_padded = property(lambda self: self.layout.in_padded)
    out_padded = property(lambda self: self.layout.out_padded)

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.layout.ranks

    @property
    def use_bias(self) -> bool:
        return getattr(self, "bias", None) is not None

    @property
    def num_params(self) -> int:
        """Parameters of the cores (bias excluded)."""
        return self.layout.num_params

    @property
    def dense_params(self) -> int:
        """Parameters of the dense kernel this layer replaces."""
        return self.layout.dense_params

    def _promoted(self, *inputs: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """(inputs, cores) promoted to the computation dtype, as `nnx.Linear` does."""
        arrays = nnx.nn.dtypes.promote_dtype(
            (*inputs, *(c[...] for c in self.cores)), dtype=self.dtype
        )
        return list(arrays[: len(inputs)]), list(arrays[len(inputs) :])

    @staticmethod
    def _constrained(y: jax.Array, out_sharding: Any) -> jax.Array:
        """`y` constrained to `out_sharding` (the argument every Flax layer's `__call__`
        takes, e.g. from `nnx.MultiHeadAttention`); None leaves it to XLA."""
        if out_sharding is None:
            return y
        return jax.lax.with_sharding_constraint(y, out_sharding)

    def _bias(self, dtype: Any) -> jax.Array | None:
        return None if self.bias is None else jnp.asarray(self.bias[...], dtype)

    def kernel(self) -> jax.Array:
        """The reconstructed dense kernel (`layout.dense_shape`); materialises it."""
        return functional.to_dense(self.layout, [c[...] for c in self.cores])

    def cost(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and forward FLOPs for inputs of `input_shape` (see
        `tnjax.functional.cost`)."""
        return functional.cost(self.layout, input_shape, optimize=self.optimize)

    # ------------------------------------------------------------------ new layers

    def replace_cores(self, cores: Sequence[jax.typing.ArrayLike]) -> TensorLayer:
        """A new layer of this class holding `cores`, at the ranks those cores carry.

        Built by `from_cores` with every constructor option of this layer (`_options`:
        dtypes, precision, optimize, contract, strides, padding, dilation), its bias and its
        name, so code that changes ranks (pruning, rank growth) cannot drop an argument.
        State that other code attached to this layer (e.g. prior scales sized by the old
        ranks) is not carried over. `self` is not modified.
        """
        cores = [jnp.asarray(c) for c in cores]
        layout = self.layout.with_ranks(self.layout.ranks_of(cores))
        bias = None if getattr(self, "bias", None) is None else self.bias[...]
        new = type(self).from_cores(layout, cores, bias, **dict(self._options))
        name = layer_name(self)
        if name is not None:
            setattr(new, NAME_ATTR, name)
        return new

    @classmethod
    def from_cores(
        cls,
        layout: Layout,
        cores: Sequence[jax.typing.ArrayLike],
        bias: jax.typing.ArrayLike | None = None,
        **kwargs: Any,
    ) -> TensorLayer:
        """A layer of this class holding `cores` of `layout` (and `bias`).

        Args:
          layout: a layout of this class's kind (e.g. from `tnjax.functional.linear_layout`).
          cores: arrays of shapes `layout.core_shapes`.
          bias: (out_features,) or None (no bias).
          **kwargs: other constructor arguments (dtype, param_dtype, optimize, strides, ...).
        """
        if layout.kind != cls._KIND:
            raise ValueError(
                f"{cls.__name__}.from_cores needs a {cls._KIND} layout, got a {layout.kind} one"
            )
        if cls._HAS_BIAS:
            kwargs["use_bias"] = bias is not None
        elif bias is not None:
            raise ValueError(f"{cls.__name__} has no bias; got one of shape {jnp.shape(bias)}")
        layer = cls(
            *cls._constructor_sizes(layout, kwargs),
            format=layout.format,
            rank=layout.ranks,
            rngs=nnx.Rngs(0),
            _layout=layout,
            _cores=list(cores),
            **kwargs,
        )
        if bias is not None:
            layer.bias[...] = jnp.asarray(bias, layer.param_dtype)
        return layer

    @staticmethod
    def _options_of(layer: nnx.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The dtype, param_dtype and precision of the Flax `layer` being converted,
        overridden by the converter's `kwargs`."""
        taken = {k: getattr(layer, k) for k in ("dtype", "param_dtype", "precision")}
        return {**taken, **kwargs}

    @staticmethod
    def _initial_cores(
        layout: Layout, dense: jax.typing.ArrayLike, rngs: nnx.Rngs, decompose: bool
    ) -> list[jax.Array]:
        """The cores a `from_...` converter starts from: the decomposition of the trained
        weight `dense` (`layout.dense_shape`), or with `decompose=False` random cores at
        Flax's default kernel scale (the layer's structure without its values: for training
        a tensorized model from scratch, e.g. with rank priors)."""
        if decompose:
            return layout.from_dense(dense, rngs.params(), rngs.params())
        return functional.init(layout, rngs.params())

    @classmethod
    def _resolve_layout(cls, args: dict[str, Any], *sizes: Any) -> Layout:
        """The layout a constructor's (or converter's) arguments `args` ask for."""
        if args.get("_layout") is not None:
            return args["_layout"]
        kwargs = {k: args[k] for k in cls._LAYOUT_ARGS if args.get(k) is not None}
        return cls._LAYOUT_FN(*sizes, padded_modes=args.get("_padded_modes"), **kwargs)

    _KIND = ""  # the layout kind of the subclass
    _LAYOUT_ARGS: tuple[str, ...] = ()  # the arguments of the layout function it takes
    _LAYOUT_FN: Callable[..., Layout]
    _HAS_BIAS = True

    @classmethod
    def _constructor_sizes(cls, layout: Layout, kwargs: dict[str, Any]) -> tuple:
        """The positional constructor arguments of a layer of `layout`; a subclass whose
        sizes the layout does not fully determine takes them from (and out of) `kwargs`."""
        return cls._layout_args(layout)

    @staticmethod
    def _layout_args(layout: Layout) -> tuple:
        """The subclass's positional constructor arguments that `layout` determines."""
        raise NotImplementedError(
            "TensorLayer is a base class; use tnjax.nn.Linear, LinearGeneral, Einsum, Conv or Embed"
        )
