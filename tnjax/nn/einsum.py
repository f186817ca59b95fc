"""Tensorized drop-in replacement for `flax.nnx.Einsum` with a learnable kernel.

`nnx.Einsum("btd,dnh->btnh", (D, N, H))` computes y = einsum(x, W). Every kernel label is
either *contracted* (in x, not in y: here d) or an *output* label (in y, not in x: n, h),
so W is the matrix (prod contracted sizes, prod output sizes) of a `tnjax.nn.Linear`
layout, stored in any Linear format (cp, tucker, tt, ttm, tr, rcp, rtk, rtt, rtr). The
forward pass moves x's contracted axes last (in the kernel's order), flattens them, applies
`tnjax.functional.linear`, unflattens the output labels and permutes to y's order; labels
of x that are in neither W nor y are summed, as einsum does.

Kernels with a label shared by x, W and y (a kernel per batch index, e.g. per-head weights
"bnd,ndh->bnh") or with a label only W has are not this structure: the constructor and
`from_einsum` reject them with the reason.
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

__all__ = ["Einsum", "einsum_structure", "EinsumStructure"]


class EinsumStructure(tuple):
    """(x labels, kernel labels, y labels, contracted labels, output labels) of an einsum
    string; x and y may hold "..." (kept as one item)."""

    x = property(lambda self: self[0])
    kernel = property(lambda self: self[1])
    y = property(lambda self: self[2])
    contracted = property(lambda self: self[3])
    outputs = property(lambda self: self[4])


def _labels(term: str) -> list[str]:
    """A term's labels, "..." as one item."""
    if term.count("...") > 1 or term.replace("...", "").count(".") > 0:
        raise ValueError(f"bad einsum term {term!r}")
    head, sep, tail = term.partition("...")
    return list(head) + (["..."] if sep else []) + list(tail)


def einsum_structure(einsum_str: str, kernel_ndim: int | None = None) -> EinsumStructure:
    """Parses "x,kernel->y" for a tensorized Einsum.

    Raises:
      ValueError: not two operands with an explicit output, an ellipsis or a repeated label
        in the kernel, a kernel label shared by x and y (a kernel per batch index) or in
        neither, an output label missing from both operands, or a kernel term whose length
        is not `kernel_ndim`.
    """
    text = einsum_str.replace(" ", "")
    if text.count("->") != 1 or text.split("->")[0].count(",") != 1:
        raise ValueError(
            f"einsum_str={einsum_str!r}: expected two operands and an explicit output, "
            "'x,kernel->y' (e.g. 'btd,dnh->btnh')"
        )
    lhs, y_term = text.split("->")
    x_term, k_term = lhs.split(",")
    x, k, y = _labels(x_term), _labels(k_term), _labels(y_term)
    for name, labels in (("input", x), ("output", y)):
        bad = [c for c in labels if c != "..." and not c.isalpha()]
        if bad or len(set(labels)) != len(labels):
            raise ValueError(f"einsum_str={einsum_str!r}: bad or repeated {name} labels")
    if "..." in k or len(set(k)) != len(k) or not all(c.isalpha() for c in k):
        raise ValueError(
            f"einsum_str={einsum_str!r}: the kernel term {k_term!r} needs distinct letters "
            "(no ellipsis)"
        )
    if kernel_ndim is not None and len(k) != kernel_ndim:
        raise ValueError(
            f"einsum_str={einsum_str!r}: the kernel term {k_term!r} has {len(k)} labels for a "
            f"kernel of {kernel_ndim} dimensions"
        )
    batch = [c for c in k if c in x and c in y]
    if batch:
        raise ValueError(
            f"einsum_str={einsum_str!r}: kernel label(s) {batch} are in both the input and the "
            "output (a kernel per batch index); tnjax.nn.Einsum needs every kernel label "
            "contracted or an output"
        )
    lone = [c for c in k if c not in x and c not in y]
    if lone:
        raise ValueError(
            f"einsum_str={einsum_str!r}: kernel label(s) {lone} are in neither the input nor "
            "the output (summed out of the kernel)"
        )
    missing = [c for c in y if c != "..." and c not in x and c not in k]
    if missing or ("..." in y) != ("..." in x):
        raise ValueError(f"einsum_str={einsum_str!r}: output labels {missing or '...'} unknown")
    contracted = tuple(c for c in k if c in x)
    outputs = tuple(c for c in k if c in y)
    if not contracted or not outputs:
        raise ValueError(
            f"einsum_str={einsum_str!r}: the kernel needs at least one contracted label and "
            "one output label"
        )
    return EinsumStructure((tuple(x), tuple(k), tuple(y), contracted, outputs))


def _term(labels: Sequence[str]) -> str:
    return "".join(labels)


class Einsum(TensorLayer):
    """Tensorized `nnx.Einsum`: y = einsum(einsum_str, x, W) + b with W stored in a tensor
    format as the matrix (contracted labels, output labels).

    Args:
      einsum_str: "x,kernel->y", e.g. "btd,dnh->btnh" (see the module docstring for what
        the kernel term may hold).
      kernel_shape: the dense kernel's shape, one size per kernel label.
      bias_shape: as in `nnx.Einsum` (the sizes of the output labels, in y's order, or any
        shape with that many entries; broadcast over the other axes of y), or None.
      format, rank, compression, in_modes, out_modes, num_modes: those of
        `tnjax.nn.Linear` for the (prod contracted, prod outputs) matrix.
      kernel_init, bias_init, dtype, param_dtype, precision, optimize, contract, rngs: as
        in `tnjax.nn.Linear`.

    Call: x (the input term's shape) -> y (the output term's shape).
    """

    _KIND = "linear"
    _LAYOUT_ARGS = ("format", "rank", "compression", "in_modes", "out_modes", "num_modes")
    _LAYOUT_FN = staticmethod(linear_layout)

    def __init__(
        self,
        einsum_str: str,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        num_modes: int | None = None,
        use_bias: bool | None = None,
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
        structure = einsum_structure(einsum_str, len(kernel_shape))
        sizes = dict(zip(structure.kernel, (int(n) for n in kernel_shape), strict=True))
        if any(n < 1 for n in sizes.values()):
            raise ValueError(f"kernel_shape={tuple(kernel_shape)}: sizes must be >= 1")
        layout = self._resolve_layout(
            locals(),
            math.prod(sizes[c] for c in structure.contracted),
            math.prod(sizes[c] for c in structure.outputs),
        )
        if use_bias is False:  # from_cores without a bias
            bias_shape = None
        if bias_shape is not None and math.prod(bias_shape) != layout.out_features:
            raise ValueError(
                f"bias_shape={tuple(bias_shape)} has {math.prod(bias_shape)} entries; the "
                f"output labels {structure.outputs} have {layout.out_features}"
            )
        bias_shape = None if bias_shape is None else tuple(int(n) for n in bias_shape)
        einsum_str, kernel_shape = einsum_str.replace(" ", ""), tuple(sizes.values())
        options = dict(locals())  # the constructor's arguments are the layer's options
        for derived in ("structure", "sizes"):
            del options[derived]
        self._setup(layout, {**options, "use_bias": bias_shape is not None})
        self.label_sizes = tuple(sizes.items())

    @property
    def structure(self) -> EinsumStructure:
        return einsum_structure(self.einsum_str)

    @classmethod
    def _constructor_sizes(cls, layout: Layout, kwargs: dict[str, Any]) -> tuple:
        """The einsum string and kernel shape given to `from_cores` (in `kwargs`)."""
        return (kwargs.pop("einsum_str"), kwargs.pop("kernel_shape"))

    def _size_of(self, label: str) -> int:
        return dict(self.label_sizes)[label]

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """einsum(einsum_str, inputs, W) (+ bias); `out_sharding`, as in `nnx.Einsum`,
        constrains the output's sharding."""
        with jax.named_scope("tnjax.nn.Einsum"):
            s = self.structure
            x = jnp.asarray(inputs)
            fixed = [c for c in s.x if c != "..."]
            if x.ndim < len(fixed) or ("..." not in s.x and x.ndim != len(fixed)):
                raise ValueError(
                    f"Einsum {self.einsum_str!r} expects an input with labels {_term(s.x)}, "
                    f"got shape {x.shape}"
                )
            rest = tuple(c for c in s.x if c not in s.contracted)
            x = jnp.einsum(f"{_term(s.x)}->{_term(rest + s.contracted)}", x)
            n_in = len(s.contracted)
            got = x.shape[x.ndim - n_in :]
            want = tuple(self._size_of(c) for c in s.contracted)
            if got != want:
                raise ValueError(
                    f"Einsum {self.einsum_str!r}: contracted labels {s.contracted} have sizes "
                    f"{want} in the kernel, {got} in the input of shape {inputs.shape}"
                )
            lead = x.shape[: x.ndim - n_in]
            (x,), cores = self._promoted(x.reshape((*lead, self.in_features)))
            y = functional.linear(
                self.layout,
                cores,
                x,
                None,
                contract=self.contract,
                optimize=self.optimize,
                precision=self.precision,
            )
            y = y.reshape((*lead, *(self._size_of(c) for c in s.outputs)))
            y = jnp.einsum(f"{_term(rest + s.outputs)}->{_term(s.y)}", y)
            if self.bias is not None:
                y = y + self._broadcast_bias(y)
            return self._constrained(y, out_sharding)

    def _broadcast_bias(self, y: jax.Array) -> jax.Array:
        """The bias reshaped to broadcast over y: output-label axes, size 1 elsewhere."""
        s = self.structure
        shape = []
        for c in s.y:
            if c == "...":
                shape += [1] * (y.ndim - (len(s.y) - 1))
            else:
                shape.append(self._size_of(c) if c in s.outputs else 1)
        return jnp.reshape(jnp.asarray(self.bias[...], y.dtype), shape)

    def cost(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and forward FLOPs for inputs of `input_shape` (see
        `tnjax.functional.cost`; labels summed out of x alone are not counted)."""
        contracted = math.prod(self._size_of(c) for c in self.structure.contracted)
        batch = max(1, math.prod(input_shape) // contracted)
        return functional.cost(self.layout, (batch, self.in_features), optimize=self.optimize)

    def kernel(self) -> jax.Array:
        """The reconstructed dense kernel (`kernel_shape`, the kernel term's order)."""
        s = self.structure
        w = super().kernel().reshape(tuple(self._size_of(c) for c in s.contracted + s.outputs))
        return jnp.einsum(f"{_term(s.contracted + s.outputs)}->{_term(s.kernel)}", w)

    @classmethod
    def from_einsum(
        cls,
        layer: nnx.Einsum,
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
    ) -> Einsum:
        """Tensorized layer initialised by decomposing a trained `nnx.Einsum`'s kernel,
        permuted and flattened to (contracted, outputs) (see `tnjax.nn.Linear.from_linear`);
        its einsum string, bias, dtypes and precision are kept. At full rank it reproduces
        the original. `decompose=False` gives random cores at Flax's default scale instead.

        Raises:
          ValueError: the layer takes its einsum string at call time, or its kernel has a
            batch label (see the module docstring).
        """
        if layer.einsum_str is None:
            raise ValueError(
                "from_einsum: the nnx.Einsum takes its einsum_str at call time; give it one "
                "in the constructor"
            )
        kernel = layer.kernel[...]
        s = einsum_structure(layer.einsum_str, kernel.ndim)
        sizes = dict(zip(s.kernel, kernel.shape, strict=True))
        n_in = math.prod(sizes[c] for c in s.contracted)
        n_out = math.prod(sizes[c] for c in s.outputs)
        rngs = rngs or nnx.Rngs(0)
        layout = cls._resolve_layout(locals(), n_in, n_out)
        matrix = jnp.einsum(f"{_term(s.kernel)}->{_term(s.contracted + s.outputs)}", kernel)
        with jax.named_scope("tnjax.nn.Einsum.from_einsum"):
            cores = cls._initial_cores(layout, matrix.reshape(n_in, n_out), rngs, decompose)
        bias = None if layer.bias is None else layer.bias[...]
        kwargs = cls._options_of(layer, kwargs)
        return cls.from_cores(
            layout,
            cores,
            bias,
            einsum_str=layer.einsum_str,
            kernel_shape=tuple(kernel.shape),
            bias_shape=None if bias is None else tuple(bias.shape),
            **kwargs,
        )
