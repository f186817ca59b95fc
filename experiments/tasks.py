"""Tasks: how a batch feeds a model and how its output is scored.

A `Task` names the batch columns that are the model's inputs and the per-example loss and
correctness of its output; `TASKS` holds the three the configs use (`config.task`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["Task", "TASKS", "task_of", "example_inputs"]


@dataclasses.dataclass(frozen=True)
class Task:
    """How a batch feeds the model and how its output is scored.

    inputs: batch -> positional model arguments.
    loss: (model output, labels (B,)) -> (per-example loss (B,), per-example correct (B,)).
    """

    inputs: Callable[[Mapping[str, jax.Array]], tuple[jax.Array, ...]]
    loss: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _softmax_xent(logits_BxC: jax.Array, labels_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), labels_B)
    return loss, (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)


def _sigmoid_xent(logits_B: jax.Array, labels_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits_B = logits_B.reshape(labels_B.shape).astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(logits_B, labels_B.astype(jnp.float32))
    return loss, ((logits_B > 0) == (labels_B > 0)).astype(jnp.float32)


def _squared_error(out_BxK: jax.Array, targets_BxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gaussian NLL with unit noise variance, up to a constant: 0.5 ||y - f(x)||^2."""
    diff = out_BxK.astype(jnp.float32) - targets_BxK.astype(jnp.float32)
    loss = 0.5 * jnp.sum(diff * diff, axis=-1)
    return loss, jnp.zeros_like(loss)  # no accuracy for regression


TASKS = {
    "classification": Task(lambda b: (b["image"],), _softmax_xent),
    "ctr": Task(lambda b: (b["dense"], b["sparse"]), _sigmoid_xent),
    "regression": Task(lambda b: (b["x"],), _squared_error),
}


def task_of(config: Any) -> Task:
    """The `Task` of `config.task` (default "classification")."""
    name = config.get("task", "classification")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def example_inputs(task: Task, split: Mapping[str, np.ndarray]) -> tuple[jax.Array, ...]:
    """The model inputs of one example (batch of 1), for cost reports."""
    one = {k: v[:1] for k, v in split.items()}
    return tuple(jnp.asarray(x) for x in task.inputs(one))
