"""A small DLRM (Naumov et al. 2019) with tensorizable embedding tables and MLPs."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tnjax.models.factory import LayerFactory

__all__ = ["DLRM"]


class DLRM(nnx.Module):
    """Deep learning recommendation model with dot interactions, for click prediction.

    bottom MLP (relu after every layer) maps the F dense features to z_0 (B, D); table t
    maps categorical feature t to z_{t+1} (B, D); the interaction is the T(T+1)/2 pairwise
    dot products <z_i, z_j>, i < j, of the T + 1 vectors, concatenated with z_0; the top
    MLP (relu between layers, none after the last) maps that to one logit.

    Layer names: "bottom.fc{i}" (i = 1..len(bottom)), "emb{t}" (t = 0..T-1, the column of
    `sparse`), "top.fc{i}" (i = 1..len(top)); only the last top layer is dense by default.
    To tensorize only the tables, use `LayerFactory(overrides={"emb*": {...}})`, or give the
    default an "embed_format" and leave the linears dense with "linear_format": "dense".

    Args:
      num_dense: F, the number of dense features.
      vocab_sizes: (V_0..V_{T-1}), the vocabulary size of each categorical feature.
      embed_dim: D, the embedding size; `bottom[-1]` must equal it.
      bottom: output sizes of the bottom MLP layers.
      top: output sizes of the top MLP layers; the last must be 1.
      factory: builds the named layers; None means all dense.
      rngs: `nnx.Rngs` with a `params` stream.

    Call: dense (B, F) float, sparse (B, T) int with sparse[:, t] in [0, V_t)
    -> logits (B,) (apply `jax.nn.sigmoid` for click probabilities).
    """

    def __init__(
        self,
        num_dense: int,
        vocab_sizes: Sequence[int],
        *,
        embed_dim: int = 16,
        bottom: Sequence[int] = (64, 16),
        top: Sequence[int] = (64, 32, 1),
        factory: LayerFactory | None = None,
        rngs: nnx.Rngs,
    ):
        vocab_sizes, bottom, top = (tuple(int(n) for n in s) for s in (vocab_sizes, bottom, top))
        if not bottom or bottom[-1] != embed_dim:
            raise ValueError(
                f"the bottom MLP must end in embed_dim={embed_dim} features (its output is "
                f"dotted with the embeddings), got bottom={bottom}"
            )
        if not top or top[-1] != 1:
            raise ValueError(f"the top MLP must end in 1 feature (the logit), got top={top}")
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes must be positive sizes, got {vocab_sizes}")
        factory = factory if factory is not None else LayerFactory()
        self.num_dense, self.vocab_sizes, self.embed_dim = num_dense, vocab_sizes, embed_dim
        sizes = (num_dense,) + bottom
        self.bottom = nnx.List(
            [
                factory.linear(f"bottom.fc{i + 1}", sizes[i], sizes[i + 1], rngs=rngs)
                for i in range(len(bottom))
            ]
        )
        self.embeddings = nnx.List(
            [factory.embed(f"emb{t}", v, embed_dim, rngs=rngs) for t, v in enumerate(vocab_sizes)]
        )
        t = len(vocab_sizes)
        self.rows, self.cols = (tuple(int(i) for i in a) for a in np.triu_indices(t + 1, k=1))
        sizes = (embed_dim + len(self.rows),) + top
        self.top = nnx.List(
            [
                factory.linear(
                    f"top.fc{i + 1}",
                    sizes[i],
                    sizes[i + 1],
                    dense_by_default=i == len(top) - 1,
                    rngs=rngs,
                )
                for i in range(len(top))
            ]
        )
        factory.check_overrides_used()

    def __call__(self, dense: jax.Array, sparse: jax.Array) -> jax.Array:
        """Logits (B,) of dense features (B, F) and categorical indices (B, T)."""
        with jax.named_scope("tnjax.models.DLRM"):
            t = len(self.vocab_sizes)
            if dense.ndim != 2 or dense.shape[1] != self.num_dense:
                raise ValueError(
                    f"DLRM expects dense (B, {self.num_dense}), got shape {dense.shape}"
                )
            if sparse.shape != (dense.shape[0], t):
                raise ValueError(
                    f"DLRM expects sparse (B, T) = ({dense.shape[0]}, {t}) integer indices, got "
                    f"shape {sparse.shape}"
                )
            x = dense
            for layer in self.bottom:
                x = jax.nn.relu(layer(x))
            z_BxNxD = jnp.stack(
                [x] + [emb(sparse[:, i]) for i, emb in enumerate(self.embeddings)], 1
            )
            dots_BxNxN = jnp.einsum("bnd,bmd->bnm", z_BxNxD, z_BxNxD)
            pairs = dots_BxNxN[:, jnp.array(self.rows), jnp.array(self.cols)]
            x = jnp.concatenate([x, pairs], axis=-1)
            for i, layer in enumerate(self.top):
                x = layer(x)
                if i < len(self.top) - 1:
                    x = jax.nn.relu(x)
            return x[:, 0]
