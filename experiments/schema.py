"""The config schema every trainer reads, checked before anything is loaded or written.

`validate(config)` walks the sections a trainer reads (data, model, optimizer, loop, mesh,
and the `compress` / `bayes` sections; a compress config's `teacher` is a whole `train`
config and is checked as one) and raises `ConfigError` on the first bad value, naming the
key as the user types it: `--config.optimizer.learning_rate=-0.1: must be a finite number
> 0`, with the config-file argument that set it when one matches (`:rate=`).

Optional fields are `None` ("not set", e.g. `num_steps = None`: use `num_epochs`); every
other value, 0 and False included, means what it says. A check is a small function
`value -> message or None`; `RULES` maps a field path to its check.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["ConfigError", "validate", "teacher_config", "typed_config_args", "TRAINERS"]

TRAINERS = ("train", "compress", "bayes")
TASK_NAMES = ("classification", "ctr", "regression")
DATA_SOURCES = ("auto", "local", "tfds")
AUGMENTATIONS = (None, "none", "cifar", "imagenet")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
PRIORS = ("half_cauchy", "log_uniform")
INFERENCES = ("map", "svi")

Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
    """A config value the trainers cannot use; the message names the key."""


# --------------------------------------------------------------------------- checks


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(low: int, *, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if not _is_int(v) or v < low:
            return f"must be an integer >= {low}" + (" (or None: not set)" if optional else "")
        return None

    return check


def real_in(
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Check:
    def check(v):
        if v is None and optional:
            return None
        ok = _is_real(v) and (v > low if low_open else v >= low)
        ok = ok and (v < high if high_open else v <= high)
        if ok:
            return None
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}" if math.isfinite(high) else "inf)"
        return f"must be a finite number in {lo}, {hi}" + (" (or None)" if optional else "")

    return check


def positive(*, optional: bool = False) -> Check:
    return real_in(0.0, low_open=True, optional=optional)


def one_of(choices: Iterable[Any], *, optional: bool = False) -> Check:
    choices = tuple(choices)

    def check(v):
        if (v is None and optional) or v in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}"

    return check


def text(*, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            return "must be a non-empty string" + (" (or None)" if optional else "")
        return None

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def mesh_axis(v: Any) -> str | None:
    return None if _is_int(v) and (v == -1 or v >= 1) else "must be -1 (the rest) or >= 1"


def rank_value(v: Any) -> str | None:
    """A layer rank: None, an int >= 1, or a sequence of them."""
    if v is None or (_is_int(v) and v >= 1):
        return None
    if isinstance(v, list | tuple) and v and all(_is_int(r) and r >= 1 for r in v):
        return None
    return "must be an integer >= 1, a list of them, or None"


def rate_value(v: Any) -> str | None:
    return real_in(0.0, 1.0, low_open=True)(v)


# --------------------------------------------------------------------------- sections

LOOP_RULES: dict[str, Check] = {
    "seed": int_at_least(0),
    "batch_size": int_at_least(1),
    "eval_batch_size": int_at_least(1, optional=True),
    "log_every": int_at_least(1),
    "tensorboard": boolean,
    "mesh.data": mesh_axis,
    "mesh.model": int_at_least(1),
    "mesh.shard_min_size": int_at_least(0),
    "debug.kill_at_step": int_at_least(1, optional=True),
}

TRAIN_RULES: dict[str, Check] = {
    **LOOP_RULES,
    "task": one_of(TASK_NAMES),
    "num_steps": int_at_least(1, optional=True),
    "num_epochs": positive(optional=True),
    "eval_every": int_at_least(1, optional=True),
    "checkpoint_every": int_at_least(1, optional=True),
    "max_checkpoints": int_at_least(1),
    "data.name": text(),
    "data.source": one_of(DATA_SOURCES),
    "data.data_dir": text(optional=True),
    "data.tfds_data_dir": text(optional=True),
    "data.num_train": int_at_least(1, optional=True),
    "data.num_test": int_at_least(1, optional=True),
    "data.augment": one_of(AUGMENTATIONS),
    "model.name": text(),
    "optimizer.name": one_of(OPTIMIZERS),
    "optimizer.learning_rate": positive(),
    "optimizer.schedule": one_of(SCHEDULES),
    "optimizer.warmup_steps": int_at_least(0),
    "optimizer.momentum": real_in(0.0, 1.0, high_open=True),
    "optimizer.b1": real_in(0.0, 1.0, high_open=True),
    "optimizer.b2": real_in(0.0, 1.0, high_open=True),
    "optimizer.weight_decay": real_in(0.0),
    "optimizer.grad_clip": positive(optional=True),
    "optimizer.decay_factor": positive(),
    "optimizer.min_lr_ratio": real_in(0.0, 1.0),
}

BAYES_RULES: dict[str, Check] = {
    "bayes.prior": one_of(PRIORS),
    "bayes.eta": positive(),
    "bayes.core_std": positive(),
    "bayes.inference": one_of(INFERENCES),
    "bayes.prior_weight": real_in(0.0),
    "bayes.em_step_size": real_in(0.0, 1.0, low_open=True),
    "bayes.threshold": real_in(0.0, 1.0, low_open=True, high_open=True),
    "bayes.kl_delay_steps": int_at_least(0),
    "bayes.kl_warmup_steps": int_at_least(0),
    "bayes.svi_init_scale": positive(),
    "bayes.finetune_steps": int_at_least(0),
    "bayes.finetune_learning_rate": positive(),
}

COMPRESS_RULES: dict[str, Check] = {
    **LOOP_RULES,
    "teacher_workdir": text(optional=True),
    "rate": rate_value,
    "augment": one_of(AUGMENTATIONS),
    "phase1.steps_per_block": int_at_least(0),
    "phase1.learning_rate": positive(),
    "phase2.steps": int_at_least(0),
    "phase2.learning_rate": positive(),
    "phase2.kd_weight": real_in(0.0),
    "phase2.kd_temperature": positive(),
    "phase2.checkpoint_every": int_at_least(1),
    "compare_end_to_end": boolean,
    "curve_every": int_at_least(1, optional=True),
}


# --------------------------------------------------------------------------- validation


def _lookup(config: Any, path: str) -> tuple[bool, Any]:
    """(present, value) of the dotted `path` in a ConfigDict / Mapping."""
    node = config
    for key in path.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return False, None
        if key not in node:
            return False, None
        node = node[key]
    return True, node


def _as_plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _fail(prefix: str, path: str, value: Any, problem: str, typed_args: Iterable[str]) -> None:
    full = f"{prefix}{path}"
    leaf = path.rsplit(".", 1)[-1]
    flat = full.replace(".", "_")
    arg = next(
        (a for a in typed_args if a == leaf or a == flat or (len(a) > 2 and flat.startswith(a))),
        None,
    )
    source = f" (set by the config argument :{arg}=)" if arg else ""
    raise ConfigError(f"--config.{full}={value!r}{source}: {problem}")


def _check_rules(
    config: Any, rules: Mapping[str, Check], prefix: str, typed_args: Iterable[str]
) -> None:
    for path, check in rules.items():
        present, value = _lookup(config, path)
        if not present:
            continue
        problem = check(_as_plain(value))
        if problem:
            _fail(prefix, path, value, problem, typed_args)


def _check_layer_specs(config: Any, prefix: str, typed_args: Iterable[str]) -> None:
    """model.layers.default and .overrides: known formats, ranks >= 1, compression in (0, 1]."""
    from tnjax.models.factory import FORMATS

    present, layers = _lookup(config, "model.layers")
    if not present or layers is None:
        return
    layers = _as_plain(layers)
    formats = {"dense", *(f for fs in FORMATS.values() for f in fs)}
    specs = [("model.layers.default", layers.get("default") or {})]
    specs += [
        (f"model.layers.overrides.{name}", spec)
        for name, spec in (layers.get("overrides") or {}).items()
    ]
    known = _layer_option_names()
    for where, spec in specs:
        for key, value in spec.items():
            path = f"{where}.{key}"
            head, _, rest = key.partition("_")
            base = rest if head in ("linear", "conv", "embed") and rest else key
            if base not in known:
                close = difflib.get_close_matches(base, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                _fail(prefix, path, value, f"not an option of any layer{hint}", typed_args)
            if key == "format" or key.endswith("_format"):
                problem = one_of(sorted(formats), optional=True)(value)
            elif key == "rank" or key.endswith("_rank"):
                problem = rank_value(value)
            elif key == "compression" or key.endswith("_compression"):
                problem = None if value is None else rate_value(value)
            elif key == "num_modes" or key.endswith("_num_modes"):
                problem = int_at_least(1, optional=True)(value)
            else:
                problem = None
            if problem:
                _fail(prefix, path, value, problem, typed_args)


def _check_model_name(config: Any, prefix: str, typed_args: Iterable[str]) -> None:
    from tnjax.models import MODELS

    name = config.get("model", {}).get("name", None)
    if name not in MODELS:
        _fail(prefix, "model.name", name, one_of(sorted(MODELS))(name), typed_args)


def _layer_option_names() -> frozenset[str]:
    """Every key a layer spec may hold: "format" and the constructor arguments of the dense
    (flax.nnx) and tensorized (tnjax.nn) Linear, Conv and Embed."""
    from flax import nnx

    from tnjax import nn as tnn

    names = {"format"}
    for cls in (nnx.Linear, nnx.Conv, nnx.Embed, tnn.Linear, tnn.Conv, tnn.Embed):
        names |= set(inspect.signature(cls.__init__).parameters) - {"self", "rngs"}
    return frozenset(n for n in names if not n.startswith("_"))


def _check_epochs_or_steps(config: Any, prefix: str, typed_args: Iterable[str]) -> None:
    steps = config.get("num_steps", None)
    epochs = config.get("num_epochs", None)
    if steps is None and epochs is None:
        _fail(prefix, "num_steps", None, "set num_steps or num_epochs", typed_args)


def _check_compress(config: Any, typed_args: Iterable[str]) -> None:
    from tnjax.compress import COMPRESS_FORMATS, FORMAT_ALIASES

    formats = sorted({*COMPRESS_FORMATS, *FORMAT_ALIASES})
    _check_rules(config, COMPRESS_RULES, "", typed_args)
    for key in ("format", "linear_format"):
        optional = key == "linear_format"
        value = config.get(key, None)
        if not isinstance(value, str | type(None)):
            _fail("", key, value, "must be a format name", typed_args)
        problem = one_of(formats, optional=optional)(
            value.lower() if isinstance(value, str) else value
        )
        if problem:
            _fail("", key, value, problem, typed_args)
    for pattern, rate in (_as_plain(config.get("rate_overrides", {})) or {}).items():
        if rate_value(rate):
            _fail("", f"rate_overrides.{pattern}", rate, rate_value(rate), typed_args)
    if "teacher" not in config:
        _fail("", "teacher", None, "a compress config needs its teacher's train config", ())
    validate(teacher_config(config), typed_args=(), prefix="teacher.")


def teacher_config(config: Any) -> Any:
    """A compress config's `teacher` with its unset data fields filled from `config.data`
    (the student's data; see configs/common.compress_config)."""
    teacher = copy.deepcopy(config.teacher)
    for key, value in (config.get("data", None) or {}).items():
        if teacher.data.get(key, None) is None:
            teacher.data[key] = value
    return teacher


def validate(config: Any, *, typed_args: Iterable[str] = (), prefix: str = "") -> None:
    """Raises `ConfigError` naming the first key whose value a trainer cannot use.

    Args:
      config: the whole config (`ml_collections.ConfigDict` or a nested Mapping).
      typed_args: the config-file arguments the user gave (`rate` for `:rate=0.1`), so a
        message can name the one that set a bad field.
      prefix: the path of `config` inside the config the user gave ("teacher.").
    """
    typed_args = tuple(typed_args)
    trainer = config.get("trainer", None)
    if trainer not in TRAINERS:
        _fail(prefix, "trainer", trainer, one_of(TRAINERS)(trainer), typed_args)
    if trainer == "compress":
        _check_compress(config, typed_args)
        return
    _check_rules(config, TRAIN_RULES, prefix, typed_args)
    _check_model_name(config, prefix, typed_args)
    _check_epochs_or_steps(config, prefix, typed_args)
    _check_layer_specs(config, prefix, typed_args)
    if trainer == "bayes":
        if "bayes" not in config:
            _fail(prefix, "bayes", None, "trainer 'bayes' needs a bayes section", typed_args)
        _check_rules(config, BAYES_RULES, prefix, typed_args)


def typed_config_args(config_flag_value: str | None) -> tuple[str, ...]:
    """The argument names in `configs/NAME.py:quick,rate=0.1` ("quick", "rate")."""
    if not config_flag_value or ":" not in config_flag_value:
        return ()
    _, _, args = config_flag_value.partition(":")
    return tuple(item.partition("=")[0].strip() for item in args.split(",") if item.strip())
