"""Flax NNX layers whose kernels live in tensor formats (drop-ins for nnx.Linear/Conv/Embed)."""

from tnjax.nn._common import Core
from tnjax.nn.linear import LINEAR_FORMATS, Linear

__all__ = ["Core", "Linear", "LINEAR_FORMATS"]

try:  # the conv and embedding layers land alongside; import them when present
    from tnjax.nn.conv import CONV_FORMATS, Conv  # noqa: F401

    __all__ += ["Conv", "CONV_FORMATS"]
except ImportError:  # pragma: no cover
    pass
try:
    from tnjax.nn.embed import EMBED_FORMATS, Embed  # noqa: F401

    __all__ += ["Embed", "EMBED_FORMATS"]
except ImportError:  # pragma: no cover
    pass
