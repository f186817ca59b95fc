"""Multi-layer perceptron (e.g. the 784-512-10 MNIST MLP) with tensorizable layers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from tnjax.models.factory import LayerFactory

__all__ = ["MLP"]


class MLP(nnx.Module):
    """Flatten, then fc1..fcK with relu between (none after the last).

    Layer names "fc1".."fcK" with K = len(features) - 1; only the last layer is dense by
    default, so with `LayerFactory({"format": "ttm", "rank": 8})` the 784-512-10 network's
    fc1 is a TT-matrix layer and fc2 a dense `nnx.Linear`.

    Args:
      features: (in, hidden..., out), at least two entries; `in` must equal the product of
        the non-batch input dimensions.
      factory: builds the named layers; None means all dense.
      rngs: `nnx.Rngs` with a `params` stream.

    Call: x (B, ...) with prod(...) = features[0] -> logits (B, features[-1]).
    """

    def __init__(
        self,
        features: Sequence[int] = (784, 512, 10),
        *,
        factory: LayerFactory | None = None,
        rngs: nnx.Rngs,
    ):
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(
                f"MLP features must be (in, hidden..., out) with at least two positive sizes, "
                f"got {features}"
            )
        factory = factory if factory is not None else LayerFactory()
        self.features = features
        k = len(features) - 1
        self.layers = nnx.List(
            [
                factory.linear(
                    f"fc{i + 1}",
                    features[i],
                    features[i + 1],
                    dense_by_default=i == k - 1,
                    rngs=rngs,
                )
                for i in range(k)
            ]
        )
        factory.check_overrides_used()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, features[-1]) of x (B, ...), flattened to (B, features[0])."""
        with jax.named_scope("tnjax.models.MLP"):
            x = x.reshape(x.shape[0], -1)
            if x.shape[1] != self.features[0]:
                raise ValueError(
                    f"MLP expects inputs with {self.features[0]} features per example, got shape "
                    f"{x.shape} after flattening; set features[0] to {x.shape[1]}"
                )
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = jax.nn.relu(x)
            return x
