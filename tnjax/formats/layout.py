"""The layout of a tensorized weight: one static description from which everything follows.

A `Layout` names every axis of a tensorized kernel once: the dense kernel's axes (spatial
modes, input modes, output modes), the bonds between cores (ranks, and TT's open size-1
ends) and, for every core, which of those axes it holds. For a TT-matrix Linear
1024 -> 1024 with modes (4,4,8,8) x (4,4,8,8) and ranks (8,8,8):

    inputs  = in0:4 in1:4 in2:8 in3:8          outputs = out0:4 out1:4 out2:8 out3:8
    bonds   = r1:8 r2:8 r3:8   (open: r0:1, r4:1)
    cores   = (r0, in0, out0, r1), (r1, in1, out1, r2), (r2, in2, out2, r3), (r3, in3, out3, r4)

Everything else is derived here, in one place, for every layer kind and format: core shapes,
parameter counts, contraction terms, the largest rank of each bond, rank fitting to a
parameter budget, random initialisation, decomposition of a dense kernel, reconstruction, and
the rank groups of the Bayesian code. What a format family contributes (its cores over a
tensor with given modes, its bounds, how its `random`/`from_dense` take the ranks and give the
cores) lives in the family's own module (`cp`, `tucker`, `tt`, `tr`: `weight_structure`,
`weight_rank`, `weight_cores`, and CP's own `weight_from_dense`);
which tensor each layer kind decomposes in each format is in `tnjax.formats.weights`.

Layouts are frozen, hashable and hold no arrays: safe as static data under `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import string
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tnjax.formats import _common, cp, tr, tt, tucker
from tnjax.formats import modes as modes_lib
from tnjax.ops import contract

__all__ = [
    "Layout",
    "RankGroup",
    "FAMILIES",
    "DEFAULT_NUM_MODES",
    "BATCH",
    "resolve_modes",
    "resolve_ranks",
    "fit_ranks",
    "uniform_ranks",
    "pad_cores",
    "dense_init_std",
]

# The format families and the modules that describe them.
FAMILIES = {"cp": cp, "tucker": tucker, "tt": tt, "tr": tr}
DEFAULT_NUM_MODES = 3
BATCH = "Z"  # the batch (or lookup) letter of every spec a layout writes
_LETTERS = "".join(c for c in string.ascii_letters if c != BATCH)
# A factorisation whose largest mode exceeds this multiple of the balanced size n**(1/d)
# is replaced by a padded, balanced one (e.g. a prime vocabulary size).
_MAX_IMBALANCE = 4.0
# fit_ranks searches rank grids with at most this many points exhaustively when its local
# search misses the budget.
_MAX_GRID = 2**14
# Initialisers other than the default are sampled on at most this many entries.
_INIT_SAMPLE = 2**22

Axis = _common.Axis


@dataclasses.dataclass(frozen=True)
class RankGroup:
    """One rank-controlling vector lambda (size R) and the core slices tied to it.

    Attributes:
      bond: index into `layout.ranks` of the rank this lambda controls.
      size: R, the length of lambda (= layout.ranks[bond]).
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


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static structure of one tensorized weight (pure Python, hashable, no arrays).

    Attributes:
      kind: "linear", "conv" or "embed" (which dense layer the weight replaces).
      format: the user's format name (e.g. "rtt").
      family: the decomposition family ("cp", "tucker", "tt", "tr"; a TT-matrix is "tt"
        over paired modes).
      sizes: (name, size) of every kernel axis and every bond.
      spatial, inputs, outputs: the kernel's axis names by role; the padded dense kernel
        is (spatial..., inputs..., outputs...) (Embed: inputs are the vocabulary modes,
        outputs the feature modes).
      in_features, out_features: the unpadded sizes of the input and output dimensions.
      tensor_modes: the modes of the tensor the family decomposes, each the kernel axes
        it merges (e.g. (in_k, out_k) for a TT-matrix).
      absorbed: tensor modes a Tucker layout keeps at full size in its core.
      bonds: the rank bonds in the order of `ranks` (the user's `rank=` order).
      family_bonds: the same bonds in the family's order (what `weight_rank` takes).
      open_bonds: size-1 boundary bonds (TT ends): stored, never ranks.
      family_cores: each core's axes as the family sees them (merged modes and bonds).
      split_stored: whether merged modes are stored split (Linear, Embed: a TT-matrix core
        is (r, I, J, r)) or as one axis (Conv: a reshaped core is (r, T_k S_k, r)).
      fixed_cores: cores carrying no rank prior of their own (the Tucker core).
      max_ranks: the largest useful size of each bond, in `bonds` order.
      decompose_options: keyword options of the family's `weight_from_dense` (e.g. CP's
        `refit_largest` for convolutions).
      groups: feature groups of a grouped convolution (`feature_group_count`). With G > 1
        the first output axis is the group axis (size G): the kernel is
        (spatial..., in_features / G, out_features) as in `nnx.Conv`, out_features = G x the
        per-group outputs, and the group axis is shared by x and y in the contraction (each
        group's outputs see only its own inputs).
    """

    kind: str
    format: str
    family: str
    sizes: tuple[tuple[str, int], ...]
    spatial: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    in_features: int
    out_features: int
    tensor_modes: tuple[Axis, ...]
    absorbed: tuple[int, ...]
    bonds: tuple[str, ...]
    family_bonds: tuple[str, ...]
    open_bonds: tuple[str, ...]
    family_cores: tuple[tuple[Axis, ...], ...]
    split_stored: bool
    fixed_cores: tuple[int, ...]
    max_ranks: tuple[int, ...]
    decompose_options: tuple[tuple[str, Any], ...] = ()
    groups: int = 1

    # ------------------------------------------------------------------ sizes and shapes

    @functools.cached_property
    def _size(self) -> dict[str, int]:
        return dict(self.sizes)

    def size(self, names: str | Sequence[str]) -> int:
        """Size of an axis or bond, or the product over several names."""
        if isinstance(names, str):
            return self._size[names]
        return math.prod(self._size[n] for n in names)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(self._size[b] for b in self.bonds)

    @property
    def in_modes(self) -> tuple[int, ...]:
        return tuple(self._size[n] for n in self.inputs)

    @property
    def out_modes(self) -> tuple[int, ...]:
        return tuple(self._size[n] for n in self.outputs)

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self._size[n] for n in self.spatial)

    @property
    def in_padded(self) -> int:
        return self.size(self.inputs)

    @property
    def out_padded(self) -> int:
        return self.size(self.outputs)

    # Embed's names for the same sizes.
    vocab_modes = in_modes
    feature_modes = out_modes
    vocab_padded = in_padded
    features_padded = out_padded

    @property
    def group_axes(self) -> tuple[str, ...]:
        """The group axis of a grouped convolution ((), without groups)."""
        return self.outputs[:1] if self.groups > 1 else ()

    @property
    def kernel_in_features(self) -> int:
        """The kernel's input size: in_features, or in_features / groups when grouped."""
        return self.in_features // self.groups

    @property
    def x_modes(self) -> tuple[int, ...]:
        """The input's feature axes in the contraction: (groups,) + in_modes when grouped."""
        return tuple(self._size[n] for n in self.group_axes) + self.in_modes

    @property
    def kernel_axes(self) -> tuple[str, ...]:
        """The padded kernel's axes: spatial, then input, then output modes."""
        return self.spatial + self.inputs + self.outputs

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """The dense weight this replaces: (in, out), (kh, kw, in, out) or (V, E)."""
        return self.kernel_size + (self.kernel_in_features, self.out_features)

    @property
    def dense_params(self) -> int:
        return math.prod(self.dense_shape)

    @property
    def fan_in(self) -> int:
        """Fan-in of the dense initialiser: the features for Embed, else kernel * inputs."""
        if self.kind == "embed":
            return self.out_features
        return math.prod(self.kernel_size) * self.kernel_in_features

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        return tuple(self.size(m) for m in self.tensor_modes)

    @property
    def core_axes(self) -> tuple[tuple[Axis, ...], ...]:
        """Each stored core's axes (a merged mode stays one axis unless `split_stored`)."""
        if not self.split_stored:
            return self.family_cores
        return tuple(tuple((n,) for ax in core for n in ax) for core in self.family_cores)

    @property
    def core_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(self.size(ax) for ax in core) for core in self.core_axes)

    @property
    def operand_axes(self) -> tuple[tuple[str, ...], ...]:
        """Each core's axis names as a contraction operand: merged modes split (open bonds
        stay, as size-1 axes, so the spec applies to the stored cores reshaped)."""
        return tuple(tuple(n for ax in core for n in ax) for core in self.family_cores)

    @property
    def operand_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(self._size[n] for n in axes) for axes in self.operand_axes)

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.core_shapes)

    # ------------------------------------------------------------------ contraction terms

    @functools.cached_property
    def letters(self) -> dict[str, str]:
        """An einsum letter for every axis and bond name (`BATCH` is never used)."""
        names = [n for n, _ in self.sizes]
        if len(names) > len(_LETTERS):
            raise ValueError(
                f"{self.format} layout has {len(names)} axes and bonds; at most "
                f"{len(_LETTERS)} fit in one contraction (use fewer modes)"
            )
        return dict(zip(names, _LETTERS, strict=False))

    def term(self, names: Sequence[str], replace: dict[str, str] | None = None) -> str:
        """The einsum term of `names` (each replaced by `replace[name]` where given)."""
        replace = replace or {}
        return "".join(replace.get(n, self.letters.get(n, n)) for n in names)

    def core_terms(self, replace: dict[str, str] | None = None) -> tuple[str, ...]:
        return tuple(self.term(axes, replace) for axes in self.operand_axes)

    @property
    def spec(self) -> str:
        """The forward `contract` spec: x (Z, spatial..., inputs...) and the operands ->
        (Z, spatial..., outputs...); spatial modes are convolved."""
        spatial = self.term(self.spatial)
        x = BATCH + spatial + self.term(self.group_axes + self.inputs)
        y = BATCH + spatial + self.term(self.outputs)
        conv = f"|{spatial}" if spatial else ""
        return f"{x},{','.join(self.core_terms())}->{y}{conv}"

    @property
    def kernel_spec(self) -> str:
        """The spec reconstructing the padded kernel (spatial..., inputs..., outputs...)."""
        return f"{','.join(self.core_terms())}->{self.term(self.kernel_axes)}"

    # ------------------------------------------------------------------ ranks

    def with_ranks(self, ranks: Sequence[int]) -> Layout:
        """The same layout with other bond sizes (`ranks` in `bonds` order)."""
        ranks = tuple(int(r) for r in ranks)
        if len(ranks) != len(self.bonds):
            raise ValueError(
                f"{self.format} layout has {len(self.bonds)} ranks, got {len(ranks)}: {ranks}"
            )
        new = dict(self.sizes)
        new.update(zip(self.bonds, ranks, strict=True))
        return dataclasses.replace(self, sizes=tuple(new.items()))

    def count_params(self, ranks: Sequence[int]) -> int:
        """Parameters at other ranks (no new layout built; for budget searches)."""
        size = dict(self.sizes)
        size.update(zip(self.bonds, ranks, strict=True))
        return sum(
            math.prod(math.prod(size[n] for n in ax) for ax in core) for core in self.family_cores
        )

    def ranks_of(self, cores: Sequence[Any]) -> tuple[int, ...]:
        """The ranks that stored cores (or arrays shaped like them) carry."""
        where = {}
        for ci, core in enumerate(self.core_axes):
            for ai, ax in enumerate(core):
                if len(ax) == 1 and ax[0] in self.bonds:
                    where.setdefault(ax[0], (ci, ai))
        return tuple(int(cores[where[b][0]].shape[where[b][1]]) for b in self.bonds)

    def check_cores(self, cores: Sequence[Any]) -> None:
        got = [tuple(int(n) for n in c.shape) for c in cores]
        if got != [tuple(s) for s in self.core_shapes]:
            raise ValueError(
                f"{self.format} cores have shapes {got}, expected {list(self.core_shapes)} "
                f"(ranks {self.ranks})"
            )

    def rank_groups(self) -> list[RankGroup]:
        """For every rank (in `ranks` order), the (core, axis) pairs its index slices.

        A CP rank touches every factor; a TT or TR bond both adjacent cores (the ring's
        closing bond the last and the first); a Tucker rank its factor, and the Tucker core
        as `prune_only` (the core has a fixed prior, not a lambda one).
        """
        groups = []
        for b, bond in enumerate(self.bonds):
            slices, prune_only = [], []
            for ci, core in enumerate(self.core_axes):
                for ai, ax in enumerate(core):
                    if ax == (bond,):
                        (prune_only if ci in self.fixed_cores else slices).append((ci, ai))
            groups.append(RankGroup(b, self._size[bond], tuple(slices), tuple(prune_only)))
        return groups

    # ------------------------------------------------------------------ arrays

    def _family_ranks(self) -> tuple[int, ...]:
        return tuple(self._size[b] for b in self.family_bonds)

    def _stored(self, family_cores: Sequence[jax.Array]) -> list[jax.Array]:
        """Family cores (merged modes; bonds possibly clipped) -> stored cores."""
        out = []
        for core, axes, stored in zip(family_cores, self.family_cores, self.core_axes, strict=True):
            bond_size = {
                ax[0]: int(core.shape[i])
                for i, ax in enumerate(axes)
                if ax[0] in self.bonds or ax[0] in self.open_bonds
            }
            shape = tuple(
                bond_size.get(ax[0], 0) if ax[0] in bond_size else self.size(ax) for ax in stored
            )
            out.append(core.reshape(shape))
        return out

    def random(
        self, key: jax.Array, std: float | None = None, dtype: Any = jnp.float32
    ) -> list[jax.Array]:
        """Random cores whose reconstructed kernel has entries of standard deviation `std`."""
        family = FAMILIES[self.family]
        shape, ranks = self.tensor_shape, self._family_ranks()
        rank = family.weight_rank(shape, ranks, self.absorbed)
        x = family.random(key, shape, rank, std=std, dtype=dtype)
        return self._stored(family.weight_cores(x, self.absorbed))

    def kernel_to_tensor(self, kernel: jax.Array) -> jax.Array:
        """Dense kernel (`dense_shape`) -> the tensor the family decomposes (zero-padded)."""
        pads = [(0, 0)] * len(self.spatial) + [
            (0, self.in_padded - self.kernel_in_features),
            (0, self.out_padded - self.out_features),
        ]
        split = jnp.pad(kernel, pads).reshape(tuple(self.size(n) for n in self.kernel_axes))
        order = [self.kernel_axes.index(n) for mode in self.tensor_modes for n in mode]
        return jnp.transpose(split, order).reshape(self.tensor_shape)

    def from_dense(
        self, kernel: jax.typing.ArrayLike, key: jax.Array, grow_key: jax.Array | None = None
    ) -> list[jax.Array]:
        """Cores of this layout decomposing a dense kernel (`dense_shape`).

        The kernel is zero-padded, reshaped to the family's tensor and decomposed (CP-ALS,
        HOSVD+HOOI, TT-SVD or TR-SVD, see the family's `weight_from_dense`). Where the
        decomposition stops short of a rank (the tensor's unfoldings allow less), the cores
        are grown back to this layout's shapes with small noise (`pad_cores`), so the layer
        keeps the size its budget asked for. At `max_ranks` the kernel is reproduced.

        Args:
          kernel: the dense weight, shape `dense_shape`.
          key: PRNG key of the decomposition (CP-ALS initialisation, randomized SVDs).
          grow_key: key of the growth noise (default: derived from `key`).
        """
        kernel = jnp.asarray(kernel)
        if tuple(kernel.shape) != self.dense_shape:
            raise ValueError(
                f"a {self.kind} {self.format} layout decomposes a kernel of shape "
                f"{self.dense_shape}, got {tuple(kernel.shape)}"
            )
        tensor = self.kernel_to_tensor(kernel)
        family = FAMILIES[self.family]
        ranks = self._family_ranks()
        if hasattr(family, "weight_from_dense"):  # a family's own algorithm (CP's refit)
            options = dict(self.decompose_options)
            cores = family.weight_from_dense(tensor, ranks, key, self.absorbed, **options)
        else:
            rank = family.weight_rank(tensor.shape, ranks, self.absorbed)
            x = family.from_dense(tensor, rank=rank, key=key)
            cores = family.weight_cores(x, self.absorbed)
        cores = self._stored(cores)
        if grow_key is None:
            grow_key = jax.random.fold_in(key, 1)
        grown = pad_cores(cores, self.core_shapes, grow_key)
        if grown is None:
            raise RuntimeError(
                f"internal: {self.format} decomposition gave cores "
                f"{[c.shape for c in cores]} that do not fit {self.core_shapes}"
            )
        return grown

    def to_dense(self, cores: Sequence[jax.Array]) -> jax.Array:
        """The reconstructed dense kernel (`dense_shape`); materialises it."""
        operands = [c.reshape(s) for c, s in zip(cores, self.operand_shapes, strict=True)]
        w = contract(self.kernel_spec, *operands)
        w = w.reshape(self.kernel_size + (self.in_padded, self.out_padded))
        return w[..., : self.kernel_in_features, : self.out_features]


# --------------------------------------------------------------------------- building helpers


def resolve_modes(
    features: int, modes: Sequence[int] | None, num_modes: int, name: str
) -> tuple[tuple[int, ...], int]:
    """Chooses the mode sizes of a feature dimension.

    Args:
      features: size of the dimension (e.g. `in_features`).
      modes: explicit modes, whose product must equal `features`; or None.
      num_modes: number of modes when `modes` is None.
      name: argument name for error messages (e.g. "in_modes").

    Returns:
      (modes, padded_size): the modes and their product, which exceeds `features` only
      when no balanced exact factorisation exists (the layer pads with zeros and slices,
      invisibly to the caller).
    """
    if features < 1:
        raise ValueError(f"{name}: the feature size must be >= 1, got {features}")
    if modes is not None:
        modes = tuple(int(m) for m in modes)
        if any(m < 1 for m in modes) or math.prod(modes) != features:
            raise ValueError(
                f"{name}={modes} multiply to {math.prod(modes)} but the feature size is "
                f"{features}; pass modes whose product is {features} (e.g. "
                f"{modes_lib.factorize(features, len(modes) or 1)}) or leave {name}=None"
            )
        return modes, features
    if num_modes < 1:
        raise ValueError(f"{name}: num_modes must be >= 1, got {num_modes}")
    exact = tuple(modes_lib.factorize(features, num_modes))
    if max(exact) <= _MAX_IMBALANCE * features ** (1.0 / num_modes):
        return exact, features
    padded = tuple(modes_lib.padded_factorize(features, num_modes))
    return padded, math.prod(padded)


def uniform_ranks(rank: int | Sequence[int], count: int, name: str) -> tuple[int, ...]:
    """Expands an int rank to `count` ranks, or checks a sequence has `count` entries."""
    if isinstance(rank, (int, np.integer)):
        ranks = (int(rank),) * count
    else:
        ranks = tuple(int(r) for r in rank)
        if len(ranks) != count:
            raise ValueError(f"{name} needs {count} ranks, got {len(ranks)}: {ranks}")
    if any(r < 1 for r in ranks):
        raise ValueError(f"{name}: ranks must be >= 1, got {ranks}")
    return ranks


def fit_ranks(
    num_params: Callable[[tuple[int, ...]], int],
    max_ranks: Sequence[int],
    budget: float,
    *,
    what: str,
    tolerance: float = 0.1,
) -> tuple[int, ...]:
    """Ranks whose parameter count is closest to `budget`.

    Ranks grow from all-ones, one position at a time round-robin (the smallest rank first),
    keeping the configuration nearest `budget` (in ratio); a local search then moves one rank
    up or down, or one up and another down, while that gets nearer. When the result is more
    than `tolerance` away a warning names the fraction actually reached.

    Args:
      num_params: parameter count of a rank tuple.
      max_ranks: largest feasible rank per position.
      budget: target parameter count.
      what: description for the warning (layer and format).
      tolerance: relative distance to the budget tolerated silently.
    """
    max_ranks = tuple(int(m) for m in max_ranks)

    def error(r: tuple[int, ...]) -> float:
        return abs(math.log(num_params(r) / budget))

    # Phase 1: balanced growth, round-robin from all-ones, until well past the budget.
    ranks = [1] * len(max_ranks)
    best = tuple(ranks)
    best_err = error(best)
    while True:
        growable = [i for i, r in enumerate(ranks) if r < max_ranks[i]]
        if not growable:
            break
        i = min(growable, key=lambda k: (ranks[k], k))
        ranks[i] += 1
        err = error(tuple(ranks))
        if err < best_err:
            best, best_err = tuple(ranks), err
        if num_params(tuple(ranks)) > budget * (1 + tolerance) * 4:
            break
    # Phase 2: local search, one rank up or down at a time, for a finer fit.
    for _ in range(64):
        neighbours = []
        n = len(best)
        moves = [(i, s) for i in range(n) for s in (1, -1)]
        moves += [(i, 1, j, -1) for i in range(n) for j in range(n) if i != j]
        for move in moves:
            r = list(best)
            for i, step in zip(move[::2], move[1::2], strict=True):
                r[i] += step
            if all(1 <= r[i] <= max_ranks[i] for i in range(n)):
                neighbours.append(tuple(r))
        if not neighbours:
            break
        cand = min(neighbours, key=error)
        if error(cand) >= best_err - 1e-12:
            break
        best, best_err = cand, error(cand)
    if abs(num_params(best) / budget - 1) > tolerance and math.prod(max_ranks) <= _MAX_GRID:
        # The local search can stall beside a feasible but unbalanced configuration (e.g.
        # Tucker-2 ranks (1, 4) of a small conv); small grids are searched exhaustively for
        # the most balanced ranks within tolerance.
        grid = itertools.product(*(range(1, m + 1) for m in max_ranks))
        within = [r for r in grid if abs(num_params(r) / budget - 1) <= tolerance]
        if within:
            best = min(within, key=lambda r: (max(r) / min(r), error(r)))
    reached = num_params(best) / budget
    if abs(reached - 1) > tolerance:
        warnings.warn(
            f"{what}: no ranks meet the parameter budget within {tolerance:.0%}; using ranks "
            f"{best} with {num_params(best)} parameters ({reached:.2f}x the budget)",
            stacklevel=4,
        )
    return best


def resolve_ranks(
    layout: Layout,
    rank: int | Sequence[int] | None,
    compression: float | None,
    *,
    what: str,
    rank_names: str,
) -> Layout:
    """`layout` at the ranks a user's `rank=` or `compression=` asks for.

    An int rank is the same for every bond, clipped per bond to `max_ranks` (as TensorLy
    does); a sequence gives one rank per bond. A compression in (0, 1] is the fraction of
    the dense weight's parameters to keep; ranks are fitted to it (`fit_ranks`).

    Raises:
      ValueError: both or neither of rank/compression, a compression outside (0, 1], the
        wrong number of ranks, or ranks beyond what the modes allow.
    """
    if (rank is None) == (compression is None):
        raise ValueError(
            "give exactly one of rank= or compression= "
            f"(got rank={rank!r}, compression={compression!r})"
        )
    max_ranks = layout.max_ranks
    n = len(max_ranks)
    if compression is not None:
        if not 0 < compression <= 1:
            raise ValueError(f"compression={compression} must be in (0, 1]")
        if n == 0:
            return layout
        ranks = fit_ranks(
            layout.count_params, max_ranks, compression * layout.dense_params, what=what
        )
        return layout.with_ranks(ranks)
    try:
        ranks = uniform_ranks(rank, n, f"{what} rank")
    except ValueError as e:
        raise ValueError(f"{e}; format {layout.format!r} takes {rank_names}") from None
    if isinstance(rank, (int, np.integer)):
        too_big = n > 0 and rank > max(max_ranks)
        ranks = tuple(min(r, m) for r, m in zip(ranks, max_ranks, strict=True))
    else:
        too_big = any(r > m for r, m in zip(ranks, max_ranks, strict=True))
    if too_big:
        raise ValueError(
            f"{what}: rank {rank} exceeds what its modes allow: the maxima of {rank_names} "
            f"are {max_ranks} (the maximum per bond; largest {max(max_ranks)}); lower the rank"
        )
    return layout.with_ranks(ranks)


def pad_cores(
    cores: Sequence[jax.Array],
    shapes: Sequence[Sequence[int]],
    key: jax.Array,
    rel_scale: float = 1e-3,
) -> list[jax.Array] | None:
    """Cores of a decomposition grown to the requested ranks, or None if they cannot be.

    Exact decompositions (TT-SVD, TR-SVD, HOSVD) stop at the ranks the tensor's unfoldings
    allow, e.g. a tensor ring's first two bonds multiply to at most I_1. To keep the layer at
    the size its budget asked for, each core is zero-padded along its rank axes to `shapes`
    and the new entries get small noise (`rel_scale` times the core's RMS), so training can
    use them; the reconstruction moves only to second order in that noise.

    Args:
      cores: the decomposition's cores.
      shapes: the requested core shapes (same order and rank; every dim >= the core's).
    """
    if len(cores) != len(shapes):
        return None
    out = []
    for core, shape, k in zip(cores, shapes, jax.random.split(key, len(cores)), strict=True):
        shape = tuple(int(s) for s in shape)
        if core.ndim != len(shape) or any(c > s for c, s in zip(core.shape, shape, strict=True)):
            return None
        if core.shape == shape:
            out.append(core)
            continue
        rms = jnp.sqrt(jnp.mean(jnp.square(core.astype(jnp.float32))))
        noise = rel_scale * rms * jax.random.normal(k, shape, jnp.float32)
        inside = tuple(slice(0, c) for c in core.shape)
        out.append(noise.at[inside].set(core.astype(jnp.float32)).astype(core.dtype))
    return out


def dense_init_std(
    kernel_init: Callable | None, shape: tuple[int, ...], fan_in: int, key: jax.Array
) -> float:
    """Standard deviation of the dense kernel that `kernel_init` would draw.

    The tensorized kernel is initialised so that its reconstruction has this standard
    deviation. With `kernel_init=None` it is Flax's default (LeCun normal: 1/sqrt(fan_in)).
    Otherwise `kernel_init` is sampled at the real shape when that has at most 2**22
    entries; for bigger kernels a slice with the same fan-in is sampled.
    """
    if kernel_init is None:
        return 1.0 / math.sqrt(fan_in)
    if math.prod(shape) > _INIT_SAMPLE:
        shape = shape[:-1] + (max(1, _INIT_SAMPLE // math.prod(shape[:-1])),)
    sample = kernel_init(key, shape, jnp.float32)
    return float(jnp.std(sample))


def init_std(layout: Layout, kernel_init: Callable | None, key: jax.Array) -> float:
    """Std of the dense weight `kernel_init` would draw for `layout` (default: Flax's).

    Embed: Flax's `nnx.Embed` default has std 1/sqrt(E); other initialisers are sampled on
    at most 2**22 entries, (rows, E) with rows <= V, which keeps that fan-in.
    """
    shape = layout.dense_shape
    if layout.kind == "embed" and kernel_init is not None:
        rows = min(layout.in_features, max(1, _INIT_SAMPLE // layout.out_features))
        shape = (rows, layout.out_features)
    return dense_init_std(kernel_init, shape, layout.fan_in, key)


def build(
    *,
    kind: str,
    format: str,
    family: str,
    spatial: Sequence[tuple[str, int]],
    inputs: Sequence[tuple[str, int]],
    outputs: Sequence[tuple[str, int]],
    in_features: int,
    out_features: int,
    tensor_modes: Sequence[Axis],
    absorbed: Sequence[int] = (),
    split_stored: bool = True,
    rank_order: Sequence[int] | None = None,
    decompose_options: dict[str, Any] | None = None,
    groups: int = 1,
) -> Layout:
    """A layout with every rank 1 (set them with `with_ranks` or `resolve_ranks`).

    Args:
      kind, format, family: see `Layout`.
      spatial, inputs, outputs: (name, size) of the kernel's axes by role.
      in_features, out_features: the unpadded sizes.
      tensor_modes: the modes of the tensor the family decomposes, as axis-name groups.
      absorbed: Tucker modes kept at full size in the core.
      split_stored: store merged modes split (True) or as one axis.
      rank_order: the family's bonds in the user's `rank=` order (indices into the
        family's `bonds`); default the family's own order.
      decompose_options: options of the family's `weight_from_dense`.
      groups: feature groups (conv); `outputs` then starts with the group axis.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown format family {family!r}; known: {tuple(FAMILIES)}")
    axes = tuple(spatial) + tuple(inputs) + tuple(outputs)
    size = dict(axes)
    modes = tuple(tuple(m) for m in tensor_modes)
    shape = tuple(math.prod(size[n] for n in m) for m in modes)
    structure = FAMILIES[family].weight_structure(modes, shape, tuple(absorbed))
    order = tuple(range(len(structure.bonds))) if rank_order is None else tuple(rank_order)
    bonds = tuple(structure.bonds[i] for i in order)
    max_of = dict(zip(structure.bonds, structure.max_ranks, strict=True))
    sizes = axes + tuple((b, 1) for b in structure.open_bonds + structure.bonds)
    return Layout(
        kind=kind,
        format=format,
        family=family,
        sizes=sizes,
        spatial=tuple(n for n, _ in spatial),
        inputs=tuple(n for n, _ in inputs),
        outputs=tuple(n for n, _ in outputs),
        in_features=int(in_features),
        out_features=int(out_features),
        tensor_modes=modes,
        absorbed=tuple(absorbed),
        bonds=bonds,
        family_bonds=structure.bonds,
        open_bonds=structure.open_bonds,
        family_cores=structure.cores,
        split_stored=split_stored,
        fixed_cores=structure.fixed_cores,
        max_ranks=tuple(max_of[b] for b in bonds),
        decompose_options=tuple(sorted((decompose_options or {}).items())),
        groups=int(groups),
    )
