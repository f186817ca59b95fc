"""Trainer `train`: a dense or tensorized model trained from scratch.

    python -m experiments.main --config=configs/lenet5.py --workdir=/tmp/lenet5

What it does, in order: load the data (`input_pipeline`), build the model through its layer
factory (`tnjax.models.create_model`), resume from the newest checkpoint in `workdir/checkpoints`
if there is one, train with optax (evaluating every `eval_every` steps, logging a progress line
and `metrics.jsonl` / TensorBoard every `log_every` steps, checkpointing every
`checkpoint_every` steps and at the end), then evaluate on the test split and write
`summary.json` and `curves.png`.

Exact resume: a batch is a pure function of (seed, step) (`input_pipeline.train_batch`), the
checkpoint holds the step, parameters, batch-norm statistics and optimizer state, and
`metrics.jsonl` is cut back to the restored step; so a run killed at any point (even
`kill -9`) and restarted with the same workdir ends with the same parameters and metrics as
an uninterrupted one.

NaN/Inf guard: each step checks its loss and gradients on the device and, when they are not
finite, leaves the state unchanged (no host sync). The host looks at the count at every log
and checkpoint step; if it is non-zero the run stops with `NonFiniteLossError` and no new
checkpoint, so the last good one is kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import input_pipeline, metrics, optim, sharding
from experiments.checkpoint import Checkpointer, write_json
from tnjax import models

__all__ = [
    "train_and_evaluate",
    "NonFiniteLossError",
    "Task",
    "TASKS",
    "build_model",
    "load_trained",
    "evaluate_model",
    "size_summary",
    "RunLoop",
    "resolve_num_steps",
    "Trainable",
]

# Config keys that may change between an interrupted run and its resumption (a checkpoint
# restores onto any mesh).
RESUME_MAY_CHANGE = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "max_checkpoints",
    "debug",
    "mesh",
)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/Inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- tasks


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


def task_of(config: ml_collections.ConfigDict) -> Task:
    name = config.get("task", "classification")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


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
        if name == "lenet5":
            kwargs.setdefault("in_channels", int(ds.train["image"].shape[-1]))
    layers = mc.get("layers", None)
    layers = clean_layer_specs(layers.to_dict() if hasattr(layers, "to_dict") else layers)
    return models.create_model(name, rngs=nnx.Rngs(config.seed), layers=layers, **kwargs)


def clean_layer_specs(layers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Drops the "not set" placeholders of config files (rank 0, compression 0, "" strings)."""
    if layers is None:
        return None

    def clean(spec: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if v not in (0, 0.0, "", None) or k == "format"}

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
    """`config.num_steps`, or `num_epochs` epochs of `batch_size` (drop remainder)."""
    if config.get("num_steps", 0) and config.num_steps > 0:
        return int(config.num_steps)
    epochs = float(config.get("num_epochs", 0) or 0)
    if epochs <= 0:
        raise ValueError("set config.num_steps or config.num_epochs to a positive number")
    spe = input_pipeline.steps_per_epoch(num_train, config.batch_size)
    return max(1, int(round(epochs * spe)))


@dataclasses.dataclass
class Trainable:
    """A model split for functional training: graph definitions plus the state pytree.

    `state` = {"step": int32, "params": nnx.State of `param_filter`, "rest": nnx.State of the
    other variables (batch-norm statistics), "opt_state": optax state}.
    """

    train_graph: Any
    eval_graph: Any
    state: dict[str, Any]

    @classmethod
    def create(
        cls, model: nnx.Module, tx: optax.GradientTransformation, param_filter: Any = nnx.Param
    ) -> Trainable:
        model.eval()
        eval_graph, _, _ = nnx.split(model, param_filter, ...)
        model.train()
        train_graph, params, rest = nnx.split(model, param_filter, ...)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "rest": rest,
            "opt_state": tx.init(params),
        }
        return cls(train_graph, eval_graph, state)

    def model(self, *, train: bool = False) -> nnx.Module:
        """The NNX model holding the current state (in train or eval mode)."""
        graph = self.train_graph if train else self.eval_graph
        return nnx.merge(graph, self.state["params"], self.state["rest"])


def _tree_all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
    trainable: Trainable,
    tx: optax.GradientTransformation,
    task: Task,
    extra_loss: Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array], jax.Array] | None = None,
    objective: Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Any]]
    | None = None,
    state_sharding: Any = None,
    batch_sharding: Any = None,
) -> Callable:
    """A jitted `(state, batch) -> (state, metric sums)` with the NaN/Inf guard.

    `state_sharding` (a pytree of shardings like the state, see `sharding.state_shardings`)
    and `batch_sharding` (e.g. `NamedSharding(mesh, P("data"))`), if given, pin the step's
    input and output layouts, so the state keeps its sharding from step to step; the metric
    sums come out replicated.

    `extra_loss(model, batch, outputs)`, if given, is added to the task's loss (e.g. a
    distillation term or a prior); the logged loss is the task's alone.
    `objective(model, batch, step) -> (loss to minimise, outputs)`, if given, replaces the
    task's mean loss (+ extra_loss) as what is minimised (e.g. a negative ELBO computed on
    sampled weights); the logged loss is still the task's loss of `outputs`.
    """
    graph = trainable.train_graph

    def loss_fn(params, rest, batch, step):
        # copy: fresh Variables at this trace level, so batch norm may update its statistics
        model = nnx.merge(graph, params, rest, copy=True)
        if objective is None:
            out = model(*task.inputs(batch))
        else:
            total, out = objective(model, batch, step)
        loss_B, correct_B = task.loss(out, batch["label"])
        loss = jnp.mean(loss_B)
        if objective is None:
            total = loss + (extra_loss(model, batch, out) if extra_loss is not None else 0.0)
        new_rest = nnx.split(model, nnx.Param, ...)[2]
        return total, (loss, jnp.sum(correct_B), new_rest)

    def train_step(state, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (loss, correct, new_rest)), grads = grad_fn(
            state["params"], state["rest"], batch, state["step"]
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & _tree_all_finite(grads)
        candidate = {"params": params, "rest": new_rest, "opt_state": opt_state}
        kept = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            candidate,
            {k: state[k] for k in candidate},
        )
        new_state = {"step": state["step"] + 1, **kept}
        n = batch["label"].shape[0]
        sums = {
            "loss": jnp.where(finite, loss, 0.0) * n,
            "correct": correct.astype(jnp.float32),
            "count": jnp.float32(n),
            "nonfinite": jnp.float32(1) - finite.astype(jnp.float32),
        }
        return new_state, sums

    if state_sharding is None:
        return jax.jit(train_step, donate_argnums=0)
    replicated = NamedSharding(batch_sharding.mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )


def make_eval_step(trainable: Trainable, task: Task) -> Callable:
    """A jitted `(params, rest, batch) -> sums of loss, correct and count` over real rows."""
    graph = trainable.eval_graph

    def eval_step(params, rest, batch):
        model = nnx.merge(graph, params, rest, copy=True)
        loss_B, correct_B = task.loss(model(*task.inputs(batch)), batch["label"])
        mask = batch["mask"]
        return {
            "loss": jnp.sum(loss_B * mask),
            "correct": jnp.sum(correct_B * mask),
            "count": jnp.sum(mask),
        }

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable,
    state: Mapping[str, Any],
    split: Mapping[str, np.ndarray],
    batch_size: int,
    sharding: Any,
) -> dict[str, float]:
    """Loss and accuracy over a whole split (every example once).

    With a `sharding` and several processes, each process feeds its rows of every batch.
    """
    total = None
    process = (jax.process_index(), jax.process_count()) if sharding is not None else (0, 1)
    for batch in input_pipeline.eval_batches(split, batch_size):
        batch = input_pipeline.process_rows(batch, process)
        sums = eval_step(
            state["params"], state["rest"], input_pipeline.shard_batch(batch, sharding)
        )
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    count = max(float(total["count"]), 1.0)
    return {"loss": float(total["loss"]) / count, "accuracy": float(total["correct"]) / count}


def evaluate_model(
    model: nnx.Module, task: Task, split: Mapping[str, np.ndarray], batch_size: int
) -> dict[str, float]:
    """Loss and accuracy of an NNX model (in eval mode) over a whole split."""
    trainable = Trainable.create(model, optax.identity())
    return evaluate(make_eval_step(trainable, task), trainable.state, split, batch_size, None)


# --------------------------------------------------------------------------- run bookkeeping


# Workdirs written before 2026-12-01 store the old "not set" markers of these data fields
# ("" and 0); they meant what None means now, so such runs still resume.
_LEGACY_UNSET = {"data_dir": "", "tfds_data_dir": "", "num_train": 0, "num_test": 0}


def _legacy_unset_as_none(config: Any) -> Any:
    if not isinstance(config, Mapping):
        return config
    out = {k: _legacy_unset_as_none(v) for k, v in config.items()}
    data = out.get("data")
    if isinstance(data, dict):
        out["data"] = {
            k: None if k in _LEGACY_UNSET and v == _LEGACY_UNSET[k] else v for k, v in data.items()
        }
    return out


def _config_for_comparison(config: Mapping[str, Any]) -> dict[str, Any]:
    config = _legacy_unset_as_none(config)
    return {k: v for k, v in config.items() if k not in RESUME_MAY_CHANGE}


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `workdir/config.json`, or checks that a resumed run uses the same config."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        a, b = _config_for_comparison(saved), _config_for_comparison(current)
        if a != b:
            diffs = _diff_keys(a, b)
            raise ValueError(
                f"{workdir} holds a run with a different config (differs in: {', '.join(diffs)}). "
                "Resume with the same config, or use a new --workdir."
            )
    write_json(path, current)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def example_inputs(task: Task, split: Mapping[str, np.ndarray]) -> tuple[jax.Array, ...]:
    """The model inputs of one example (batch of 1), for cost reports."""
    one = {k: v[:1] for k, v in split.items()}
    return tuple(jnp.asarray(x) for x in task.inputs(one))


# --------------------------------------------------------------------------- the trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config`'s model from scratch (or resumes it) and writes the summary.

    Returns:
      the dict written to `workdir/summary.json`.
    """
    os.makedirs(workdir, exist_ok=True)
    check_resumable(workdir, config)
    task = task_of(config)
    ds = input_pipeline.load_dataset(data_config(config))
    logging.info(
        "data %s from %s: %d train, %d test", ds.name, ds.source, ds.num_train, ds.num_test
    )
    num_steps = resolve_num_steps(config, ds.num_train)
    model = build_model(config, ds)
    tx = optim.make_optimizer(config.optimizer, num_steps)
    trainable = Trainable.create(model, tx)
    run = RunLoop(config, workdir, task, ds, trainable, tx, num_steps)
    final = run.train()
    return write_summary(config, workdir, trainable, task, ds, final, run.elapsed, num_steps)


class RunLoop:
    """The loop shared by the trainers: resume, steps, logging, evaluation, checkpoints."""

    def __init__(
        self,
        config,
        workdir,
        task,
        ds,
        trainable,
        tx,
        num_steps,
        extra_loss=None,
        on_log=None,
        objective=None,
    ):
        """`on_log(step, trainable)`, if given, runs after each progress line;
        `extra_loss` and `objective` are those of `make_train_step`."""
        self.on_log = on_log
        self.config, self.workdir, self.task, self.ds = config, workdir, task, ds
        self.trainable, self.num_steps = trainable, num_steps
        self.batch_size = int(config.batch_size)  # global: over every device of every process
        mc = sharding.mesh_config(config)
        self.mesh = sharding.make_mesh(mc.data, mc.model)
        input_pipeline.check_batch_size(self.batch_size, self.mesh.shape["data"])
        self.process = (jax.process_index(), jax.process_count())
        input_pipeline.process_slice(self.batch_size, self.process)  # raises if P does not divide B
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.state_sharding = sharding.state_shardings(trainable.state, self.mesh, config)
        for line in sharding.describe_shardings(trainable.state, self.state_sharding):
            logging.info("sharded along model: %s", line)
        self.train_step = make_train_step(
            trainable,
            tx,
            task,
            extra_loss,
            objective,
            state_sharding=self.state_sharding,
            batch_sharding=self.batch_sharding,
        )
        self.eval_step = make_eval_step(trainable, task)
        self.ckpt = Checkpointer(
            os.path.join(workdir, "checkpoints"), max_to_keep=int(config.get("max_checkpoints", 3))
        )
        self.elapsed = 0.0

    def _restore(self) -> int:
        step = self.ckpt.latest_step()
        if step is None:
            metrics.truncate_metrics(self.workdir, 0)
            return 0
        like = {"train": self.trainable.state, "elapsed": np.float64(0)}
        # straight onto this run's mesh, whatever the mesh of the run that wrote it
        shardings = {"train": self.state_sharding, "elapsed": None}
        restored = self.ckpt.restore(like, step, shardings=shardings)
        self.trainable.state = restored["train"]
        self.elapsed = float(restored["elapsed"])
        metrics.truncate_metrics(self.workdir, step)
        logging.info("resumed from the checkpoint at step %d in %s", step, self.ckpt.directory)
        return step

    def _save(self, step: int) -> None:
        self.ckpt.save(step, {"train": self.trainable.state, "elapsed": np.float64(self.elapsed)})

    def _eval(self, writer: metrics.MetricWriter, step: int) -> dict[str, float]:
        result = evaluate(
            self.eval_step,
            self.trainable.state,
            self.ds.test,
            self.eval_batch_size(),
            self.batch_sharding,
        )
        writer.write(step, "test", result)
        logging.info(
            "step %d/%d | test loss %.4f | test accuracy %.4f",
            step,
            self.num_steps,
            result["loss"],
            result["accuracy"],
        )
        return result

    def eval_batch_size(self) -> int:
        """`eval_batch_size` (default: the training batch), a multiple of the device count."""
        size = int(self.config.get("eval_batch_size", 0) or self.batch_size)
        return size - size % jax.device_count() or jax.device_count()

    def train(self) -> dict[str, float]:
        """Runs the remaining steps; returns the final test metrics."""
        config = self.config
        start = self._restore()
        state = jax.device_put(self.trainable.state, self.state_sharding)
        log_every = max(1, int(config.get("log_every", 100)))
        eval_every = int(config.get("eval_every", 0) or 0)
        ckpt_every = int(config.get("checkpoint_every", 0) or 0)
        kill_at = (
            int(config.get("debug", {}).get("kill_at_step", -1)) if config.get("debug") else -1
        )
        augment = config.data.get("augment", None)
        writer = metrics.MetricWriter(self.workdir, tensorboard=config.get("tensorboard", True))
        window = None  # metric sums since the last log line, on the device
        nonfinite = jnp.zeros(())
        t_window, steps_window = time.perf_counter(), 0
        t_run = time.perf_counter()
        elapsed0 = self.elapsed
        try:
            for step in range(start, self.num_steps):
                batch = input_pipeline.train_batch(
                    self.ds,
                    step,
                    self.batch_size,
                    seed=int(config.seed),
                    augment=augment,
                    process=self.process,
                )
                state, sums = self.train_step(
                    state, input_pipeline.shard_batch(batch, self.batch_sharding)
                )
                window = sums if window is None else jax.tree.map(jnp.add, window, sums)
                nonfinite = nonfinite + sums["nonfinite"]
                steps_window += 1
                done = step + 1
                self.trainable.state = state
                last = done == self.num_steps
                if done % log_every == 0 or last:
                    window = jax.device_get(window)
                    self._guard(float(window["nonfinite"]), done)
                    dt = time.perf_counter() - t_window
                    count = max(float(window["count"]), 1.0)
                    scalars = {
                        "loss": float(window["loss"]) / count,
                        "accuracy": float(window["correct"]) / count,
                    }
                    writer.write(done, "train", {**scalars, "examples_per_sec": count / dt})
                    logging.info(
                        "%s",
                        metrics.progress_line(
                            done,
                            self.num_steps,
                            {**scalars, "_sec_per_step": dt / steps_window},
                            count / dt,
                        ),
                    )
                    window, steps_window, t_window = None, 0, time.perf_counter()
                    if self.on_log is not None:
                        self.on_log(done, self.trainable)
                if eval_every and done % eval_every == 0 and not last:
                    self._eval(writer, done)
                if (ckpt_every and done % ckpt_every == 0) or last:
                    self._guard(float(jax.device_get(nonfinite)), done)
                    self.elapsed = elapsed0 + time.perf_counter() - t_run
                    self._save(done)
                if done == kill_at:  # test hook: a real SIGKILL, mid-run, after this step
                    import signal

                    writer.close()
                    os.kill(os.getpid(), signal.SIGKILL)
            self.elapsed = elapsed0 + time.perf_counter() - t_run
            return self._eval(writer, self.num_steps)
        finally:
            writer.close()
            self.ckpt.close()

    def _guard(self, nonfinite: float, step: int) -> None:
        if nonfinite > 0:
            last = self.ckpt.latest_step()
            kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint"
            raise NonFiniteLossError(
                f"the loss or gradients became NaN/Inf in {int(nonfinite)} step(s) up to step "
                f"{step}; stopped, {kept} in {self.ckpt.directory}. Lower the learning rate, "
                "add gradient clipping (config.optimizer.grad_clip), or check the data."
            )


def finetune(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    workdir: str,
    task: Task,
    ds: input_pipeline.Dataset,
    *,
    steps: int,
    learning_rate: float,
    checkpoint_every: int = 500,
    extra_loss: Callable | None = None,
) -> tuple[nnx.Module, dict[str, float]]:
    """End-to-end training of `model` (Adam, cosine from `learning_rate`) in `workdir`.

    Checkpointed and resumable like any run; seed, batch sizes, logging, TensorBoard and
    augmentation come from the parent run's `config`. Used after compression (phase 2) and
    after Bayesian pruning. Returns the trained model (eval mode) and its test metrics.
    """
    cfg = ml_collections.ConfigDict(
        {
            "seed": int(config.seed),
            "batch_size": int(config.batch_size),
            "eval_batch_size": int(config.get("eval_batch_size", 1000)),
            "log_every": int(config.get("log_every", 100)),
            "eval_every": 0,
            "checkpoint_every": int(checkpoint_every),
            "tensorboard": bool(config.get("tensorboard", True)),
            "mesh": dict(sharding.mesh_config(config)),
            "data": {
                "augment": config.get("augment", config.get("data", {}).get("augment", "none"))
            },
        }
    )
    tx = optax.adam(optax.cosine_decay_schedule(float(learning_rate), int(steps)))
    model.train()
    trainable = Trainable.create(model, tx)
    loop = RunLoop(cfg, workdir, task, ds, trainable, tx, int(steps), extra_loss=extra_loss)
    result = loop.train()
    return trainable.model(train=False), result


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
        like = {"train": trainable.state, "elapsed": np.float64(0)}
        trainable.state = ckpt.restore(like)["train"]
    finally:
        ckpt.close()
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
    write_json(os.path.join(workdir, "summary.json"), summary)
    metrics.plot_curves(
        metrics.read_metrics(workdir),
        os.path.join(workdir, "curves.png"),
        title=f"{summary['config']} on {ds.name}",
    )
    return summary
