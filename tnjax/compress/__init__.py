"""Whole-model compression (TNN paper): decompose to a budget, then block-wise distillation."""

from tnjax.compress.decompose import (
    COMPRESS_FORMATS,
    FORMAT_ALIASES,
    compress_model,
    eligible_layers,
    skipped_layers,
    unsupported_reason,
)
from tnjax.compress.distill import (
    DistillBlock,
    block_mse,
    block_param_filter,
    capture_outputs,
    distillation_blocks,
)

__all__ = [
    "COMPRESS_FORMATS",
    "FORMAT_ALIASES",
    "compress_model",
    "eligible_layers",
    "skipped_layers",
    "unsupported_reason",
    "DistillBlock",
    "block_mse",
    "block_param_filter",
    "capture_outputs",
    "distillation_blocks",
]
