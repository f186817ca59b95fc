"""Tensorized drop-in replacement for `flax.nnx.Embed`.

The (V, E) table is reshaped to a tensor whose row index is split into vocabulary modes
(v_1..v_d) (row-major, v_1 slowest; their product V' >= V, the extra rows are zero
padding that is never returned) and stored in a tensor format:

  ttm     TT-matrix cores (r_{k-1}, v_k, e_k, r_k), features E = prod(e_k)  (d feature modes)
  tt      TT cores over (v_1..v_d, e_1..e_m): (r_{k-1}, n_k, r_k)             (default m=1: E)
  cp      factors (v_k, R) and (e_j, R), no separate weight vector
  tucker  core (R_1..R_{d+m}) and factors (v_k, R_k), (e_j, R_{d+j})
  tr      tensor-ring cores over (v_1..v_d, e_1..e_m): (r_{k-1}, n_k, r_k), r_0 = r_{d+m}
  rcp, rtk, rtt, rtr   CP, Tucker, TT (= ttm), TR over the pairs (v_k e_k) (m = d), the
          reshaped formats of the TNN paper

A lookup never materialises the table: each index is split into its digits (i_1..i_d)
by integer div/mod, only the core slices `core_k[:, i_k]` (or factor rows) are gathered,
and the gathered slices are contracted batched over the lookups (mode Z) in one
`tnjax.ops.contract` call (`tnjax.functional.embed`), e.g. for a 3-mode TT-matrix

  out[Z, e1, e2, e3] = G1[a, Z, e1, b] G2[b, Z, e2, c] G3[c, Z, e3, d]   (a = d = 1)

so a lookup costs O(n r^2 E) and gradients touch only the gathered slices. `attend`
contracts the query with the cores (the planner decides whether to reconstruct first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax import functional
from tnjax.formats.layout import DEFAULT_NUM_MODES, Layout
from tnjax.formats.weights import EMBED_FORMATS, embed_layout
from tnjax.nn._common import TensorLayer

__all__ = ["Embed", "EmbedLayout", "embed_layout", "EMBED_FORMATS"]

EmbedLayout = Layout  # the layout of an Embed is a `tnjax.formats.layout.Layout`


class Embed(TensorLayer):
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
      format: one of "cp", "tucker", "tt", "ttm", "tr" or the paired "rcp", "rtk",
        "rtt" (= ttm), "rtr" (see the module docstring for layouts).
      rank: int (the same for every bond, clipped to what each bond allows) or a tuple
        with one entry per bond (ttm, rtt: d-1; tt: d+m-1; cp, rcp: 1; tucker, tr: d+m;
        rtk, rtr: d).
      compression: instead of `rank`, the fraction of the dense table's parameters
        (V*E) to keep; ranks are fitted to it (see `tnjax.formats.layout.fit_ranks`).
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
      contract: the contraction function (default `tnjax.ops.contract`).
      rngs: `nnx.Rngs` with a `params` stream.
    """

    _KIND = "embed"
    _LAYOUT_ARGS = ("format", "rank", "compression", "num_modes", "vocab_modes", "feature_modes")
    _LAYOUT_FN = staticmethod(embed_layout)
    _HAS_BIAS = False

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
        contract: Callable | None = None,
        rngs: nnx.Rngs,
        _cores: Sequence[jax.Array] | None = None,
        _padded_modes: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
        _layout: Layout | None = None,
    ):
        layout = self._resolve_layout(locals(), num_embeddings, features)
        self._setup(layout, locals())

    @staticmethod
    def _layout_args(layout: Layout) -> tuple:
        return (layout.in_features, layout.out_features)

    num_embeddings = property(lambda self: self.layout.in_features)
    features = property(lambda self: self.layout.out_features)
    vocab_modes = property(lambda self: self.layout.in_modes)
    feature_modes = property(lambda self: self.layout.out_modes)
    vocab_padded = property(lambda self: self.layout.in_padded)
    features_padded = property(lambda self: self.layout.out_padded)

    def __call__(self, indices: jax.typing.ArrayLike, out_sharding: Any = None) -> jax.Array:
        """Looks up rows of the table without building it.

        Args:
          indices: integer array (...) with values in [-V, V) (negative from the end).
          out_sharding: as in `nnx.Embed`, constrains the output's sharding.

        Returns:
          (..., features) embeddings; NaN rows for out-of-range indices, as `nnx.Embed`.

        Raises:
          ValueError: if `indices` is not of an integer dtype.
        """
        with jax.named_scope("tnjax.nn.Embed"):
            _, cores = self._promoted()
            y = functional.embed(
                self.layout, cores, indices, contract=self.contract, optimize=self.optimize
            )
            return self._constrained(y, out_sharding)

    def attend(self, query: jax.typing.ArrayLike) -> jax.Array:
        """Inner products of queries with every embedding: query @ table.T.

        One contraction of the query with the cores (the planner decides whether to
        reconstruct the table first); the padded vocabulary is sliced away.

        Args:
          query: (..., features).

        Returns:
          (..., num_embeddings).
        """
        with jax.named_scope("tnjax.nn.Embed.attend"):
            (query,), cores = self._promoted(jnp.asarray(query))
            return functional.attend(
                self.layout, cores, query, contract=self.contract, optimize=self.optimize
            )

    def table(self) -> jax.Array:
        """The reconstructed (num_embeddings, features) table. Materialises it: tests only."""
        with jax.named_scope("tnjax.nn.Embed.table"):
            _, cores = self._promoted()
            return functional.to_dense(self.layout, cores)

    def cost(self, indices_shape: Sequence[int]) -> dict[str, Any]:
        """Parameters and lookup FLOPs for indices of `indices_shape`.

        Returns:
          dict with params, dense_params, flops (of the lookup's contraction of the gathered
          slices), dense_flops (0: a dense lookup is a gather), path, steps and ranks.
        """
        return functional.cost(self.layout, indices_shape, optimize=self.optimize)

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
        decompose: bool = True,
        **kwargs: Any,
    ) -> Embed:
        """Tensorized layer initialised by decomposing a trained table.

        The table is zero-padded to (prod vocab_modes, prod feature_modes), reshaped to
        (v_1..v_d, e_1..e_m) and decomposed: TTM-SVD, TT-SVD, CP-ALS, HOSVD+HOOI or TR-SVD
        (`tnjax.formats.layout.Layout.from_dense`); ranks the decomposition stops short of
        are grown back with small noise, as for Linear and Conv. At full rank (the layout's
        `max_ranks`) the lookups reproduce the table. Materialises the table (it is given).

        Args:
          embed_or_table: an `nnx.Embed` or a (V, E) array.
          format, rank, compression, num_modes, vocab_modes, feature_modes: as in `Embed`.
          rngs: keys for the decomposition (default `nnx.Rngs(0)`).
          decompose: False: random cores at Flax's default scale instead of the
            decomposition (the structure, bias and options of the trained layer).
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
        layout = cls._resolve_layout(locals(), *table.shape)
        cores = cls._initial_cores(layout, table, rngs, decompose)
        return cls.from_cores(layout, cores, **kwargs)
