"""A small Vision Transformer (Dosovitskiy et al. 2021) with tensorizable projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax.models.factory import LayerFactory
from tnjax.nn.graph import UNIT_ATTR

__all__ = ["ViT", "SelfAttention", "TransformerBlock"]


class SelfAttention(nnx.Module):
    """Multi-head self-attention with four named width x width projections.

    Layer names: "{name}.query", "{name}.key", "{name}.value", "{name}.out". Each is a
    `factory.linear`, so any of them can be a tnjax layer (TT-matrix, Tucker, ...).

    Call: x (B, N, width) -> (B, N, width).
    """

    def __init__(self, name: str, width: int, num_heads: int, *, factory, rngs: nnx.Rngs):
        if width % num_heads:
            raise ValueError(f"width={width} must be a multiple of num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.query = factory.linear(f"{name}.query", width, width, rngs=rngs)
        self.key = factory.linear(f"{name}.key", width, width, rngs=rngs)
        self.value = factory.linear(f"{name}.value", width, width, rngs=rngs)
        self.out = factory.linear(f"{name}.out", width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        heads = (b, n, self.num_heads, self.head_dim)
        q_BNHD = self.query(x).reshape(heads)
        k_BNHD = self.key(x).reshape(heads)
        v_BNHD = self.value(x).reshape(heads)
        scores_BHNN = jnp.einsum("bqhd,bkhd->bhqk", q_BNHD, k_BNHD) / jnp.sqrt(self.head_dim)
        weights_BHNN = jax.nn.softmax(scores_BHNN.astype(jnp.float32), axis=-1).astype(x.dtype)
        y_BNHD = jnp.einsum("bhqk,bkhd->bqhd", weights_BHNN, v_BNHD)
        return self.out(y_BNHD.reshape(b, n, -1))


class TransformerBlock(nnx.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU).

    Layer names: "{name}.attn.{query,key,value,out}", "{name}.mlp.fc1", "{name}.mlp.fc2".
    The block is one unit of block-wise distillation (`tnjax.compress.distillation_blocks`).

    Call: x (B, N, width) -> (B, N, width).
    """

    def __init__(
        self, name: str, width: int, num_heads: int, mlp_dim: int, *, factory, rngs: nnx.Rngs
    ):
        setattr(self, UNIT_ATTR, name)
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = SelfAttention(f"{name}.attn", width, num_heads, factory=factory, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc1 = factory.linear(f"{name}.mlp.fc1", width, mlp_dim, rngs=rngs)
        self.fc2 = factory.linear(f"{name}.mlp.fc2", mlp_dim, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class ViT(nnx.Module):
    """Vision Transformer for small images, NHWC.

    Patches of `patch_size` x `patch_size` are embedded by a strided conv ("patch_embed",
    dense by default), a learned position embedding is added, `depth` pre-norm transformer
    blocks follow, then a final LayerNorm, the mean over tokens and a linear classifier
    ("head", dense by default). On 28x28 Fashion-MNIST with patch 4 that is 49 tokens.

    Layer names: "patch_embed", "block{i}.attn.{query,key,value,out}",
    "block{i}.mlp.{fc1,fc2}" (i = 1..depth), "head". The attention and MLP projections take
    the factory's default spec, so `layers={"default": {"format": "ttm", "rank": 8}}`
    tensorizes exactly the attention and MLP weights.

    Args:
      num_classes: number of logits.
      image_size: height = width of the input images (a multiple of `patch_size`).
      in_channels: channels of the input images.
      patch_size: side of a square patch.
      width: token features (a multiple of `num_heads`).
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_dim: hidden features of each block's MLP.
      factory: builds the named layers; None means all dense.
      rngs: `nnx.Rngs` with a `params` stream.

    Call: images (B, image_size, image_size, in_channels) float -> logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        patch_size: int = 4,
        width: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_dim: int = 256,
        factory: LayerFactory | None = None,
        rngs: nnx.Rngs,
    ):
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} must be a multiple of patch_size={patch_size}"
            )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        factory = factory if factory is not None else LayerFactory()
        self.image_size, self.in_channels = image_size, in_channels
        num_tokens = (image_size // patch_size) ** 2
        self.patch_embed = factory.conv(
            "patch_embed",
            in_channels,
            width,
            patch_size,
            strides=patch_size,
            padding="VALID",
            dense_by_default=True,
            rngs=rngs,
        )
        init = nnx.initializers.normal(0.02)
        self.pos_embed = nnx.Param(init(rngs.params(), (1, num_tokens, width)))
        self.blocks = nnx.List(
            [
                TransformerBlock(
                    f"block{i + 1}", width, num_heads, mlp_dim, factory=factory, rngs=rngs
                )
                for i in range(depth)
            ]
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = factory.linear("head", width, num_classes, dense_by_default=True, rngs=rngs)
        factory.check_overrides_used()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of images x (B, H, W, in_channels)."""
        with jax.named_scope("tnjax.models.ViT"):
            expected = (self.image_size, self.image_size, self.in_channels)
            if x.ndim != 4 or x.shape[1:] != expected:
                raise ValueError(
                    f"ViT expects images (B, {', '.join(map(str, expected))}), got shape "
                    f"{x.shape}; set image_size/in_channels to match"
                )
            tokens = self.patch_embed(x)
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]) + self.pos_embed[...]
            for block in self.blocks:
                tokens = block(tokens)
            return self.head(self.norm(tokens).mean(axis=1))
