"""Shared pieces of the config files: argument parsing and the base config.

A config file's `get_config(arg)` takes the text after the colon of
`--config=configs/NAME.py:ARG`, a comma-separated list of `key=value` pairs and bare flags,
e.g. `quick,format=tt,rank=8`. Only ml_collections is imported here (configs are data).
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

__all__ = ["parse_arg", "base_config", "layers_config", "unset"]


class unset:  # noqa: N801 (reads as a value in parse_arg calls: rank=unset(int))
    """The default of an optional config argument: None until the user gives a `kind` value."""

    def __init__(self, kind: type):
        self.kind = kind


def _convert(key: str, text: str, default: Any) -> Any:
    if isinstance(default, unset):
        return _convert(key, text, default.kind())
    if isinstance(default, bool):
        if text.lower() in ("", "1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config arg {key}={text!r}: expected true or false")
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(
            f"config arg {key}={text!r}: expected a {type(default).__name__}"
        ) from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses "quick,format=tt,rank=8" against `defaults` (which also give the types).

    A default `unset(int)` makes an optional argument: None unless given.

    Raises:
      ValueError: naming an unknown key (and listing the known ones) or a bad value.
    """
    values = {k: None if isinstance(v, unset) else v for k, v in defaults.items()}
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config arg {key!r}; this config takes: {', '.join(sorted(defaults))}"
            )
        values[key] = _convert(key, text.strip(), defaults[key])
    return ml_collections.ConfigDict(values)


def layers_config(
    format: str = "dense",
    rank: int | None = None,
    compression: float | None = None,
    conv_format: str | None = None,
) -> ml_collections.ConfigDict:
    """`config.model.layers`: the default layer spec and per-layer overrides.

    rank, compression, conv_format and num_modes are typed placeholders: None means "not
    set" (conv_format None: the same as format). The model's first conv and last dense layer
    stay dense unless an override names them.
    """
    return ml_collections.ConfigDict(
        {
            "default": {
                "format": format,
                "rank": config_dict.placeholder(int) if rank is None else rank,
                "compression": (
                    config_dict.placeholder(float) if compression is None else compression
                ),
                "conv_format": (
                    config_dict.placeholder(str) if conv_format is None else conv_format
                ),
                "num_modes": config_dict.placeholder(int),
            },
            "overrides": {},
        }
    )


def base_config(name: str) -> ml_collections.ConfigDict:
    """Fields every training config has; a config file fills in the rest."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.trainer = "train"
    c.task = "classification"
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        {
            "name": "fashion_mnist",
            "source": "auto",  # auto: local files if found, else TFDS; or "local", "tfds"
            # Optional fields are typed placeholders (None until set, and settable from
            # --config.data.X): a real 0 or "" is passed on as given, never read as "unset".
            "data_dir": config_dict.placeholder(str),  # None: $TNJAX_DATA_DIR
            "tfds_data_dir": config_dict.placeholder(str),
            "num_train": config_dict.placeholder(int),  # None: all
            "num_test": config_dict.placeholder(int),
            "augment": "none",
        }
    )
    c.model = ml_collections.ConfigDict(
        {"name": config_dict.placeholder(str), "layers": layers_config(), "kwargs": {}}
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 1e-3,
            "schedule": "cosine",
            "warmup_steps": 0,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "grad_clip": config_dict.placeholder(float),  # None: no clipping
        }
    )
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_steps = config_dict.placeholder(int)  # None: use num_epochs
    c.num_epochs = 1.0
    c.log_every = 100
    c.eval_every = config_dict.placeholder(int)  # None: only at the end
    c.checkpoint_every = 1000
    c.max_checkpoints = 3
    c.tensorboard = True
    c.mesh = mesh_config()
    c.debug = debug_config()
    return c


def debug_config() -> ml_collections.ConfigDict:
    """`config.debug`: test hooks (kill_at_step: SIGKILL after this step; None: never)."""
    return ml_collections.ConfigDict({"kill_at_step": config_dict.placeholder(int)})


def mesh_config() -> ml_collections.ConfigDict:
    """`config.mesh`: the device mesh and which state arrays are split along `model`.

    data -1: every device not on `model`. shard_params: a regex searched in each state
    array's path (e.g. "embeddings" for DLRM's tables; None = replicate everything);
    shard_min_size: only arrays with at least this many elements. See experiments/sharding.py.
    """
    return ml_collections.ConfigDict(
        {
            "data": -1,
            "model": 1,
            "shard_params": config_dict.placeholder(str),
            "shard_min_size": 0,
        }
    )


def apply_layers(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
    """Copies the common layer args (format, rank, compression, conv_format) into c.model."""
    d = c.model.layers.default
    d.format = args.format
    d.rank = args.rank
    d.compression = args.compression
    d.conv_format = args.get("conv_format", None)


# The data fields a compress config's teacher inherits from `config.data` (the student's).
INHERITED_DATA = ("name", "source", "data_dir", "tfds_data_dir", "num_train", "num_test")


def compress_config(name: str, teacher: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fields of the `compress` trainer's configs; `teacher` is the dense model's `train`
    config.

    `config.data` is the data the student is compressed and fine-tuned on (a copy of the
    teacher's); the teacher's own `data.name`, `source`, `data_dir`, `tfds_data_dir`,
    `num_train` and `num_test` become unset placeholders that the trainer fills from
    `config.data`, so `--config.data.X` changes both and `--config.teacher.data.X` the teacher
    alone. The teacher keeps its own augmentation.
    """
    c = ml_collections.ConfigDict()
    c.name = name
    c.trainer = "compress"
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        {k: _placeholder_like(teacher.data, k) for k in INHERITED_DATA}
    )
    for k in INHERITED_DATA:
        c.data[k] = teacher.data[k]
        teacher.data[k] = _placeholder_like(teacher.data, k)
    c.teacher = teacher
    c.teacher_workdir = config_dict.placeholder(str)  # None: WORKDIR/teacher
    c.format = "rcp"
    c.linear_format = config_dict.placeholder(str)  # None: the same as format
    c.rate = 0.1
    c.rate_overrides = {}  # {layer pattern: rate}, e.g. {"conv2": 0.3}; the rest get `rate`
    c.layers = ()  # fnmatch patterns; empty: all but the first conv and the last dense
    c.augment = "none"
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.phase1 = ml_collections.ConfigDict({"steps_per_block": 400, "learning_rate": 1e-3})
    c.phase2 = ml_collections.ConfigDict(
        {
            "steps": 940,
            "learning_rate": 5e-4,
            "kd_weight": 1.0,
            "kd_temperature": 4.0,
            "checkpoint_every": 500,
        }
    )
    c.compare_end_to_end = False
    # evaluate every N steps of phase 1 / end-to-end (None: no curves)
    c.curve_every = config_dict.placeholder(int)
    c.log_every = 100
    c.tensorboard = True
    c.mesh = mesh_config()
    c.debug = debug_config()
    return c


def _placeholder_like(section: ml_collections.ConfigDict, key: str):
    """An unset placeholder of the type of `section.key` (its declared type if it is unset)."""
    value = section[key]
    kind = type(value) if value is not None else section.get_type(key)
    return config_dict.placeholder(kind)


def apply_prior(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
    """The prior args (prior, eta, inference, prior_weight) of a Bayesian-rank config.

    `prior=none` trains at the fixed max ranks without a prior (trainer `train`), the
    baseline of each `bayes_*` config; otherwise trainer `bayes` with `config.bayes`. The run
    name gets `_fixed` or `_<inference>` appended.
    """
    if args.prior not in ("half_cauchy", "log_uniform", "none"):
        raise ValueError(f"prior={args.prior!r}: choose half_cauchy, log_uniform or none")
    if args.prior == "none":
        c.trainer = "train"
        c.name = f"{c.name}_fixed"
        return
    c.trainer = "bayes"
    c.name = f"{c.name}_{args.inference}"
    c.bayes = bayes_config(args.prior, args.eta, args.inference)
    c.bayes.prior_weight = args.prior_weight


def bayes_config(prior: str = "half_cauchy", eta: float = 1.0, inference: str = "map"):
    """`config.bayes` of the `bayes` trainer (priors, inference, read-out threshold)."""
    return ml_collections.ConfigDict(
        {
            "prior": prior,  # "half_cauchy" or "log_uniform"
            "eta": eta,  # half-Cauchy scale
            "core_std": 10.0,  # fixed N(0, core_std^2) prior of Tucker cores
            "inference": inference,  # "map" (closed-form EM lambda) or "svi" (NumPyro)
            "prior_weight": 1.0,  # 1 = the Bayesian posterior; >1 tempers towards the prior
            "em_step_size": 1.0,  # damping of the lambda update
            "threshold": 1e-2,  # keep rank r when lambda_r > threshold * max lambda
            "kl_delay_steps": 0,  # prior / KL weight 0 before this step ...
            "kl_warmup_steps": 0,  # ... then ramped linearly to 1 over this many (0: no ramp)
            "svi_init_scale": 1e-3,  # initial posterior std, relative to each core's RMS
            "finetune_steps": 0,  # > 0: train the pruned model on, without the prior
            "finetune_learning_rate": 1e-3,
        }
    )
