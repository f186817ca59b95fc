"""ResNets with tensorizable convolutions: CIFAR ResNet-(6n+2) and ImageNet ResNet-50.

Both use `nnx.BatchNorm` (momentum 0.9, epsilon 1e-5) after every conv; convs followed
by BN have no bias. Switch BN between batch statistics (training) and running averages
(evaluation) the NNX way: `model.train()` / `model.eval()` (they set
`use_running_average` on every BatchNorm), or `nnx.view(model, use_running_average=True)`
for an evaluation view that shares the arrays. Running statistics are `nnx.BatchStat`
variables, so a train step differentiates with respect to `nnx.Param` and carries the
BatchStat updates along (e.g. `nnx.Optimizer(model, tx, wrt=nnx.Param)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax.models.factory import LayerFactory

__all__ = ["ResNetCifar", "ResNet50", "resnet20", "resnet32", "resnet56"]

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)


def _check_images(name: str, x: jax.Array, channels: int) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"{name} expects NHWC images (B, H, W, {channels}), got shape {x.shape}")


class BasicBlock(nnx.Module):
    """3x3 conv - BN - relu - 3x3 conv - BN, plus the shortcut, then relu.

    The shortcut is the identity when the shape is kept. When it changes (stride 2 and
    more channels) it is option A of He et al. (subsample by 2, zero-pad the new channels,
    no parameters) or option B (a 1x1 conv with the stride, then BN), named
    "<prefix>.shortcut".
    """

    def __init__(
        self,
        prefix: str,
        in_features: int,
        out_features: int,
        strides: int,
        *,
        shortcut: str,
        factory: LayerFactory,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.out_features, self.strides = in_features, out_features, strides
        self.conv1 = factory.conv(
            f"{prefix}.conv1",
            in_features,
            out_features,
            3,
            strides=strides,
            use_bias=False,
            rngs=rngs,
        )
        self.bn1 = _bn(out_features, rngs)
        self.conv2 = factory.conv(
            f"{prefix}.conv2", out_features, out_features, 3, use_bias=False, rngs=rngs
        )
        self.bn2 = _bn(out_features, rngs)
        self.project = shortcut == "B" and (strides != 1 or in_features != out_features)
        if self.project:
            self.shortcut = factory.conv(
                f"{prefix}.shortcut",
                in_features,
                out_features,
                1,
                strides=strides,
                use_bias=False,
                rngs=rngs,
            )
            self.shortcut_bn = _bn(out_features, rngs)
        else:
            self.shortcut = self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in) -> (B, ceil(H/s), ceil(W/s), out)."""
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is not None:
            r = self.shortcut_bn(self.shortcut(x))
        else:
            r = x[:, :: self.strides, :: self.strides, :]
            extra = self.out_features - self.in_features
            if extra:
                r = jnp.pad(r, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return jax.nn.relu(y + r)


class ResNetCifar(nnx.Module):
    """The CIFAR ResNet of He et al. (2016), section 4.2: depth = 6n + 2.

    conv1 3x3 -> width, BN, relu; three stages of n `BasicBlock`s with widths
    width, 2*width, 4*width (16/32/64 by default), the first block of stages 2 and 3 with
    stride 2; global average pooling; fc -> num_classes.

    Shortcuts: option A by default, as in the paper's CIFAR experiments (identity, or
    stride-2 subsampling with zero-padded channels: no parameters), which gives resnet20
    269,722 parameters (nnx.Param: weights, biases, BN scales and offsets) for 10
    classes. `shortcut="B"` uses 1x1-conv + BN projections where the shape changes
    (+2,752 parameters for resnet20) that can be tensorized like the other convs.

    Layer names: "conv1" and "fc" (dense by default), "stage{s}.block{b}.conv1",
    "stage{s}.block{b}.conv2" and with option B "stage{s}.block{b}.shortcut"
    (s = 1..3, b = 1..n). See the module docstring for BatchNorm train/eval mode.

    Args:
      depth: 6n + 2 (20, 32, 44, 56, 110, ...).
      num_classes: number of logits.
      width: channels of the first stage.
      in_channels: channels of the input images.
      shortcut: "A" (parameter-free) or "B" (projection).
      factory: builds the named layers; None means all dense.
      rngs: `nnx.Rngs` with a `params` stream.

    Call: images (B, H, W, in_channels) (32x32 for CIFAR) -> logits (B, num_classes).
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        *,
        width: int = 16,
        in_channels: int = 3,
        shortcut: str = "A",
        factory: LayerFactory | None = None,
        rngs: nnx.Rngs,
    ):
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"ResNetCifar depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), "
                f"got {depth!r}"
            )
        if shortcut not in ("A", "B"):
            raise ValueError(
                f"shortcut must be 'A' (zero-padding) or 'B' (1x1 conv), got {shortcut!r}"
            )
        factory = factory if factory is not None else LayerFactory()
        self.depth, self.in_channels = depth, in_channels
        n = (depth - 2) // 6
        self.conv1 = factory.conv(
            "conv1", in_channels, width, 3, use_bias=False, dense_by_default=True, rngs=rngs
        )
        self.bn1 = _bn(width, rngs)
        blocks = []
        features = width
        for s in range(3):
            out = width * 2**s
            for b in range(n):
                strides = 2 if (s > 0 and b == 0) else 1
                blocks.append(
                    BasicBlock(
                        f"stage{s + 1}.block{b + 1}",
                        features,
                        out,
                        strides,
                        shortcut=shortcut,
                        factory=factory,
                        rngs=rngs,
                    )
                )
                features = out
        self.blocks = nnx.List(blocks)
        self.fc = factory.linear("fc", features, num_classes, dense_by_default=True, rngs=rngs)
        factory.check_overrides_used()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of images x (B, H, W, in_channels)."""
        with jax.named_scope("tnjax.models.ResNetCifar"):
            _check_images("ResNetCifar", x, self.in_channels)
            x = jax.nn.relu(self.bn1(self.conv1(x)))
            for block in self.blocks:
                x = block(x)
            return self.fc(x.mean(axis=(1, 2)))


def resnet20(**kwargs: Any) -> ResNetCifar:
    """ResNet-20 for CIFAR (n = 3); keyword arguments as in `ResNetCifar`."""
    return ResNetCifar(20, **kwargs)


def resnet32(**kwargs: Any) -> ResNetCifar:
    """ResNet-32 for CIFAR (n = 5); keyword arguments as in `ResNetCifar`."""
    return ResNetCifar(32, **kwargs)


def resnet56(**kwargs: Any) -> ResNetCifar:
    """ResNet-56 for CIFAR (n = 9); keyword arguments as in `ResNetCifar`."""
    return ResNetCifar(56, **kwargs)


class Bottleneck(nnx.Module):
    """1x1 conv - BN - relu - 3x3 conv (stride) - BN - relu - 1x1 conv (x4) - BN, + shortcut, relu.

    The stride sits on the 3x3 conv (ResNet v1.5, as torchvision and Flax's examples); the
    shortcut is a 1x1 conv (with the stride) + BN where the shape changes, named
    "<prefix>.shortcut", else the identity.
    """

    def __init__(
        self,
        prefix: str,
        in_features: int,
        width: int,
        strides: int,
        *,
        factory: LayerFactory,
        rngs: nnx.Rngs,
    ):
        out = 4 * width
        self.conv1 = factory.conv(
            f"{prefix}.conv1", in_features, width, 1, use_bias=False, rngs=rngs
        )
        self.bn1 = _bn(width, rngs)
        self.conv2 = factory.conv(
            f"{prefix}.conv2", width, width, 3, strides=strides, use_bias=False, rngs=rngs
        )
        self.bn2 = _bn(width, rngs)
        self.conv3 = factory.conv(f"{prefix}.conv3", width, out, 1, use_bias=False, rngs=rngs)
        self.bn3 = _bn(out, rngs)
        if strides != 1 or in_features != out:
            self.shortcut = factory.conv(
                f"{prefix}.shortcut",
                in_features,
                out,
                1,
                strides=strides,
                use_bias=False,
                rngs=rngs,
            )
            self.shortcut_bn = _bn(out, rngs)
        else:
            self.shortcut = self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in) -> (B, ceil(H/s), ceil(W/s), 4*width)."""
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        r = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return jax.nn.relu(y + r)


class ResNet50(nnx.Module):
    """ResNet-50 (He et al. 2016, ImageNet; v1.5 strides) with tensorizable convs.

    stem 7x7/2 conv -> 64, BN, relu, 3x3/2 max pool (padding 1); stages of [3, 4, 6, 3]
    `Bottleneck` blocks of widths 64, 128, 256, 512 (outputs 4x), the first block of stages
    2-4 with stride 2; global average pooling; fc -> num_classes. 25,557,032 parameters for
    1000 classes, as torchvision's. The total stride is 32, so 32x32 or 64x64 inputs work
    for quick tests.

    Layer names: "stem" and "fc" (dense by default), "stage{s}.block{b}.conv{1,2,3}" and
    "stage{s}.block{b}.shortcut" (first block of each stage; s = 1..4, b = 1..). See the
    module docstring for BatchNorm train/eval mode.

    Args:
      num_classes: number of logits.
      in_channels: channels of the input images.
      stage_sizes: blocks per stage.
      factory: builds the named layers; None means all dense.
      rngs: `nnx.Rngs` with a `params` stream.

    Call: images (B, H, W, in_channels) (224x224 for ImageNet) -> logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        stage_sizes: Sequence[int] = (3, 4, 6, 3),
        factory: LayerFactory | None = None,
        rngs: nnx.Rngs,
    ):
        factory = factory if factory is not None else LayerFactory()
        self.in_channels = in_channels
        self.stem = factory.conv(
            "stem",
            in_channels,
            64,
            7,
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dense_by_default=True,
            rngs=rngs,
        )
        self.stem_bn = _bn(64, rngs)
        blocks = []
        features = 64
        for s, size in enumerate(stage_sizes):
            width = 64 * 2**s
            for b in range(size):
                strides = 2 if (s > 0 and b == 0) else 1
                blocks.append(
                    Bottleneck(
                        f"stage{s + 1}.block{b + 1}",
                        features,
                        width,
                        strides,
                        factory=factory,
                        rngs=rngs,
                    )
                )
                features = 4 * width
        self.blocks = nnx.List(blocks)
        self.fc = factory.linear("fc", features, num_classes, dense_by_default=True, rngs=rngs)
        factory.check_overrides_used()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) of images x (B, H, W, in_channels)."""
        with jax.named_scope("tnjax.models.ResNet50"):
            _check_images("ResNet50", x, self.in_channels)
            x = jax.nn.relu(self.stem_bn(self.stem(x)))
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            for block in self.blocks:
                x = block(x)
            return self.fc(x.mean(axis=(1, 2)))
