"""Trainer `train`: a dense or tensorized model trained from scratch.

    python -m experiments.main --config=configs/lenet5.py --workdir=/tmp/lenet5

What it does, in order: check the config (`schema`), lock and claim the workdir
(`workdir.claim`; a finished run is returned as it is), load the data (`input_pipeline`),
build the model through its layer factory (`tnjax.models.create_model`), train it with the
shared loop (`loop.RunLoop`: resume, optax steps, logging, evaluation, checkpoints), then
evaluate on the test split and write `curves.png` and, last, `summary.json`.

Also the pieces the other trainers share: `build_model`, `data_config`,
`resolve_num_steps`, `load_trained`, `size_summary`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from experiments import input_pipeline, metrics, optim, schema
from experiments import workdir as workdir_lib
from experiments.checkpoint import Checkpointer, write_json
from experiments.loop import LoopOptions, RunLoop, Trainable
from experiments.tasks import Task, example_inputs, task_of
from tnjax import models

__all__ = [
    "train_and_evaluate",
    "build_model",
    "clean_layer_specs",
    "data_config",
    "resolve_num_steps",
    "load_trained",
    "size_summary",
    "write_summary",
]

# --------------------------------------------------------------------------- set-up


def build_model(config: ml_collections.ConfigDict, ds: input_pipeline.Dataset) -> nnx.Module:
    """The model of `config.model`, sized for the dataset (classes, channels, vocabularies)."""
    mc = config.model
    kwargs = dict(mc.get("kwargs", {}) or {})
    name = mc.name
    if name == "dlrm":
        kwargs.setdefault("num_dense", int(ds.info["num_dense"]))
        kwargs.setdefault("vocab_sizes", tuple(int(v) for v in ds.info["vocab_sizes"]))
    elif name == "mlp":
        features = tuple(kwargs.get("features", (784, 512, 10)))
        inputs = ds.train["image"] if "image" in ds.train else ds.train["x"]
        in_size = int(np.prod(inputs.shape[1:]))
        labels = ds.train["label"]
        out_size = int(labels.shape[-1]) if labels.ndim > 1 else ds.num_classes  # regression
        kwargs["features"] = (in_size, *features[1:-1], out_size)
    else:
        kwargs.setdefault("num_classes", ds.num_classes)
        if name in ("lenet5", "vit"):
            kwargs.setdefault("in_channels", int(ds.train["image"].shape[-1]))
        if name == "vit":
            kwargs.setdefault("image_size", int(ds.train["image"].shape[1]))
    layers = mc.get("layers", None)
    layers = clean_layer_specs(layers.to_dict() if hasattr(layers, "to_dict") else layers)
    return models.create_model(name, rngs=nnx.Rngs(config.seed), layers=layers, **kwargs)


def clean_layer_specs(layers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The layer specs of a config with its unset placeholders (None) dropped; every other
    value, 0 and "" included, reaches the layer factory as written."""
    if layers is None:
        return None

    def clean(spec: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if v is not None}

    return {
        "default": clean(layers.get("default", {}) or {}),
        "overrides": {k: clean(v) for k, v in (layers.get("overrides", {}) or {}).items()},
    }


def data_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.data` for `input_pipeline.load_dataset`, unset fields (None) dropped.

    Only None means "not set": a 0, 0.0, "" or False in the config reaches the pipeline as
    written (e.g. `zipf_exponent = 0.0`, uniform ids).
    """
    out = {k: v for k, v in config.data.to_dict().items() if v is not None}
    out["seed"] = int(config.seed)
    return out


def resolve_num_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """`config.num_steps`, or (None) `num_epochs` epochs of `batch_size` (drop remainder)."""
    if config.get("num_steps", None) is not None:
        if config.num_steps < 1:
            raise ValueError(f"--config.num_steps={config.num_steps}: must be >= 1")
        return int(config.num_steps)
    epochs = config.get("num_epochs", None)
    if epochs is None or not epochs > 0:
        raise ValueError("set --config.num_steps or --config.num_epochs to a positive number")
    spe = input_pipeline.steps_per_epoch(num_train, config.batch_size)
    return max(1, int(round(epochs * spe)))


# --------------------------------------------------------------------------- the trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config`'s model from scratch (or resumes it) and writes the summary.

    Returns:
      the dict written to `workdir/summary.json`.
    """
    schema.validate(config)
    with workdir_lib.claim(workdir, config):
        finished = workdir_lib.finished_summary(workdir)
        if finished is not None:  # nothing is rewritten: every file stays as it was
            logging.info("%s has finished already: its summary.json is the result", workdir)
            return finished
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    task = task_of(config)
    ds = input_pipeline.load_dataset(data_config(config))
    logging.info(
        "data %s from %s: %d train, %d test", ds.name, ds.source, ds.num_train, ds.num_test
    )
    num_steps = resolve_num_steps(config, ds.num_train)
    model = build_model(config, ds)
    tx = optim.make_optimizer(config.optimizer, num_steps)
    trainable = Trainable.create(model, tx)
    run = RunLoop(LoopOptions.from_config(config, num_steps), workdir, task, ds, trainable, tx)
    final = run.train()
    return write_summary(config, workdir, trainable, task, ds, final, run.elapsed, num_steps)


def load_trained(
    config: ml_collections.ConfigDict, workdir: str, ds: input_pipeline.Dataset | None = None
) -> tuple[Trainable, input_pipeline.Dataset]:
    """The model `config` trained in `workdir` (its newest checkpoint), and its dataset."""
    ds = ds if ds is not None else input_pipeline.load_dataset(data_config(config))
    num_steps = resolve_num_steps(config, ds.num_train)
    trainable = Trainable.create(
        build_model(config, ds), optim.make_optimizer(config.optimizer, num_steps)
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        latest = ckpt.restore_latest({"train": trainable.state, "elapsed": np.float64(0)})
    finally:
        ckpt.close()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train {workdir} first")
    trainable.state = latest[1]["train"]
    return trainable, ds


def size_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The model-level size and FLOP figures of a `tnjax.models.model_report`."""
    return {
        "params": report["params"],
        "dense_equivalent_params": report["dense_equivalent_params"],
        "compression": report["compression"],
        "flops_per_example": report["flops"],
        "dense_flops_per_example": report["dense_flops"],
        "flops_ratio": report["flops_ratio"],
    }


def write_summary(
    config: ml_collections.ConfigDict,
    workdir: str,
    trainable: Trainable,
    task: Task,
    ds: input_pipeline.Dataset,
    final: Mapping[str, float],
    wall_time: float,
    num_steps: int,
) -> dict[str, Any]:
    """`summary.json` (accuracy, sizes, FLOPs, per-layer formats and ranks) and `curves.png`."""
    model = trainable.model(train=False)
    report = models.model_report(model, *example_inputs(task, ds.test))
    summary = {
        "config": config.get("name", config.model.name),
        "dataset": ds.name,
        "data_source": ds.source,
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        **size_summary(report),
        "layers": report["layers"],
        "steps": num_steps,
        "batch_size": int(config.batch_size),
        "wall_time_sec": wall_time,
    }
    metrics.plot_curves(
        metrics.read_metrics(workdir),
        os.path.join(workdir, "curves.png"),
        title=f"{summary['config']} on {ds.name}",
    )
    # last: a summary.json marks a finished run (see workdir.finished_summary)
    write_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE), summary)
    return summary
