"""tnjax: tensorial neural networks in JAX.

Public entry points:
  tnjax.ops       generalised contraction (`contract`, `contract_path`) and linear algebra.
  tnjax.formats   tensor formats (CP, Tucker, TT, TTMatrix, TR) and decompositions.
"""

from tnjax import formats, ops
from tnjax.formats import CP, TR, TT, TTMatrix, Tucker

__all__ = ["ops", "formats", "CP", "Tucker", "TT", "TTMatrix", "TR"]
__version__ = "0.1.0"
