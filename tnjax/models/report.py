"""Model reports, kept importable from here; they live in `tnjax.nn.report`."""

from tnjax.nn.report import LAYER_KINDS, compiled_flops, count_params, layer_report, model_report

__all__ = ["layer_report", "model_report", "count_params", "compiled_flops", "LAYER_KINDS"]
