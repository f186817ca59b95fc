"""Which core slices each rank-controlling vector lambda governs, per layer and format.

Bayesian rank determination (Hawkins, Liu & Zhang, arXiv:2010.08689) puts a zero-mean
Gaussian prior N(0, lambda_r^2) on every entry of the rank-r slice of a factor; shrinking
lambda_r to zero removes rank index r. A `RankGroup` is one vector lambda (one bond of the
layer, `layer.ranks[bond]`) and the (core, axis) pairs whose slices `core.take(r, axis)` it
governs. The groups are read off the layer's layout (`tnjax.formats.layout.Layout.rank_groups`),
so every format of every layer kind has them:

  CP (cp/rcp): one group, shared by every factor (the factors' rank axis), as in the paper.
  Tucker (tucker/rtk): one group per factor (its rank axis). The Tucker core has a fixed
    N(0, core_std^2) prior instead (not a group); its axes are listed in
    `RankGroup.prune_only`, so pruning slices it too.
  TT / TT-matrix (tt/ttm/rtt): one group per internal bond k, tying the trailing rank axis
    of core k AND the leading rank axis of core k+1.
  Tensor ring (tr/rtr): one group per bond, the closing bond r_0 tied to the last core's
    trailing axis and the first core's leading one, like every other bond.

The TT layout differs from the authors' code, which ties only the last bond to both of its
cores and every other bond to the trailing axis of core k alone. Here every bond is tied to
both adjacent cores: the two slices of index r are the only place bond index r enters the
contraction, so a small lambda_r shrinks both, and zeroing it prunes both slices
consistently (pruning one side alone leaves a dead, unpenalised slice on the other).
The price is that an interior core's entries sit in two groups (a penalty from each).
Tensor rings are outside the paper's model (CP, Tucker, TT, TTM); they get the same
treatment as TT bonds. Dense Flax layers have no groups.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from tnjax import nn as tnn
from tnjax.formats.layout import RankGroup
from tnjax.nn._common import TensorLayer
from tnjax.nn.graph import named_layers

__all__ = [
    "RankGroup",
    "rank_groups",
    "fixed_prior_cores",
    "tensor_layers",
    "is_supported",
    "SUPPORTED_FORMATS",
]

SUPPORTED_FORMATS = {
    "linear": tnn.LINEAR_FORMATS,
    "embed": tnn.EMBED_FORMATS,
    "conv": tnn.CONV_FORMATS,
}


def is_supported(layer: Any) -> bool:
    """Whether `layer` is a tnjax tensorized layer (every format has rank groups)."""
    return isinstance(layer, TensorLayer)


def rank_groups(layer: Any) -> list[RankGroup]:
    """The rank groups of a layer, one per entry of `layer.ranks`, in that order.

    Args:
      layer: a tnjax `Linear`, `Conv` or `Embed`; any other module (e.g. a dense
        `nnx.Linear`) has no groups.
    """
    if not is_supported(layer):
        return []
    return layer.layout.rank_groups()


def fixed_prior_cores(layer: Any) -> tuple[int, ...]:
    """Indices of cores with the fixed N(0, core_std^2) prior (the Tucker core), else ()."""
    return layer.layout.fixed_cores if is_supported(layer) else ()


def _tensor_layers_with_paths(model: nnx.Module) -> list[tuple[str, tuple, nnx.Module]]:
    return named_layers(model, TensorLayer)


def tensor_layers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """(name, layer) of every tnjax Linear/Conv/Embed of `model`.

    The name is the layer's stored name (`tnjax_name`, set by `tnjax.models.LayerFactory`)
    or else its graph path joined by "/" (e.g. "layers/0").
    """
    return [(name, module) for name, _, module in _tensor_layers_with_paths(model)]
