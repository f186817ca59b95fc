"""Flax NNX layers whose kernels live in tensor formats (drop-ins for nnx.Linear/Conv/Embed)."""

from tnjax.nn._common import Core, TensorLayer
from tnjax.nn.conv import CONV_FORMATS, Conv
from tnjax.nn.embed import EMBED_FORMATS, Embed
from tnjax.nn.linear import LINEAR_FORMATS, Linear

__all__ = [
    "Core",
    "TensorLayer",
    "Conv",
    "CONV_FORMATS",
    "Embed",
    "EMBED_FORMATS",
    "Linear",
    "LINEAR_FORMATS",
]
