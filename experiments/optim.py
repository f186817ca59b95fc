"""Optax optimisers and learning-rate schedules from a config.

`config.optimizer` fields: name ("sgd", "momentum", "nesterov", "adam", "adamw"),
learning_rate, schedule ("constant", "cosine", "step"), warmup_steps, momentum (sgd),
b1/b2 (adam), weight_decay (decoupled, applied to arrays of rank >= 2 only: kernels and
cores, not biases or batch-norm scales), grad_clip (global norm, None = off), and for "step"
decay_boundaries (fractions of the run) and decay_factor.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

__all__ = ["make_schedule", "make_optimizer", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(opt: Any, num_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step: warm-up then the named decay."""
    lr = float(opt.learning_rate)
    warmup = int(opt.get("warmup_steps", 0))
    name = opt.get("schedule", "constant")
    decay_steps = max(1, num_steps - warmup)
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(opt.get("min_lr_ratio", 0)))
    elif name == "step":
        boundaries = opt.get("decay_boundaries", (0.5, 0.75))
        factor = float(opt.get("decay_factor", 0.1))
        main = optax.piecewise_constant_schedule(
            lr, {int(b * decay_steps): factor for b in boundaries}
        )
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(opt: Any, num_steps: int) -> optax.GradientTransformation:
    """The optax transformation the config asks for (see the module docstring)."""
    name = opt.get("name", "adam")
    schedule = make_schedule(opt, num_steps)
    if name in ("sgd", "momentum", "nesterov"):
        momentum = float(opt.get("momentum", 0.9 if name != "sgd" else 0.0)) or None
        base = optax.sgd(schedule, momentum=momentum, nesterov=name == "nesterov")
    elif name in ("adam", "adamw"):
        base = optax.adamw(
            schedule,
            b1=float(opt.get("b1", 0.9)),
            b2=float(opt.get("b2", 0.999)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
            mask=_decay_mask,
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    chain = []
    clip = opt.get("grad_clip", None)  # None: no clipping
    if clip is not None:
        if not clip > 0:
            raise ValueError(f"--config.optimizer.grad_clip={clip!r}: must be > 0 (or None)")
        chain.append(optax.clip_by_global_norm(float(clip)))
    wd = float(opt.get("weight_decay", 0.0))
    if wd > 0 and name in ("sgd", "momentum", "nesterov"):
        chain.append(optax.add_decayed_weights(wd, mask=_decay_mask))  # coupled L2, as in ResNet
    chain.append(base)
    return optax.chain(*chain)
