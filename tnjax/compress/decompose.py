"""Decompose a trained model's layers into tensor formats to a parameter budget.

    compressed, rows = compress_model(model, jnp.zeros((1, 28, 28, 1)), format="rcp", rate=0.1)

Every eligible dense layer (`nnx.Linear`, `nnx.Conv`) is replaced by the tnjax layer of the
requested format, initialised by decomposing its kernel (`tnjax.nn.Linear.from_linear`,
`tnjax.nn.Conv.from_conv`: CP-ALS for CP/RCP, HOOI for Tucker/RTK, TT-SVD for TT/RTT,
TR-SVD for TR/RTR; reshaped formats factorise channels into output/input mode pairs that
share a core). Biases, batch norm and every other variable are carried over unchanged.
By default every layer is eligible except the first conv and the last dense layer in call
order (the paper's convention: they are small and sensitive).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from tnjax import nn as tnn
from tnjax.nn.graph import NAME_ATTR, layer_name, replace_module
from tnjax.nn.report import layer_report

__all__ = ["compress_model", "eligible_layers", "FORMAT_ALIASES", "COMPRESS_FORMATS"]

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


def eligible_layers(
    model: nnx.Module,
    *example_inputs: Any,
    layers: Sequence[str] | None = None,
    keep_first_conv: bool = True,
    keep_last_dense: bool = True,
) -> list[dict[str, Any]]:
    """The dense Linear/Conv layers to compress, as `layer_report` rows, in call order.

    Args:
      model: a (dense or partly tensorized) NNX model.
      *example_inputs: arguments of `model(...)` (shapes only matter).
      layers: fnmatch patterns of layer names to compress; None means all but the first
        conv and the last dense layer (see `keep_first_conv` / `keep_last_dense`, which
        only apply when `layers` is None).
    """
    rows = [r for r in layer_report(model, *example_inputs) if r["kind"] in ("linear", "conv")]
    rows = [r for r in rows if r["format"] == "dense"]
    if layers is not None:
        chosen = [r for r in rows if any(fnmatch.fnmatchcase(r["name"], p) for p in layers)]
        unused = [p for p in layers if not any(fnmatch.fnmatchcase(r["name"], p) for r in rows)]
        if unused:
            raise ValueError(
                f"layer patterns {unused} match no dense layer; layers: {[r['name'] for r in rows]}"
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
        if isinstance(module, nnx.Linear | nnx.Conv):
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

    Returns:
      (compressed model, one dict per compressed layer: name, kind, format, ranks, params,
      dense_params, fraction = params / dense_params as measured).
    """
    if (rate is None) == (rank is None):
        raise ValueError("give exactly one of rate= or rank=")
    key = jax.random.key(0) if key is None else key
    targets = eligible_layers(model, *example_inputs, layers=layers)
    if not targets:
        raise ValueError("no dense Linear/Conv layer to compress in this model")
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
        rngs = nnx.Rngs(jax.random.fold_in(key, i))
        if isinstance(module, nnx.Conv):
            if fmt == "ttm":
                raise ValueError(f"layer {name!r} is a conv: 'ttm' is for Linear layers; use rtt")
            new = tnn.Conv.from_conv(module, format=fmt, rngs=rngs, **budget)
        else:
            new = tnn.Linear.from_linear(module, format=fmt, rngs=rngs, **budget)
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
