"""Model zoo: LeNet-5, CIFAR ResNets, ResNet-50, a small ViT, MLP and DLRM with tensorizable layers.

Every model builds its Linear/Conv/Embed layers through a `LayerFactory`, so any named
layer can be dense (Flax) or tensorized (`tnjax.nn`) from a spec::

  model = create_model(
      "resnet32",
      rngs=nnx.Rngs(0),
      layers={"default": {"format": "rcp", "compression": 0.1},
              "overrides": {"stage1.*": {"format": "dense"}}},
  )
  print(model_report(model, jnp.zeros((1, 32, 32, 3)))["compression"])

Models with BatchNorm (LeNet5, the ResNets) are built in training mode (batch statistics,
running averages updated as `nnx.BatchStat`) and switch mode the NNX way: `model.train()` /
`model.eval()` (in place, a no-op for MLP and DLRM), or
`nnx.view(model, use_running_average=True, raise_if_not_found=False)` for an evaluation view
sharing the arrays (without `raise_if_not_found=False`, `nnx.view` raises on models that
have no BatchNorm).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from tnjax.models.dlrm import DLRM
from tnjax.models.factory import LayerFactory, layer_name
from tnjax.models.lenet import LeNet5
from tnjax.models.mlp import MLP
from tnjax.models.report import compiled_flops, count_params, layer_report, model_report
from tnjax.models.resnet import ResNet50, ResNetCifar, resnet20, resnet32, resnet56
from tnjax.models.vit import ViT

__all__ = [
    "MODELS",
    "create_model",
    "LayerFactory",
    "layer_name",
    "LeNet5",
    "ResNetCifar",
    "ResNet50",
    "resnet20",
    "resnet32",
    "resnet56",
    "MLP",
    "DLRM",
    "ViT",
    "layer_report",
    "compiled_flops",
    "model_report",
    "count_params",
]

# name -> (constructor, the class whose keyword arguments it accepts, positional args).
_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], type, int]] = {
    "lenet5": (LeNet5, LeNet5, 0),
    "resnet20": (resnet20, ResNetCifar, 1),
    "resnet32": (resnet32, ResNetCifar, 1),
    "resnet56": (resnet56, ResNetCifar, 1),
    "resnet50": (ResNet50, ResNet50, 0),
    "mlp": (MLP, MLP, 0),
    "dlrm": (DLRM, DLRM, 0),
    "vit": (ViT, ViT, 0),
}
MODELS = frozenset(_REGISTRY)
_LAYERS_KEYS = ("default", "overrides")


def _accepted(cls: type, skip: int) -> list[str]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1 + skip :]
    return [p.name for p in params if p.name not in ("factory", "rngs")]


def create_model(
    name: str, *, rngs: nnx.Rngs, layers: Mapping[str, Any] | None = None, **kwargs: Any
) -> nnx.Module:
    """Builds a model of the zoo by name, with its layers dense or tensorized.

    Args:
      name: one of `MODELS`: "lenet5", "resnet20", "resnet32", "resnet56", "resnet50",
        "mlp", "dlrm", "vit".
      rngs: `nnx.Rngs` with a `params` stream.
      layers: `{"default": spec, "overrides": {pattern: spec}}` (both optional; a
        Mapping or an ml_collections ConfigDict), given to `LayerFactory`; None: all dense.
      **kwargs: the model's constructor arguments (e.g. num_classes; for "dlrm"
        num_dense and vocab_sizes).

    Raises:
      ValueError: unknown model name, unknown keys in `layers`, a bad layer spec or an
        override that matches no layer.
      TypeError: keyword arguments the model does not take.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    build, cls, skip = _REGISTRY[name]
    accepted = _accepted(cls, skip)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} does not take argument(s) {unknown}; it takes {accepted} "
            "(layer specs go in layers=)"
        )
    if layers is not None and hasattr(layers, "to_dict"):
        layers = layers.to_dict()
    layers = dict(layers or {})
    bad = sorted(set(layers) - set(_LAYERS_KEYS))
    if bad:
        raise ValueError(
            f"layers has unknown key(s) {bad}; it takes {list(_LAYERS_KEYS)}, e.g. "
            "{'default': {'format': 'tt', 'rank': 4}, 'overrides': {'fc1': {'rank': 8}}}"
        )
    factory = LayerFactory(layers.get("default"), layers.get("overrides"))
    return build(**kwargs, factory=factory, rngs=rngs)
