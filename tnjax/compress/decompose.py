"""Decompose a trained model's layers into tensor formats to a parameter budget.

    compressed, rows = compress_model(model, jnp.zeros((1, 28, 28, 1)), format="rcp", rate=0.1)

Every eligible dense layer (`nnx.Linear`, `nnx.LinearGeneral` (the projections of
`nnx.MultiHeadAttention`), `nnx.Einsum` (a kernel contracted with the input), `nnx.Conv`
with 1, 2 or 3 spatial dimensions, grouped or depthwise, `nnx.Embed`),
wherever it sits in the model (nested modules, lists, dicts), is replaced by the tnjax layer
of the requested format, initialised by decomposing its kernel (`tnjax.nn.Linear.from_linear`,
`tnjax.nn.LinearGeneral.from_linear_general`, `tnjax.nn.Einsum.from_einsum`,
`tnjax.nn.Conv.from_conv`,
`tnjax.nn.Embed.from_embed`:
CP-ALS for CP/RCP, HOOI for Tucker/RTK, TT-SVD for TT/RTT, TR-SVD for TR/RTR; reshaped
formats factorise channels into output/input mode pairs that share a core). Biases, batch
norm and every other variable are carried over unchanged. By default every layer is
eligible except the first conv and the last dense layer in call order (the paper's
convention: they are small and sensitive). Layers with a kernel that cannot be converted
(masked convolutions, an `nnx.Einsum` with a kernel per batch index, ...) are listed with
the reason by `skipped_layers`, and `compress_model` warns about them.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from tnjax import nn as tnn
from tnjax.formats.weights import spatial_ints
from tnjax.nn._common import TensorLayer
from tnjax.nn.einsum import einsum_structure
from tnjax.nn.graph import NAME_ATTR, layer_name, replace_module
from tnjax.nn.report import layer_report

__all__ = [
    "compress_model",
    "eligible_layers",
    "skipped_layers",
    "unsupported_reason",
    "FORMAT_ALIASES",
    "COMPRESS_FORMATS",
]

_CONVERTED = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.Embed)

# Names accepted for the formats (the TNN paper's "TK" is Tucker).
FORMAT_ALIASES = {"tk": "tucker", "rtucker": "rtk"}
COMPRESS_FORMATS = ("cp", "tucker", "tt", "tr", "rcp", "rtk", "rtt", "rtr", "ttm")


def _canonical(fmt: str) -> str:
    fmt = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in COMPRESS_FORMATS:
        raise ValueError(
            f"unknown format {fmt!r}; choose one of {COMPRESS_FORMATS} (or 'tk' for tucker)"
        )
    return fmt


def _per_layer(value: Any, name: str, what: str) -> Any:
    """`value` itself, or the last matching entry of a {pattern: value} mapping."""
    if not isinstance(value, Mapping):
        return value
    found = None
    for pattern, v in value.items():
        if fnmatch.fnmatchcase(name, pattern):
            found = v
    if found is None:
        raise ValueError(f"no {what} given for layer {name!r} (patterns: {list(value)})")
    return found


def unsupported_reason(module: nnx.Module) -> str | None:
    """Why `compress_model` cannot convert this layer, or None when it can."""
    if isinstance(module, nnx.Conv):
        n = module.kernel.ndim - 2
        if not 1 <= n <= 3:
            return f"a {n}-D convolution: tnjax.nn.Conv has 1 to 3 spatial dimensions"
        if module.mask is not None:
            return "a masked convolution (mask=): tnjax.nn.Conv has no kernel mask"
        if set(spatial_ints(module.input_dilation or 1, n, "input_dilation")) != {1}:
            return f"input_dilation={module.input_dilation}: tnjax.nn.Conv has none"
        return None
    if isinstance(module, nnx.LinearGeneral) and module.batch_axis:
        return f"an nnx.LinearGeneral with batch_axis={dict(module.batch_axis)}"
    if isinstance(module, nnx.Einsum):
        if module.einsum_str is None:
            return "an nnx.Einsum whose einsum_str is given at call time"
        try:
            einsum_structure(module.einsum_str, module.kernel.ndim)
        except ValueError as e:
            return str(e)
        return None
    if isinstance(module, _CONVERTED):
        return None
    return (
        f"{type(module).__name__} is not a layer kind tnjax converts "
        "(Linear, LinearGeneral, Einsum, Conv, Embed)"
    )


def _has_weight(module: nnx.Module) -> bool:
    return any(
        isinstance(getattr(module, attr, None), nnx.Param) for attr in ("kernel", "embedding")
    )


def skipped_layers(model: nnx.Module) -> list[dict[str, str]]:
    """The layers with a kernel or table that `compress_model` leaves dense, and why.

    Returns:
      [{"name": graph path or factory name, "type": class name, "reason": ...}] in graph
      order: dense Linear/Conv/Embed layers it cannot convert (`unsupported_reason`) and
      other modules holding a `kernel`/`embedding` parameter (e.g. `nnx.Einsum`, or a
      user's own layer).
    """
    out = []
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module) or isinstance(module, TensorLayer):
            continue
        if not _has_weight(module) and not isinstance(module, _CONVERTED):
            continue
        reason = unsupported_reason(module)
        if reason is not None:
            name = layer_name(module) or "/".join(str(p) for p in path)
            out.append({"name": name, "type": type(module).__name__, "reason": reason})
    return out


def eligible_layers(
    model: nnx.Module,
    *example_inputs: Any,
    layers: Sequence[str] | None = None,
    keep_first_conv: bool = True,
    keep_last_dense: bool = True,
) -> list[dict[str, Any]]:
    """The dense Linear/Conv/Embed layers to compress, as `layer_report` rows, in call order.

    Args:
      model: a (dense or partly tensorized) NNX model.
      *example_inputs: arguments of `model(...)` (shapes only matter).
      layers: fnmatch patterns of layer names to compress; None means all but the first
        conv and the last dense layer (see `keep_first_conv` / `keep_last_dense`, which
        only apply when `layers` is None).
    """
    skipped = {s["name"] for s in skipped_layers(model)}
    rows = [r for r in layer_report(model, *example_inputs) if r["format"] == "dense"]
    rows = [r for r in rows if r["name"] not in skipped]
    if layers is not None:
        chosen = [r for r in rows if any(fnmatch.fnmatchcase(r["name"], p) for p in layers)]
        unused = [p for p in layers if not any(fnmatch.fnmatchcase(r["name"], p) for r in rows)]
        if unused:
            left = f"; left dense: {sorted(skipped)}" if skipped else ""
            raise ValueError(
                f"layer patterns {unused} match no convertible dense layer; layers: "
                f"{[r['name'] for r in rows]}{left}"
            )
        return chosen
    convs = [r for r in rows if r["kind"] == "conv"]
    linears = [r for r in rows if r["kind"] == "linear"]
    skip = set()
    if keep_first_conv and convs:
        skip.add(convs[0]["name"])
    if keep_last_dense and linears:
        skip.add(linears[-1]["name"])
    return [r for r in rows if r["name"] not in skip]


def _modules_by_name(model: nnx.Module) -> dict[str, tuple[tuple, nnx.Module]]:
    out = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, _CONVERTED):
            name = layer_name(module) or "/".join(str(p) for p in path)
            out[name] = (tuple(path), module)
    return out


def compress_model(
    model: nnx.Module,
    *example_inputs: Any,
    format: str | Mapping[str, str],
    rate: float | Mapping[str, float] | None = None,
    rank: int | Mapping[str, int] | None = None,
    layers: Sequence[str] | None = None,
    num_modes: int | None = None,
    key: jax.Array | None = None,
    on_skipped: str = "warn",
    init: str = "decompose",
) -> tuple[nnx.Module, list[dict[str, Any]]]:
    """A copy of `model` whose eligible layers are decomposed into tensor formats.

    Args:
      model: the trained model (left unchanged).
      *example_inputs: arguments of `model(...)`, e.g. images (1, H, W, C).
      format: one format for all, or {pattern: format}. A reshaped format given for a
        Linear uses the Linear's reshaped variant ("rtt" is the TT-matrix); "tk" is Tucker.
      rate: fraction of each layer's dense parameters to keep (or {pattern: rate}).
      rank: instead of `rate`, a rank (or {pattern: rank}).
      layers: fnmatch patterns of the layers to compress (default: all dense Linear/Conv
        layers but the first conv and the last dense layer).
      num_modes: channel/feature modes per side (default: the layers' default, 3).
      key: PRNG key for the CP-ALS initialisations (default `jax.random.key(0)`).
      on_skipped: what to do about layers with a kernel that stay dense because they
        cannot be converted (`skipped_layers`): "warn" (one warning listing them and why),
        "raise" (ValueError) or "ignore".
      init: "decompose" (the trained kernels' decompositions) or "random" (random cores at
        Flax's default scale: the same tensorized structure, to train from scratch, e.g.
        with `tnjax.bayes` rank priors on a model written elsewhere).

    Returns:
      (compressed model, one dict per compressed layer: name, kind, format, ranks, params,
      dense_params, fraction = params / dense_params as measured).
    """
    if (rate is None) == (rank is None):
        raise ValueError("give exactly one of rate= or rank=")
    if init not in ("decompose", "random"):
        raise ValueError(f"init={init!r}: use 'decompose' or 'random'")
    if on_skipped not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_skipped={on_skipped!r}: use 'warn', 'raise' or 'ignore'")
    key = jax.random.key(0) if key is None else key
    _report_skipped(skipped_layers(model), on_skipped)
    targets = eligible_layers(model, *example_inputs, layers=layers)
    if not targets:
        raise ValueError("no dense Linear/Conv/Embed layer to compress in this model")
    new_model = nnx.clone(model)
    modules = _modules_by_name(new_model)
    rows = []
    for i, target in enumerate(targets):
        name = target["name"]
        path, module = modules[name]
        fmt = _canonical(_per_layer(format, name, "format"))
        budget = {}
        if rate is not None:
            budget["compression"] = float(_per_layer(rate, name, "rate"))
        else:
            budget["rank"] = _per_layer(rank, name, "rank")
        if num_modes is not None:
            budget["num_modes"] = num_modes
        budget.update(rngs=nnx.Rngs(jax.random.fold_in(key, i)), decompose=init == "decompose")
        if isinstance(module, nnx.Conv):
            if fmt == "ttm":
                raise ValueError(f"layer {name!r} is a conv: 'ttm' is for Linear layers; use rtt")
            new = tnn.Conv.from_conv(module, format=fmt, **budget)
        elif isinstance(module, nnx.Embed):
            new = tnn.Embed.from_embed(module, format=fmt, **budget)
        elif isinstance(module, nnx.LinearGeneral):
            new = tnn.LinearGeneral.from_linear_general(module, format=fmt, **budget)
        elif isinstance(module, nnx.Einsum):
            new = tnn.Einsum.from_einsum(module, format=fmt, **budget)
        else:
            new = tnn.Linear.from_linear(module, format=fmt, **budget)
        setattr(new, NAME_ATTR, name)
        replace_module(new_model, path, new)
        rows.append(
            {
                "name": name,
                "kind": target["kind"],
                "format": fmt,
                "ranks": tuple(int(r) for r in new.ranks),
                "params": int(new.num_params),
                "dense_params": int(new.dense_params),
                "fraction": new.num_params / new.dense_params,
            }
        )
    return new_model, rows


def _report_skipped(skipped: list[dict[str, str]], on_skipped: str) -> None:
    if not skipped or on_skipped == "ignore":
        return
    lines = "; ".join(f"{s['name']} ({s['reason']})" for s in skipped)
    message = f"{len(skipped)} layer(s) with a kernel stay dense: {lines}"
    if on_skipped == "raise":
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)
