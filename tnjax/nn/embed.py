"""Tensorized drop-in replacement for `flax.nnx.Embed`.

The (V, E) table is reshaped to a tensor whose row index is split into vocabulary modes
(v_1..v_d) (row-major, v_1 slowest; their product V' >= V, the extra rows are zero
padding that is never returned) and stored in a tensor format:

  ttm     TT-matrix cores (r_{k-1}, v_k, e_k, r_k), features E = prod(e_k)  (d feature modes)
  tt      TT cores over (v_1..v_d, e_1..e_m): (r_{k-1}, n_k, r_k)             (default m=1: E)
  cp      factors (v_k, R) and (e_j, R), no separate weight vector
  tucker  core (R_1..R_{d+m}) and factors (v_k, R_k), (e_j, R_{d+j})

A lookup never materialises the table: each index is split into its digits (i_1..i_d)
by integer div/mod, only the core slices `core_k[:, i_k]` (or factor rows) are gathered,
and the gathered slices are contracted batched over the lookups (mode Z) in one
`tnjax.ops.contract` call, e.g. for a 3-mode TT-matrix

  out[Z, e1, e2, e3] = G1[a, Z, e1, b] G2[b, Z, e2, c] G3[c, Z, e3, d]   (a = d = 1)

so a lookup costs O(n r^2 E) and gradients touch only the gathered slices. `attend`
contracts the query with the cores (the planner decides whether to reconstruct first).
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tnjax import formats
from tnjax.nn._common import (
    DEFAULT_NUM_MODES,
    Core,
    dense_init_std,
    fit_ranks,
    resolve_modes,
    uniform_ranks,
)
from tnjax.ops import contract, contract_path

__all__ = ["Embed", "EmbedLayout", "embed_layout", "EMBED_FORMATS"]

EMBED_FORMATS = ("cp", "tucker", "tt", "ttm")
_BATCH = "Z"  # the lookup (batch) mode in every spec
_LETTERS = "".join(c for c in string.ascii_letters if c != _BATCH)
# Initialisers other than the default are sampled on at most this many entries.
_INIT_SAMPLE = 2**22


# --------------------------------------------------------------------------- format algebra
# Pure Python on static sizes: core shapes, rank bounds and contraction specs.


def _num_ranks(fmt: str, d: int, m: int) -> int:
    return {"ttm": d - 1, "tt": d + m - 1, "cp": 1, "tucker": d + m}[fmt]


def _core_shapes(
    fmt: str, vocab: tuple[int, ...], feats: tuple[int, ...], ranks: tuple[int, ...]
) -> list[tuple[int, ...]]:
    modes = vocab + feats
    if fmt == "ttm":
        r = (1,) + ranks + (1,)
        return [(r[k], vocab[k], feats[k], r[k + 1]) for k in range(len(vocab))]
    if fmt == "tt":
        r = (1,) + ranks + (1,)
        return [(r[k], n, r[k + 1]) for k, n in enumerate(modes)]
    if fmt == "cp":
        return [(n, ranks[0]) for n in modes]
    return [tuple(ranks)] + [(n, r) for n, r in zip(modes, ranks, strict=True)]  # tucker


def _max_ranks(fmt: str, vocab: tuple[int, ...], feats: tuple[int, ...]) -> tuple[int, ...]:
    modes = vocab + feats
    total = math.prod(modes)
    if fmt == "ttm":
        pairs = [v * e for v, e in zip(vocab, feats, strict=True)]
        return tuple(
            min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)
        )
    if fmt == "tt":
        return tuple(
            min(math.prod(modes[: k + 1]), math.prod(modes[k + 1 :])) for k in range(len(modes) - 1)
        )
    if fmt == "cp":
        return (max(1, total // max(modes)),)
    return tuple(min(n, total // n) for n in modes)  # tucker


def _num_params(fmt: str, vocab, feats, ranks) -> int:
    return sum(math.prod(s) for s in _core_shapes(fmt, vocab, feats, ranks))


def _operand_terms(fmt: str, d: int, m: int) -> tuple[list[str], str, str]:
    """Core terms of the full tensor, and the letters of the vocab and feature modes."""
    letters = iter(_LETTERS)
    vocab = "".join(next(letters) for _ in range(d))
    feats = "".join(next(letters) for _ in range(m))
    modes = vocab + feats
    rk = "".join(next(letters) for _ in range(d + m + 1))
    if fmt == "ttm":
        terms = [f"{rk[k]}{vocab[k]}{feats[k]}{rk[k + 1]}" for k in range(d)]
    elif fmt == "tt":
        terms = [f"{rk[k]}{n}{rk[k + 1]}" for k, n in enumerate(modes)]
    elif fmt == "cp":
        terms = [f"{n}{rk[0]}" for n in modes]
    else:  # tucker
        terms = [rk[: d + m]] + [f"{n}{rk[k]}" for k, n in enumerate(modes)]
    return terms, vocab, feats


def _specs(fmt: str, d: int, m: int) -> tuple[str, str, str]:
    """(lookup, attend, table) specs.

    lookup: gathered slices (vocab mode replaced by the lookup mode Z) and the feature
      cores -> (Z, e_1..e_m).
    attend: query (Z, e_1..e_m) and the cores -> (Z, v_1..v_d).
    table: the cores -> (v_1..v_d, e_1..e_m).
    """
    terms, vocab, feats = _operand_terms(fmt, d, m)
    lookup_terms = list(terms)
    for p, v in zip(_vocab_positions(fmt, d), vocab, strict=True):
        lookup_terms[p] = terms[p].replace(v, _BATCH)
    lookup = ",".join(lookup_terms) + f"->{_BATCH}{feats}"
    attend = f"{_BATCH}{feats}," + ",".join(terms) + f"->{_BATCH}{vocab}"
    table = ",".join(terms) + f"->{vocab}{feats}"
    return lookup, attend, table


def _vocab_positions(fmt: str, d: int) -> list[int]:
    """Positions in the core list of the cores/factors that carry vocab mode k."""
    return [k + 1 for k in range(d)] if fmt == "tucker" else list(range(d))


def _vocab_axis(fmt: str) -> int:
    """Axis of the vocab mode in a vocab core/factor."""
    return 1 if fmt in ("ttm", "tt") else 0


def _random_cores(fmt, key, vocab, feats, ranks, std, dtype) -> list[jax.Array]:
    modes = vocab + feats
    if fmt == "ttm":
        t = formats.TTMatrix.random(key, vocab, feats, (1,) + ranks + (1,), std=std, dtype=dtype)
        return list(t.cores)
    if fmt == "tt":
        return list(formats.TT.random(key, modes, (1,) + ranks + (1,), std=std, dtype=dtype).cores)
    if fmt == "cp":
        return _fold_cp_weights(formats.CP.random(key, modes, ranks[0], std=std, dtype=dtype))
    t = formats.Tucker.random(key, modes, ranks, std=std, dtype=dtype)
    return [t.core, *t.factors]


def _fold_cp_weights(cp) -> list[jax.Array]:
    # Into the last (feature) factor: vocab factor rows then stay on one scale.
    factors = list(cp.factors)
    factors[-1] = factors[-1] * cp.weights[None, :]
    return factors


def _decompose(fmt, table, vocab, feats, ranks, key) -> list[jax.Array]:
    """Decomposes the padded (V', E') table into cores of `_core_shapes` (ranks may clip)."""
    tensor = table.reshape(vocab + feats)
    if fmt == "ttm":
        t = formats.TTMatrix.from_dense(table, vocab, feats, rank=(1,) + ranks + (1,), key=key)
        return list(t.cores)
    if fmt == "tt":
        return list(formats.TT.from_dense(tensor, rank=(1,) + ranks + (1,), key=key).cores)
    if fmt == "cp":
        return _fold_cp_weights(formats.CP.from_dense(tensor, rank=ranks[0], key=key))
    t = formats.Tucker.from_dense(tensor, rank=ranks, key=key)
    return [t.core, *t.factors]


def _ranks_of_cores(fmt: str, cores: Sequence[jax.Array]) -> tuple[int, ...]:
    if fmt in ("ttm", "tt"):
        return tuple(int(c.shape[-1]) for c in cores[:-1])
    if fmt == "cp":
        return (int(cores[0].shape[1]),)
    return tuple(int(n) for n in cores[0].shape)


@dataclasses.dataclass(frozen=True)
class EmbedLayout:
    """Static structure of a tensorized Embed layer (pure Python, no arrays).

    Attributes:
      format: "cp", "tucker", "tt" or "ttm".
      vocab_modes: (v_1..v_d), row-major; their product `vocab_padded` >= num_embeddings.
      feature_modes: (e_1..e_m) (m = d for ttm); product `features_padded` >= features.
      vocab_padded, features_padded: the padded table is (vocab_padded, features_padded).
      ranks: one rank per bond (ttm: d-1, tt: d+m-1, cp: 1, tucker: d+m).
      max_ranks: the largest rank each bond allows with these modes.
      core_shapes: shapes of the stored cores, in order (tucker: core first).
      lookup_spec, attend_spec, table_spec: the `contract` specs (see `_specs`).
    """

    format: str
    vocab_modes: tuple[int, ...]
    feature_modes: tuple[int, ...]
    vocab_padded: int
    features_padded: int
    ranks: tuple[int, ...]
    max_ranks: tuple[int, ...]
    core_shapes: tuple[tuple[int, ...], ...]
    lookup_spec: str
    attend_spec: str
    table_spec: str

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.core_shapes)


def _resolve_vocab(num_embeddings: int, vocab_modes, num_modes: int) -> tuple[tuple[int, ...], int]:
    if vocab_modes is None:
        return resolve_modes(num_embeddings, None, num_modes, "vocab_modes")
    modes = tuple(int(m) for m in vocab_modes)
    if not modes or any(m < 1 for m in modes) or math.prod(modes) < num_embeddings:
        raise ValueError(
            f"vocab_modes={modes} multiply to {math.prod(modes)} < num_embeddings="
            f"{num_embeddings}; pass modes (>= 1) whose product is at least {num_embeddings} "
            f"(larger products pad the vocabulary, e.g. (200, 220, 250) for 10,131,227 rows) "
            "or leave vocab_modes=None"
        )
    return modes, math.prod(modes)


def embed_layout(
    num_embeddings: int,
    features: int,
    *,
    format: str,
    rank: int | Sequence[int] | None = None,
    compression: float | None = None,
    num_modes: int = DEFAULT_NUM_MODES,
    vocab_modes: Sequence[int] | None = None,
    feature_modes: Sequence[int] | None = None,
    padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> EmbedLayout:
    """Resolves modes, padding and ranks of a tensorized Embed without allocating it.

    Arguments are those of `Embed`; `padded_modes` (vocab_modes, feature_modes) re-uses
    modes resolved before (feature modes may then be padded).

    Raises:
      ValueError: unknown format, both or neither of rank/compression, modes that do not
        fit the vocabulary or the features, ranks beyond what the modes allow.
    """
    if format not in EMBED_FORMATS:
        raise ValueError(f"format={format!r} is not one of {EMBED_FORMATS}")
    if (rank is None) == (compression is None):
        raise ValueError(
            "give exactly one of rank= or compression= "
            f"(got rank={rank!r}, compression={compression!r})"
        )
    for name, v in (("num_embeddings", num_embeddings), ("features", features)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if padded_modes is not None:
        vocab, feats = (tuple(int(m) for m in ms) for ms in padded_modes)
        v_pad, e_pad = math.prod(vocab), math.prod(feats)
    else:
        if vocab_modes is not None:
            d = len(vocab_modes)
        elif format == "ttm" and feature_modes is not None:
            d = len(feature_modes)
        else:
            d = num_modes
        vocab, v_pad = _resolve_vocab(num_embeddings, vocab_modes, d)
        if format == "ttm":
            feats, e_pad = resolve_modes(features, feature_modes, len(vocab), "feature_modes")
        elif feature_modes is None:
            feats, e_pad = (features,), features
        else:
            feats, e_pad = resolve_modes(features, feature_modes, 1, "feature_modes")
    if format == "ttm" and len(vocab) != len(feats):
        raise ValueError(
            f"format='ttm' pairs vocab and feature modes: vocab_modes {vocab} and "
            f"feature_modes {feats} need the same number of modes (pad with 1s)"
        )
    if v_pad < num_embeddings or e_pad < features:
        raise ValueError(
            f"modes {vocab} x {feats} give a ({v_pad}, {e_pad}) table, smaller than "
            f"({num_embeddings}, {features})"
        )
    d, m = len(vocab), len(feats)
    n_ranks = _num_ranks(format, d, m)
    max_ranks = _max_ranks(format, vocab, feats)
    what = f"Embed({num_embeddings}, {features}, format={format!r})"
    if compression is not None:
        if not 0 < compression <= 1:
            raise ValueError(f"compression={compression} must be in (0, 1]")
        if n_ranks == 0:
            ranks: tuple[int, ...] = ()
        else:
            ranks = fit_ranks(
                lambda r: _num_params(format, vocab, feats, r),
                max_ranks,
                compression * num_embeddings * features,
                what=what,
            )
    else:
        ranks = uniform_ranks(rank, n_ranks, f"{what} rank")
        if isinstance(rank, (int, np.integer)):  # an int is clipped per bond, as in Linear
            too_big = n_ranks > 0 and rank > max(max_ranks)
            ranks = tuple(min(r, mx) for r, mx in zip(ranks, max_ranks, strict=True))
        else:
            too_big = any(r > mx for r, mx in zip(ranks, max_ranks, strict=True))
        if too_big:
            raise ValueError(
                f"{what}: rank {rank} exceeds what modes {vocab} x {feats} allow; the maximum "
                f"per bond is {max_ranks} (largest {max(max_ranks)}); lower the rank"
            )
    lookup, attend, table = _specs(format, d, m)
    return EmbedLayout(
        format=format,
        vocab_modes=vocab,
        feature_modes=feats,
        vocab_padded=v_pad,
        features_padded=e_pad,
        ranks=tuple(ranks),
        max_ranks=max_ranks,
        core_shapes=tuple(tuple(s) for s in _core_shapes(format, vocab, feats, tuple(ranks))),
        lookup_spec=lookup,
        attend_spec=attend,
        table_spec=table,
    )


def _init_std(embedding_init: Callable | None, num_embeddings: int, features: int, key) -> float:
    """Std of the (V, E) table `embedding_init` would draw, without drawing a huge table.

    Flax's default for `nnx.Embed` is `variance_scaling(1.0, "fan_in", "normal", out_axis=0)`,
    whose fan-in for a (V, E) table is E: std 1/sqrt(E). Other initialisers are sampled on
    at most 2**22 entries: (rows, E) with rows <= V, which keeps that fan-in.
    """
    if embedding_init is None:
        return 1.0 / math.sqrt(features)
    rows = min(num_embeddings, max(1, _INIT_SAMPLE // features))
    return dense_init_std(embedding_init, (rows, features), features, key)


# --------------------------------------------------------------------------- the layer


class Embed(nnx.Module):
    """Tensorized `nnx.Embed`: a (V, E) table stored in a tensor format, never materialised.

    `layer(indices)` maps integer indices (...) in [0, V) to (..., E) and
    `layer.attend(query)` maps (..., E) to (..., V), like `nnx.Embed`. As there, negative
    indices count from the end and indices outside [-V, V) give NaN rows; the padding
    rows of the tensorized table are never returned.

    Example (the Bayes paper's DLRM table, 270,080 parameters instead of 1.3e9)::

      emb = Embed(10_131_227, 128, format="ttm", rank=16, vocab_modes=(200, 220, 250),
                  feature_modes=(4, 4, 8), rngs=nnx.Rngs(0))
      vectors = emb(jnp.array([[3, 10_000_000]]))   # (1, 2, 128)

    Args:
      num_embeddings: V, the vocabulary size.
      features: E, the embedding size.
      format: one of "cp", "tucker", "tt", "ttm" (see the module docstring for layouts).
      rank: int (the same for every bond, clipped to what each bond allows) or a tuple
        with one entry per bond (ttm: d-1, tt: d+m-1, cp: 1, tucker: d+m).
      compression: instead of `rank`, the fraction of the dense table's parameters
        (V*E) to keep; ranks are fitted to it (see `tnjax.nn._common.fit_ranks`).
      num_modes: d, the number of vocab modes when `vocab_modes` is None.
      vocab_modes: (v_1..v_d) with product >= V (a larger product pads the vocabulary,
        e.g. (200, 220, 250) for V = 10,131,227); default: balanced, padded when V
        factors badly (a prime V).
      feature_modes: (e_1..e_m) with product E. ttm: m = d, default balanced; other
        formats: default (E,) (a single feature mode), more modes allowed.
      embedding_init: initialiser whose (V, E) table's standard deviation the reconstructed
        table matches (default: Flax's `nnx.Embed` default, std 1/sqrt(E)).
      dtype: computation dtype (default: that of the cores), as in `nnx.Embed`.
      param_dtype: dtype of the cores.
      optimize: contraction strategy passed to `tnjax.ops.contract` ("cost", "autotune", ...).
      rngs: `nnx.Rngs` with a `params` stream.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        num_modes: int = DEFAULT_NUM_MODES,
        vocab_modes: Sequence[int] | None = None,
        feature_modes: Sequence[int] | None = None,
        embedding_init: Callable | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        optimize: Any = "cost",
        rngs: nnx.Rngs,
        _cores: Sequence[jax.Array] | None = None,
        _padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ):
        layout = embed_layout(
            num_embeddings,
            features,
            format=format,
            rank=rank,
            compression=compression,
            num_modes=num_modes,
            vocab_modes=vocab_modes,
            feature_modes=feature_modes,
            padded_modes=_padded_modes,
        )
        self.layout = layout
        self.num_embeddings, self.features = int(num_embeddings), int(features)
        self.format, self.ranks = format, layout.ranks
        self.vocab_modes, self.feature_modes = layout.vocab_modes, layout.feature_modes
        self.vocab_padded, self.features_padded = layout.vocab_padded, layout.features_padded
        self.dtype, self.param_dtype, self.optimize = dtype, param_dtype, optimize
        if _cores is None:
            key = rngs.params()
            std = _init_std(embedding_init, num_embeddings, features, jax.random.fold_in(key, 1))
            _cores = _random_cores(
                format,
                key,
                layout.vocab_modes,
                layout.feature_modes,
                layout.ranks,
                std,
                param_dtype,
            )
        got = [tuple(c.shape) for c in _cores]
        if got != [tuple(s) for s in layout.core_shapes]:
            raise ValueError(f"cores have shapes {got}, expected {list(layout.core_shapes)}")
        self.cores = nnx.List([Core(jnp.asarray(c, param_dtype)) for c in _cores])

    # ------------------------------------------------------------------ evaluation

    def _promoted_cores(self, *extra: jax.Array) -> list[jax.Array]:
        arrays = (*extra, *(c[...] for c in self.cores))
        return list(nnx.nn.dtypes.promote_dtype(arrays, dtype=self.dtype))

    def _digits(self, flat: jax.Array) -> list[jax.Array]:
        """Row-major digits (i_1..i_d) of flat indices in [0, V'), i_1 slowest."""
        digits, stride = [], self.vocab_padded
        for v in self.vocab_modes:
            stride //= v
            digits.append((flat // stride) % v if stride > 1 else flat % v)
        return digits

    def __call__(self, indices: jax.typing.ArrayLike) -> jax.Array:
        """Looks up rows of the table without building it.

        Args:
          indices: integer array (...) with values in [-V, V) (negative from the end).

        Returns:
          (..., features) embeddings; NaN rows for out-of-range indices, as `nnx.Embed`.

        Raises:
          ValueError: if `indices` is not of an integer dtype.
        """
        with jax.named_scope("tnjax.nn.Embed"):
            indices = jnp.asarray(indices)
            if not jnp.issubdtype(indices.dtype, jnp.integer):
                raise ValueError(
                    f"Embed indices must have an integer dtype, got {indices.dtype} with shape "
                    f"{indices.shape}; cast them, e.g. indices.astype(jnp.int32)"
                )
            cores = self._promoted_cores()
            lead = indices.shape
            n = math.prod(lead)
            if n == 0:
                return jnp.zeros((*lead, self.features), cores[0].dtype)
            flat, valid = self._normalise(indices.reshape(n))
            operands = list(cores)
            axis = _vocab_axis(self.format)
            positions = _vocab_positions(self.format, len(self.vocab_modes))
            # The barrier keeps XLA from fusing the digit arithmetic into the gathers: fused,
            # XLA:CPU keeps extra copies of the gathered slices alive (12.6 MB more working
            # memory in the 4096-id TT-matrix case of scripts/bench.py, 64.1 -> 51.5 MB).
            digits = jax.lax.optimization_barrier(self._digits(flat))
            for p, digit in zip(positions, digits, strict=True):
                # Gather only the slices of the requested rows; clip: digits are in range.
                operands[p] = jnp.take(cores[p], digit, axis=axis, mode="clip")
            y = contract(self.layout.lookup_spec, *operands, optimize=self.optimize)
            y = y.reshape(n, self.features_padded)[:, : self.features]
            if valid is not None:
                y = jnp.where(valid[:, None], y, jnp.asarray(jnp.nan, y.dtype))
            return y.reshape(*lead, self.features)

    def _normalise(self, idx: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Wraps negative indices; returns int32/64 indices in [0, V) and the valid mask."""
        v = self.num_embeddings
        info = jnp.iinfo(idx.dtype)
        if info.max < v:  # a narrow dtype: every value fits in int32 and is comparable to V
            idx, info = idx.astype(jnp.int32), jnp.iinfo(jnp.int32)
        signed = info.min < 0
        valid = ((idx >= -v) & (idx < v)) if signed else (idx < v)
        if signed:
            idx = jnp.where(idx < 0, idx + v, idx)
        idx = jnp.where(valid, idx, 0)
        wide = self.vocab_padded > np.iinfo(np.int32).max
        idx = idx.astype(jnp.int64 if wide else jnp.int32)
        return idx, valid

    def attend(self, query: jax.typing.ArrayLike) -> jax.Array:
        """Inner products of queries with every embedding: query @ table.T.

        One `contract` of the query with the cores (the planner decides whether to
        reconstruct the table first); the padded vocabulary is sliced away.

        Args:
          query: (..., features).

        Returns:
          (..., num_embeddings).
        """
        with jax.named_scope("tnjax.nn.Embed.attend"):
            query = jnp.asarray(query)
            if query.ndim < 1 or query.shape[-1] != self.features:
                raise ValueError(
                    f"Embed.attend expects a query (..., {self.features}), got shape {query.shape}"
                )
            query, *cores = self._promoted_cores(query)
            lead = query.shape[:-1]
            n = math.prod(lead)
            q = query.reshape(n, self.features)
            if self.features_padded != self.features:
                q = jnp.pad(q, ((0, 0), (0, self.features_padded - self.features)))
            q = q.reshape(n, *self.feature_modes)
            y = contract(self.layout.attend_spec, q, *cores, optimize=self.optimize)
            y = y.reshape(n, self.vocab_padded)[:, : self.num_embeddings]
            return y.reshape(*lead, self.num_embeddings)

    def table(self) -> jax.Array:
        """The reconstructed (num_embeddings, features) table. Materialises it: tests only."""
        with jax.named_scope("tnjax.nn.Embed.table"):
            w = contract(self.layout.table_spec, *self._promoted_cores())
            w = w.reshape(self.vocab_padded, self.features_padded)
            return w[: self.num_embeddings, : self.features]

    @property
    def num_params(self) -> int:
        """Parameters of the cores."""
        return sum(int(np.prod(c.shape)) for c in self.cores)

    @property
    def dense_params(self) -> int:
        """V * E, the parameters of the dense `nnx.Embed`."""
        return self.num_embeddings * self.features

    def cost(self, indices_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and lookup FLOPs for indices of `indices_shape`.

        Returns:
          dict with params, dense_params, flops (of the lookup's contraction of the gathered
          slices), dense_flops (0: a dense lookup is a gather), path and ranks.
        """
        n = max(1, math.prod(tuple(indices_shape)))
        axis = _vocab_axis(self.format)
        shapes = [tuple(c.shape) for c in self.cores]
        for p in _vocab_positions(self.format, len(self.vocab_modes)):
            s = list(shapes[p])
            s[axis] = n
            shapes[p] = tuple(s)
        optimize = self.optimize if self.optimize != "autotune" else "cost"
        plan = contract_path(self.layout.lookup_spec, *shapes, optimize=optimize)
        return {
            "params": self.num_params,
            "dense_params": self.dense_params,
            "flops": plan.cost.flops,
            "dense_flops": 0,
            "path": plan.chosen,
            "ranks": self.ranks,
        }

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_embed(
        cls,
        embed_or_table: nnx.Embed | jax.typing.ArrayLike,
        *,
        format: str,
        rank: int | Sequence[int] | None = None,
        compression: float | None = None,
        num_modes: int = DEFAULT_NUM_MODES,
        vocab_modes: Sequence[int] | None = None,
        feature_modes: Sequence[int] | None = None,
        rngs: nnx.Rngs | None = None,
        **kwargs: Any,
    ) -> Embed:
        """Tensorized layer initialised by decomposing a trained table.

        The table is zero-padded to (prod vocab_modes, prod feature_modes), reshaped to
        (v_1..v_d, e_1..e_m) and decomposed: TTM-SVD, TT-SVD, CP-ALS or HOSVD+HOOI
        (ranks the decomposition cannot realise are clipped). At full rank (the layout's
        `max_ranks`) the lookups reproduce the table. Materialises the table (it is given).

        Args:
          embed_or_table: an `nnx.Embed` or a (V, E) array.
          format, rank, compression, num_modes, vocab_modes, feature_modes: as in `Embed`.
          rngs: keys for CP-ALS and randomized SVDs (default `nnx.Rngs(0)`).
          **kwargs: other `Embed` arguments (dtype, param_dtype, optimize).
        """
        if isinstance(embed_or_table, nnx.Embed):
            table = embed_or_table.embedding[...]
            kwargs.setdefault("param_dtype", embed_or_table.param_dtype)
        else:
            table = jnp.asarray(embed_or_table)
        if table.ndim != 2:
            raise ValueError(f"expected a table (num_embeddings, features), got {table.shape}")
        rngs = rngs or nnx.Rngs(0)
        v, e = table.shape
        probe = embed_layout(
            v,
            e,
            format=format,
            rank=rank,
            compression=compression,
            num_modes=num_modes,
            vocab_modes=vocab_modes,
            feature_modes=feature_modes,
        )
        padded = jnp.pad(table, ((0, probe.vocab_padded - v), (0, probe.features_padded - e)))
        cores = _decompose(
            format, padded, probe.vocab_modes, probe.feature_modes, probe.ranks, rngs.params()
        )
        return cls(
            v,
            e,
            format=format,
            rank=_ranks_of_cores(format, cores),
            rngs=rngs,
            _cores=cores,
            _padded_modes=(probe.vocab_modes, probe.feature_modes),
            **kwargs,
        )
