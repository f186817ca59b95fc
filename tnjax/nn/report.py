"""Per-layer and whole-model parameter and FLOP reports, dense vs tensorized.

    rep = model_report(model, jnp.zeros((128, 32, 32, 3)))
    rep["compression"], rep["flops_ratio"]        # the model's params and FLOPs vs dense
    for row in rep["layers"]: print(row["name"], row["format"], row["params"], row["flops"])

The layers' input shapes are found by running the model abstractly (`jax.eval_shape`: no
FLOPs are spent and the model, BatchNorm statistics included, is left untouched) with the
layer classes' `__call__` temporarily wrapped to record them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np
from flax import nnx

from tnjax import nn as tnn
from tnjax.nn.graph import layer_name

__all__ = ["layer_report", "model_report", "count_params", "compiled_flops", "LAYER_KINDS"]

# Layer classes reported, with their kind; a subclass is reported as its base.
LAYER_KINDS: dict[type, str] = {
    nnx.Linear: "linear",
    nnx.LinearGeneral: "linear",
    nnx.Einsum: "linear",
    nnx.Conv: "conv",
    nnx.Embed: "embed",
    tnn.Linear: "linear",
    tnn.LinearGeneral: "linear",
    tnn.Einsum: "linear",
    tnn.Conv: "conv",
    tnn.Embed: "embed",
}
_TENSORIZED = (tnn.Linear, tnn.LinearGeneral, tnn.Einsum, tnn.Conv, tnn.Embed)


def _kind(module: Any) -> str | None:
    for cls, kind in LAYER_KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def _layers(model: nnx.Module) -> list[tuple[tuple, nnx.Module]]:
    return [(tuple(p), m) for p, m in nnx.iter_graph(model) if _kind(m) is not None]


def _record_calls(model: nnx.Module, example_inputs: tuple) -> list[tuple[tuple, tuple, tuple]]:
    """(graph path, input shape, output shape) of every layer call, in call order."""
    records: list[tuple[tuple, tuple, tuple]] = []
    paths: dict[int, tuple] = {}
    graphdef, state = nnx.split(model)
    # Only classes defining __call__ themselves are patched, so a call is recorded once.
    originals = {cls: cls.__dict__["__call__"] for cls in LAYER_KINDS if "__call__" in cls.__dict__}

    def wrap(original):
        @functools.wraps(original)
        def call(self, *args, **kwargs):
            outputs = original(self, *args, **kwargs)
            path = paths.get(id(self))
            if path is not None:
                inputs = args[0] if args else next(iter(kwargs.values()))
                records.append((path, tuple(np.shape(inputs)), tuple(np.shape(outputs))))
            return outputs

        return call

    def run(state, *inputs):
        # A fresh copy of the model: training-mode BatchNorm updates stay inside the trace.
        copy = nnx.merge(graphdef, state)
        paths.update({id(m): p for p, m in _layers(copy)})
        return copy(*inputs)

    try:
        for cls, original in originals.items():
            cls.__call__ = wrap(original)
        jax.eval_shape(run, state, *example_inputs)
    finally:
        for cls, original in originals.items():
            cls.__call__ = original
    return records


def _dense_cost(module: nnx.Module, kind: str, in_shape: tuple, out_shape: tuple) -> dict:
    if isinstance(module, nnx.Einsum):  # every output entry sums over the contracted labels
        params = math.prod(module.kernel.shape)
        out_size = math.prod(module.kernel.shape[i] for i in _einsum_output_axes(module))
        contracted = params // out_size
        return {"params": params, "dense_flops": 2 * math.prod(out_shape) * contracted}
    if kind == "linear":  # nnx.Linear, or nnx.LinearGeneral with several feature axes
        n_in = int(np.prod(module.in_features))
        n_out = math.prod(module.kernel.shape) // n_in
        batch = math.prod(in_shape) // n_in
        return {"params": n_in * n_out, "dense_flops": 2 * batch * n_in * n_out}
    if kind == "conv":
        # kernel (k_1..k_n, in/groups, out): each output position costs 2*prod(kernel) FLOPs
        params = math.prod(module.kernel.shape)
        n = len(module.kernel.shape) - 2
        positions = math.prod(out_shape[:-1]) if len(out_shape) > n else 0
        return {"params": params, "dense_flops": 2 * positions * params}
    return {"params": math.prod(module.embedding.shape), "dense_flops": 0}


def _einsum_output_axes(module: nnx.Einsum) -> list[int]:
    """The kernel axes of an nnx.Einsum whose labels are in its output (all, if unknown)."""
    text = (module.einsum_str or "").replace(" ", "")
    if text.count("->") != 1 or "," not in text:
        return list(range(module.kernel.ndim))
    kernel_term, y_term = text.split("->")[0].split(",")[1], text.split("->")[1]
    return [i for i, c in enumerate(kernel_term) if c in y_term]


def layer_report(model: nnx.Module, *example_inputs: Any) -> list[dict[str, Any]]:
    """One row per Linear/Conv/Embed layer (dense Flax or tnjax), in call order.

    Args:
      model: any NNX module; it is not modified.
      *example_inputs: arguments of `model(...)`, arrays or `jax.ShapeDtypeStruct`s, e.g.
        images (B, H, W, C) or, for DLRM, dense (B, F) and sparse (B, T) int.

    Returns:
      dicts with
        name: the factory name (`tnjax_name`), else the module's graph path ("a/0/b");
        kind: "linear", "conv" or "embed";
        format: "dense" or the tnjax format;
        ranks: tuple, or None for dense layers;
        params: kernel/table/core parameters (biases excluded);
        dense_params: those of the dense layer (in*out, kh*kw*in*out, V*E);
        flops: forward FLOPs for the example batch (dense layers: dense_flops; tnjax
          layers: their planned contraction, `layer.cost`), summed over calls;
        dense_flops: 2*B*in*out for a linear with B = prod(leading dims),
          2*B*H'*W'*kh*kw*in*out for a conv (B, H', W' of its output; in/groups for grouped
          convs), 0 for an embedding (a gather);
        input_shape, output_shape (first call; None if never called), calls, path (the
          contraction strategy chosen by tnjax layers, else None).
      Layers the example inputs never reach come last, with calls 0 and no FLOPs.
    """
    records = _record_calls(model, example_inputs)
    layers = dict(_layers(model))
    rows: dict[tuple, dict[str, Any]] = {}
    for path, in_shape, out_shape in records:
        module = layers[path]
        kind = _kind(module)
        if isinstance(module, _TENSORIZED):
            cost = module.cost(in_shape)
            flops, dense_flops = int(cost["flops"]), int(cost["dense_flops"])
            params, dense_params = int(module.num_params), int(module.dense_params)
            chosen = cost.get("path")
        else:
            cost = _dense_cost(module, kind, in_shape, out_shape)
            params = dense_params = cost["params"]
            flops = dense_flops = cost["dense_flops"]
            chosen = None
        if path in rows:
            rows[path]["flops"] += flops
            rows[path]["dense_flops"] += dense_flops
            rows[path]["calls"] += 1
            continue
        rows[path] = _row(module, path, kind, params, dense_params)
        rows[path].update(
            flops=flops,
            dense_flops=dense_flops,
            input_shape=in_shape,
            output_shape=out_shape,
            calls=1,
            path=chosen,
        )
    for path, module in layers.items():
        if path not in rows:
            kind = _kind(module)
            if isinstance(module, _TENSORIZED):
                params, dense_params = int(module.num_params), int(module.dense_params)
            else:
                params = dense_params = _dense_cost(module, kind, (0,), (0,))["params"]
            rows[path] = _row(module, path, kind, params, dense_params)
            rows[path].update(
                flops=0, dense_flops=0, input_shape=None, output_shape=None, calls=0, path=None
            )
    return list(rows.values())


def _row(module, path, kind, params, dense_params) -> dict[str, Any]:
    tensorized = isinstance(module, _TENSORIZED)
    return {
        "name": layer_name(module) or "/".join(str(p) for p in path),
        "kind": kind,
        "format": module.format if tensorized else "dense",
        "ranks": tuple(module.ranks) if tensorized else None,
        "params": params,
        "dense_params": dense_params,
    }


def compiled_flops(module: nnx.Module, *example_inputs: Any) -> float:
    """FLOPs of `module(*example_inputs)` as XLA counts them in the compiled forward.

    A measurement of what actually runs (after XLA's simplifications), to check the cost
    model's `flops`; backend-dependent, so compare numbers from the same backend only.
    """
    graph, state = nnx.split(module)

    def forward(state, *inputs):
        return nnx.merge(graph, state, copy=True)(*inputs)

    compiled = jax.jit(forward).lower(state, *example_inputs).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per device program
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def count_params(model: nnx.Module) -> int:
    """Number of entries of all `nnx.Param` variables (cores, kernels, biases, BN scales)."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def model_report(model: nnx.Module, *example_inputs: Any) -> dict[str, Any]:
    """Whole-model parameters and FLOPs against the same model with every layer dense.

    Args:
      model, *example_inputs: as in `layer_report`.

    Returns:
      dict with
        layers: `layer_report(model, *example_inputs)`;
        params: entries of every `nnx.Param` (cores, kernels, biases, BN scale and bias;
          not BN statistics);
        dense_equivalent_params: params - sum(tensorized layers' params) + sum(their
          dense_params): the model with each tnjax layer replaced by its dense counterpart;
        compression: params / dense_equivalent_params;
        flops, dense_flops: sums over the layers (Linear/Conv/Embed only: BN, activations
          and pooling are not counted);
        flops_ratio: flops / dense_flops (None when dense_flops is 0).
    """
    rows = layer_report(model, *example_inputs)
    params = count_params(model)
    tensorized = [r for r in rows if r["format"] != "dense"]
    dense_eq = (
        params - sum(r["params"] for r in tensorized) + sum(r["dense_params"] for r in tensorized)
    )
    flops = sum(r["flops"] for r in rows)
    dense_flops = sum(r["dense_flops"] for r in rows)
    return {
        "layers": rows,
        "params": params,
        "dense_equivalent_params": dense_eq,
        "compression": params / dense_eq if dense_eq else None,
        "flops": flops,
        "dense_flops": dense_flops,
        "flops_ratio": flops / dense_flops if dense_flops else None,
    }
