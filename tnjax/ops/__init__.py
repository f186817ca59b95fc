"""Pure-JAX primitives: generalised contraction with convolution modes, and linear algebra."""

from tnjax.ops import linalg
from tnjax.ops.contraction import (
    DEFAULT_COST_MODELS,
    ContractionPlan,
    CostModel,
    PathCost,
    clear_plan_cache,
    contract,
    contract_path,
)

__all__ = [
    "contract",
    "contract_path",
    "ContractionPlan",
    "CostModel",
    "DEFAULT_COST_MODELS",
    "PathCost",
    "clear_plan_cache",
    "linalg",
]
