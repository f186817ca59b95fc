"""tnjax: tensorial neural networks in JAX.

Public entry points (import order: each uses only those above it):
  tnjax.ops         generalised contraction (`contract`, `contract_path`) and linear algebra.
  tnjax.formats     tensor formats (CP, Tucker, TT, TTMatrix, TR) and decompositions; the
                    layout of a tensorized weight (`formats.layout`, `formats.weights`).
  tnjax.functional  tensorized layers as pure functions of (layout, cores, inputs): no Flax.
  tnjax.nn          Flax NNX layers `Linear`, `Conv`, `Embed` over the functional core.
  tnjax.models      LeNet-5, ResNets, MLP, DLRM built through a `LayerFactory`.
  tnjax.compress    decompose a trained model to a budget; block-wise distillation.
  tnjax.bayes       rank-shrinking priors, MAP/EM and SVI, rank read-out and pruning.
"""

from tnjax import formats, functional, ops
from tnjax.formats import CP, TR, TT, TTMatrix, Tucker

__all__ = ["ops", "formats", "functional", "CP", "Tucker", "TT", "TTMatrix", "TR"]
__version__ = "0.1.0"
