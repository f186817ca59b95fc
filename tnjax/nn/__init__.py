"""Flax NNX layers whose kernels live in tensor formats (drop-ins for nnx.Linear,
nnx.LinearGeneral, nnx.Einsum, nnx.Conv and nnx.Embed)."""

from tnjax.nn._common import Core, TensorLayer
from tnjax.nn.conv import CONV_FORMATS, Conv
from tnjax.nn.einsum import Einsum
from tnjax.nn.embed import EMBED_FORMATS, Embed
from tnjax.nn.linear import LINEAR_FORMATS, Linear
from tnjax.nn.linear_general import LinearGeneral

__all__ = [
    "Core",
    "TensorLayer",
    "Conv",
    "CONV_FORMATS",
    "Einsum",
    "Embed",
    "EMBED_FORMATS",
    "Linear",
    "LinearGeneral",
    "LINEAR_FORMATS",
]
