"""`LayerFactory`: builds each named layer of a model dense or tensorized from a spec.

A *spec* is a mapping with the key "format" ("dense" or a tnjax format) and, for the
tensorized formats, the keyword arguments of `tnjax.nn.Linear`, `tnjax.nn.Conv` or
`tnjax.nn.Embed` (rank, compression, num_modes, in_modes, out_modes, vocab_modes,
feature_modes, optimize, ...)::

  factory = LayerFactory(
      default={"format": "tt", "rank": 4, "conv_format": "rcp"},
      overrides={"stage3.*": {"rank": 8}, "fc": {"format": "ttm", "compression": 0.1}},
  )
  model = ResNetCifar(32, factory=factory, rngs=nnx.Rngs(0))

Resolution of the spec of a layer named `name` of kind `kind` ("linear", "conv", "embed"):

1. Each spec is first specialised to the kind: a key "<kind>_<key>" (e.g. "conv_format",
   "embed_rank") replaces "<key>" for layers of that kind, and the prefixed keys of the
   other kinds are dropped. So `{"format": "tt", "conv_format": "rcp"}` makes linears TT
   and convs RCP.
2. The base is `default`, except for layers the model builds *dense by default* (a
   network's first conv and its classifier, say) whose base is `default` with
   format "dense".
3. Every override whose pattern (a layer name or an `fnmatch` glob such as "stage2.*" or
   "fc*") matches `name` is merged onto the base in order, so the last matching override
   wins key by key. An override that sets one of rank/compression drops the other.
4. A "dense" spec builds `nnx.Linear`/`nnx.Conv`/`nnx.Embed`; the tensor-network keys are
   ignored and any other keys (dtype, kernel_init, ...) go to the Flax constructor.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from flax import nnx

from tnjax import nn as tnn
from tnjax.formats.weights import kernel_dims, spatial_ints
from tnjax.nn.graph import NAME_ATTR, layer_name

__all__ = ["LayerFactory", "KINDS", "FORMATS", "NAME_ATTR", "layer_name"]

KINDS = ("linear", "conv", "embed")
FORMATS = {
    "linear": tnn.LINEAR_FORMATS,
    "conv": tnn.CONV_FORMATS,
    "embed": tnn.EMBED_FORMATS,
}
# Keys that only mean something to tensorized layers; a dense spec ignores them.
_TN_KEYS = frozenset(
    {
        "rank",
        "compression",
        "num_modes",
        "in_modes",
        "out_modes",
        "vocab_modes",
        "feature_modes",
        "optimize",
    }
)
_EXCLUSIVE = ("rank", "compression")


def _as_dict(value: Any, what: str) -> dict:
    """A plain dict from a Mapping or an ml_collections ConfigDict."""
    if value is None:
        return {}
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(value).__name__}: {value!r}")
    return dict(value)


def _specialise(spec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Applies "<kind>_<key>" entries for `kind` and drops those of the other kinds."""
    out = {}
    prefixed = {}
    for key, value in spec.items():
        head, _, rest = key.partition("_")
        if head in KINDS and rest:
            if head == kind:
                prefixed[rest] = value
        else:
            out[key] = value
    for key in _EXCLUSIVE:
        if key in prefixed:  # "conv_rank" replaces a generic "compression" too
            for other in _EXCLUSIVE:
                if other != key and other not in prefixed:
                    out.pop(other, None)
    out.update(prefixed)
    return out


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key in _EXCLUSIVE:
        if key in update:
            for other in _EXCLUSIVE:
                if other != key and other not in update:
                    out.pop(other, None)
    out.update(update)
    return out


class LayerFactory:
    """Builds each named layer dense (nnx.Linear/Conv/Embed) or tensorized (tnjax.nn.*).

    Args:
      default: the spec of every layer that the model does not build dense by default,
        e.g. `{"format": "tt", "rank": 4}` or `{"format": "ttm", "compression": 0.1,
        "conv_format": "rcp"}`; None means every layer is dense. See the module docstring
        for the "<kind>_<key>" keys.
      overrides: `{pattern: spec}`, patterns being layer names or `fnmatch` globs; they
        apply to dense-by-default layers too. Insertion order matters: the last matching
        override wins. A sequence of (pattern, spec) pairs is accepted as well.

    Attributes:
      specs_used: layer name -> resolved spec (with "format"; without the tensor-network
        keys for dense layers) of every layer built, in construction order.
    """

    def __init__(
        self,
        default: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping]] | None = None,
    ):
        self.default = _as_dict(default, "default") if default is not None else {"format": "dense"}
        if overrides is None:
            pairs = []
        elif isinstance(overrides, Mapping) or hasattr(overrides, "to_dict"):
            pairs = list(_as_dict(overrides, "overrides").items())
        else:
            pairs = [tuple(p) for p in overrides]
        self.overrides: list[tuple[str, dict[str, Any]]] = []
        for pattern, spec in pairs:
            if not isinstance(pattern, str):
                raise TypeError(f"override patterns must be strings, got {pattern!r}")
            self.overrides.append((pattern, _as_dict(spec, f"overrides[{pattern!r}]")))
        self.specs_used: dict[str, dict[str, Any]] = {}
        self._matched: set[str] = set()

    # ------------------------------------------------------------------ resolution

    def resolve(self, name: str, kind: str, *, dense_by_default: bool = False) -> dict[str, Any]:
        """The spec layer `name` of `kind` gets (without building it or recording it).

        Raises:
          ValueError: no format, or a format that `kind` does not have.
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        spec = _specialise(self.default, kind)
        if dense_by_default:
            spec["format"] = "dense"
        for pattern, override in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                spec = _merge(spec, _specialise(override, kind))
        fmt = spec.get("format")
        valid = ("dense",) + tuple(FORMATS[kind])
        if fmt is None:
            raise ValueError(
                f"layer {name!r} ({kind}) has no format: give the default spec a 'format' "
                f"(or '{kind}_format') key, one of {valid}"
            )
        if fmt not in valid:
            hint = ""
            others = [k for k in KINDS if k != kind and fmt in FORMATS[k]]
            if others:
                hint = (
                    f"; {fmt!r} is a {'/'.join(others)} format: set it with "
                    f"'{others[0]}_format' so that it applies to {others[0]} layers only"
                )
            raise ValueError(
                f"layer {name!r} is a {kind} and has no format {fmt!r}; valid {kind} formats "
                f"are {valid}{hint}"
            )
        return spec

    def _record(self, name: str, spec: dict[str, Any]) -> None:
        if spec["format"] == "dense":
            spec = {k: v for k, v in spec.items() if k not in _TN_KEYS}
        self.specs_used[name] = dict(spec)
        for pattern, _ in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                self._matched.add(pattern)

    @staticmethod
    def _split(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        kwargs = {k: v for k, v in spec.items() if k != "format"}
        fmt = spec["format"]
        if fmt == "dense":
            kwargs = {k: v for k, v in kwargs.items() if k not in _TN_KEYS}
        for key in ("rank", "in_modes", "out_modes", "vocab_modes", "feature_modes"):
            if isinstance(kwargs.get(key), list):  # configs give lists; layers want tuples
                kwargs[key] = tuple(kwargs[key])
        return fmt, kwargs

    def _build(self, name: str, kind: str, spec: dict[str, Any], make) -> nnx.Module:
        if name in self.specs_used:
            raise ValueError(
                f"layer name {name!r} is used twice; every layer built by one LayerFactory "
                "needs a unique name"
            )
        fmt, kwargs = self._split(spec)
        try:
            layer = make(fmt, kwargs)
        except ValueError as e:
            raise ValueError(f"layer {name!r} ({kind}, spec {spec}): {e}") from e
        except TypeError as e:
            raise TypeError(f"layer {name!r} ({kind}, spec {spec}): {e}") from e
        setattr(layer, NAME_ATTR, name)
        self._record(name, spec)
        return layer

    # ------------------------------------------------------------------ builders

    def linear(
        self,
        name: str,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        dense_by_default: bool = False,
    ) -> nnx.Module:
        """A Linear (..., in_features) -> (..., out_features): `nnx.Linear` or `tnjax.nn.Linear`."""
        spec = self.resolve(name, "linear", dense_by_default=dense_by_default)

        def make(fmt, kw):
            if fmt == "dense":
                return nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs, **kw)
            return tnn.Linear(
                in_features, out_features, format=fmt, use_bias=use_bias, rngs=rngs, **kw
            )

        return self._build(name, "linear", spec, make)

    def conv(
        self,
        name: str,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, ...],
        *,
        rngs: nnx.Rngs,
        strides: int | tuple[int, ...] = 1,
        padding: Any = "SAME",
        use_bias: bool = True,
        dense_by_default: bool = False,
    ) -> nnx.Module:
        """A conv (B, H, W, in_features) -> (B, H', W', out_features), or 1-D / 3-D when
        `kernel_size` has 1 or 3 entries.

        An int `kernel_size` means (k, k) here (a square 2-D kernel, unlike `nnx.Conv`);
        `strides` may be an int (the same along every spatial dimension).
        """
        spec = self.resolve(name, "conv", dense_by_default=dense_by_default)
        ks = kernel_dims(kernel_size)
        st = spatial_ints(strides, len(ks), "strides")

        def make(fmt, kw):
            if fmt == "dense":
                return nnx.Conv(
                    in_features,
                    out_features,
                    ks,
                    st,
                    padding=padding,
                    use_bias=use_bias,
                    rngs=rngs,
                    **kw,
                )
            return tnn.Conv(
                in_features,
                out_features,
                ks,
                st,
                padding=padding,
                format=fmt,
                use_bias=use_bias,
                rngs=rngs,
                **kw,
            )

        return self._build(name, "conv", spec, make)

    def embed(
        self,
        name: str,
        num_embeddings: int,
        features: int,
        *,
        rngs: nnx.Rngs,
        dense_by_default: bool = False,
    ) -> nnx.Module:
        """An embedding table: int (...) -> (..., features): `nnx.Embed` or `tnjax.nn.Embed`."""
        spec = self.resolve(name, "embed", dense_by_default=dense_by_default)

        def make(fmt, kw):
            if fmt == "dense":
                return nnx.Embed(num_embeddings, features, rngs=rngs, **kw)
            return tnn.Embed(num_embeddings, features, format=fmt, rngs=rngs, **kw)

        return self._build(name, "embed", spec, make)

    # ------------------------------------------------------------------ checks

    def check_overrides_used(self) -> None:
        """Raises ValueError if an override pattern matched no layer built so far.

        Models call this at the end of their constructor, so a typo in a config
        ("stage4.*" in a 3-stage ResNet, "fc_1" for "fc1") fails loudly instead of
        silently leaving the layer as it was.
        """
        unused = [p for p, _ in self.overrides if p not in self._matched]
        if unused:
            names = ", ".join(self.specs_used)
            raise ValueError(
                f"layer override(s) {unused} matched no layer of the model; its layers are: "
                f"{names}. Fix the pattern(s) (exact names or fnmatch globs like 'stage2.*')"
            )
