"""Which core slices each rank-controlling vector lambda governs, per layer and format.

Bayesian rank determination (Hawkins, Liu & Zhang, arXiv:2010.08689) puts a zero-mean
Gaussian prior N(0, lambda_r^2) on every entry of the rank-r slice of a factor; shrinking
lambda_r to zero removes rank index r. A `RankGroup` is one vector lambda (one bond of the
layer, `layer.ranks[bond]`) and the (core, axis) pairs whose slices `core.take(r, axis)` it
governs, laid out for tnjax's own core layouts (see `tnjax.nn.linear`, `embed`, `conv`):

  CP (Linear cp/rcp, Embed cp, Conv cp/rcp): one group, shared by every factor (the
    factors' trailing rank axis), as in the paper.
  Tucker (Linear tucker/rtk, Embed tucker, Conv tucker/rtk): one group per factor (its
    rank axis). The Tucker core has a fixed N(0, core_std^2) prior instead (not a group);
    its axes are listed in `RankGroup.prune_only`, so pruning slices it too.
  TT / TT-matrix (Linear tt/ttm/rtt, Embed tt/ttm, Conv tt/rtt): one group per internal
    bond k, tying the trailing rank axis of core k AND the leading rank axis of core k+1.

The TT layout differs from the authors' code, which ties only the last bond to both of its
cores and every other bond to the trailing axis of core k alone. Here every bond is tied to
both adjacent cores: the two slices of index r are the only place bond index r enters the
contraction, so a small lambda_r shrinks both, and zeroing it prunes both slices
consistently (pruning one side alone leaves a dead, unpenalised slice on the other).
The price is that an interior core's entries sit in two groups (a penalty from each).

Tensor-ring formats (Linear tr/rtr, Conv tr/rtr) are outside the paper's model (CP, Tucker,
TT, TTM) and raise `NotImplementedError`; tying each cyclic bond to its two cores as for TT
would be the natural extension, but it is not implemented or tested here.
Dense Flax layers have no groups.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from tnjax import nn as tnn
from tnjax.models.factory import NAME_ATTR

__all__ = [
    "RankGroup",
    "rank_groups",
    "fixed_prior_cores",
    "tensor_layers",
    "is_supported",
    "SUPPORTED_FORMATS",
]

SUPPORTED_FORMATS = {
    "linear": ("cp", "rcp", "tucker", "rtk", "tt", "ttm", "rtt"),
    "embed": ("cp", "tucker", "tt", "ttm"),
    "conv": ("cp", "rcp", "tucker", "rtk", "tt", "rtt"),
}
_KIND = ((tnn.Linear, "linear"), (tnn.Embed, "embed"), (tnn.Conv, "conv"))


@dataclasses.dataclass(frozen=True)
class RankGroup:
    """One rank-controlling vector lambda (size R) and the core slices tied to it.

    Attributes:
      bond: index into `layer.ranks` of the rank this lambda controls.
      size: R, the length of lambda (= layer.ranks[bond]).
      slices: (core index, axis) pairs: `core.take(r, axis)` has prior N(0, lambda[r]^2).
      prune_only: (core index, axis) pairs sliced along with `slices` when pruning but
        carrying no lambda prior (the Tucker core, which has a fixed Gaussian prior).
    """

    bond: int
    size: int
    slices: tuple[tuple[int, int], ...]
    prune_only: tuple[tuple[int, int], ...] = ()

    @property
    def axes(self) -> tuple[tuple[int, int], ...]:
        """Every (core, axis) pair to slice when pruning this rank."""
        return self.slices + self.prune_only


def _kind(layer: Any) -> str | None:
    for cls, kind in _KIND:
        if isinstance(layer, cls):
            return kind
    return None


def is_supported(layer: Any) -> bool:
    """Whether `layer` is a tnjax Linear/Conv/Embed whose format has rank groups."""
    kind = _kind(layer)
    return kind is not None and layer.format in SUPPORTED_FORMATS[kind]


def _tt_groups(shapes: list[tuple[int, ...]]) -> list[RankGroup]:
    """Bond k ties core k's trailing rank axis and core k+1's leading one."""
    return [
        RankGroup(
            bond=k,
            size=shapes[k][-1],
            slices=((k, len(shapes[k]) - 1), (k + 1, 0)),
        )
        for k in range(len(shapes) - 1)
    ]


def _cp_group(shapes: list[tuple[int, ...]]) -> list[RankGroup]:
    return [
        RankGroup(
            bond=0, size=shapes[0][-1], slices=tuple((i, len(s) - 1) for i, s in enumerate(shapes))
        )
    ]


def _tucker_groups(
    shapes: list[tuple[int, ...]], factor_of_bond: list[int], core_axis_of_bond: list[int]
) -> list[RankGroup]:
    """Core 0 is the Tucker core; bond b governs factor `factor_of_bond[b]` (last axis)."""
    return [
        RankGroup(
            bond=b,
            size=shapes[f][-1],
            slices=((f, len(shapes[f]) - 1),),
            prune_only=((0, a),),
        )
        for b, (f, a) in enumerate(zip(factor_of_bond, core_axis_of_bond, strict=True))
    ]


def rank_groups(layer: Any) -> list[RankGroup]:
    """The rank groups of a layer (see the module docstring for the layouts).

    Args:
      layer: a `tnjax.nn.Linear`, `Conv` or `Embed`; any other module (e.g. a dense
        `nnx.Linear`) has no groups.

    Returns:
      One `RankGroup` per lambda vector, in a fixed order: CP one; Tucker one per factor in
      the order of `layer.ranks`; TT/TTM one per internal bond (`layer.ranks` order).

    Raises:
      NotImplementedError: a tensor-ring (or otherwise unmapped) format.
    """
    kind = _kind(layer)
    if kind is None:
        return []
    fmt = layer.format
    if fmt not in SUPPORTED_FORMATS[kind]:
        raise NotImplementedError(
            f"Bayesian rank groups are not defined for a {type(layer).__name__} of format "
            f"{fmt!r}; supported {kind} formats: {SUPPORTED_FORMATS[kind]} (tensor rings are "
            "outside the paper's CP/Tucker/TT/TTM model)"
        )
    shapes = [tuple(int(n) for n in c.shape) for c in layer.cores]
    ranks = tuple(layer.ranks)
    if fmt in ("cp", "rcp"):
        groups = _cp_group(shapes)
    elif fmt in ("tt", "ttm", "rtt"):
        groups = _tt_groups(shapes)
    elif kind == "conv" and fmt == "tucker":
        # core (kh, kw, R2, R1), U_s (S, R2), U_t (T, R1); ranks (R1, R2).
        groups = _tucker_groups(shapes, [2, 1], [3, 2])
    elif kind == "conv":  # rtk: core (R_1..R_M, R_0), factors f_1..f_M, f_hw; ranks (R_0, R_1..)
        m = len(ranks) - 1
        groups = _tucker_groups(shapes, [m + 1] + list(range(1, m + 1)), [m] + list(range(m)))
    else:  # Linear tucker/rtk, Embed tucker: core (R_1..R_n), factor k+1 carries R_k
        n = len(ranks)
        groups = _tucker_groups(shapes, [k + 1 for k in range(n)], list(range(n)))
    for g in groups:  # the layouts above must agree with the layer's own ranks
        if g.size != ranks[g.bond]:
            raise RuntimeError(
                f"internal: group {g} has size {g.size} but {fmt} rank {g.bond} is {ranks}"
            )
    return groups


def fixed_prior_cores(layer: Any) -> tuple[int, ...]:
    """Indices of cores with the fixed N(0, core_std^2) prior (the Tucker core), else ()."""
    if is_supported(layer) and layer.format in ("tucker", "rtk"):
        return (0,)
    return ()


def _tensor_layers_with_paths(model: nnx.Module) -> list[tuple[str, tuple, nnx.Module]]:
    out = []
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module) or not is_supported(module):
            continue
        name = getattr(module, NAME_ATTR, None)
        if name is None:
            name = "/".join(str(p) for p in path) or type(module).__name__
        out.append((name, tuple(path), module))
    names = [n for n, _, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"several tensorized layers share the name(s) {dupes}; names must be unique"
        )
    return out


def tensor_layers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """(name, layer) of every tnjax Linear/Conv/Embed of `model` with a supported format.

    The name is the layer's factory name (`tnjax_name`, set by `tnjax.models.LayerFactory`)
    or else its graph path joined by "/" (e.g. "layers/0"). Layers of unsupported formats
    (tensor rings) are skipped: they get no prior and are never pruned.
    """
    return [(name, module) for name, _, module in _tensor_layers_with_paths(model)]
