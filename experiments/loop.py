"""The training loop every trainer uses: typed options, resume, steps, logging,
evaluation, checkpoints, on a device mesh with each process feeding its rows.

`RunLoop(options, workdir, task, ds, trainable, tx)` trains `trainable` for
`options.num_steps` steps in `workdir`: the `train` trainer, the Bayesian trainer, each
block of compression phase 1, the end-to-end comparison, phase 2 and fine-tuning all run
through it. What differs between them is what is trained (`Trainable.create`'s
`param_filter` and mode) and what is minimised (`extra_loss` or `objective`).

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
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import input_pipeline, metrics, sharding
from experiments.checkpoint import Checkpointer
from experiments.tasks import Task

__all__ = [
    "LoopOptions",
    "NonFiniteLossError",
    "RunLoop",
    "Trainable",
    "evaluate",
    "evaluate_model",
    "finetune",
    "make_eval_step",
    "make_train_step",
]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """How a `RunLoop` runs.

    num_steps: steps to train. batch_size: the global batch (over every device of every
    process). seed: of the batch order and augmentation. eval_batch_size: None = batch_size.
    log_every: steps between progress lines / metrics records. eval_every: steps between
    test evaluations (None: only at the end). checkpoint_every: steps between checkpoints
    (None: only at the end). max_checkpoints: how many are kept. augment: see
    `input_pipeline.train_batch`. tensorboard: also write TensorBoard events. mesh: the
    `config.mesh` fields (experiments/sharding.py). kill_at_step: test hook, SIGKILL after
    this step. batch_offset: step s trains on batch `batch_offset + s` of the stream (phase
    1's blocks continue one stream); evaluations fall where `batch_offset + step` is a
    multiple of eval_every. evaluate_at_end: evaluate on the test split after the last step.
    """

    num_steps: int
    batch_size: int
    seed: int = 0
    eval_batch_size: int | None = None
    log_every: int = 100
    eval_every: int | None = None
    checkpoint_every: int | None = None
    max_checkpoints: int = 3
    augment: str | None = None
    tensorboard: bool = True
    mesh: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    kill_at_step: int | None = None
    batch_offset: int = 0
    evaluate_at_end: bool = True

    @classmethod
    def from_config(cls, config: Any, num_steps: int, **changes: Any) -> LoopOptions:
        """The options of a trainer config (`train`, `bayes` or `compress`), with `changes`.

        The loop fields (seed, batch sizes, log/eval/checkpoint intervals, tensorboard,
        mesh, debug.kill_at_step) are read where the schema puts them; augment from
        `config.data.augment`, or a compress config's top-level `augment`.
        """
        data = config.get("data", None) or {}
        debug = config.get("debug", None) or {}
        fields = {
            "num_steps": int(num_steps),
            "batch_size": int(config.batch_size),
            "seed": int(config.seed),
            "eval_batch_size": config.get("eval_batch_size", None),
            "log_every": int(config.get("log_every", 100)),
            "eval_every": config.get("eval_every", None),
            "checkpoint_every": config.get("checkpoint_every", None),
            "max_checkpoints": int(config.get("max_checkpoints", 3)),
            "augment": data.get("augment", config.get("augment", None)),
            "tensorboard": bool(config.get("tensorboard", True)),
            "mesh": dict(sharding.mesh_config(config)),
            "kill_at_step": debug.get("kill_at_step", None),
        }
        return cls(**{**fields, **changes})


@dataclasses.dataclass
class Trainable:
    """A model split for functional training: graph definitions plus the state pytree.

    `state` = {"step": int32, "params": nnx.State of `param_filter`, "rest": nnx.State of the
    other variables (batch-norm statistics, and the parameters not trained), "opt_state":
    optax state}. `train_mode` False trains the model in inference mode (batch norm uses
    and keeps its running statistics), as compression phase 1 does.
    """

    train_graph: Any
    eval_graph: Any
    state: dict[str, Any]
    param_filter: Any = nnx.Param

    @classmethod
    def create(
        cls,
        model: nnx.Module,
        tx: optax.GradientTransformation,
        param_filter: Any = nnx.Param,
        *,
        train_mode: bool = True,
    ) -> Trainable:
        model.eval()
        eval_graph, _, _ = nnx.split(model, param_filter, ...)
        if train_mode:
            model.train()
        train_graph, params, rest = nnx.split(model, param_filter, ...)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "rest": rest,
            "opt_state": tx.init(params),
        }
        return cls(train_graph, eval_graph, state, param_filter)

    def model(self, *, train: bool = False) -> nnx.Module:
        """The NNX model holding the current state (in train or eval mode)."""
        graph = self.train_graph if train else self.eval_graph
        return nnx.merge(graph, self.state["params"], self.state["rest"])


def _kill_every_process() -> None:
    """The `debug.kill_at_step` hook: SIGKILL this process, as a crash would.

    In a multi-process job every process first waits for the others (all have written
    their part of the checkpoint), then the non-leaders die; the leader, which hosts the
    coordination service, dies a moment later so that no peer is aborted by the service
    while it is still working.
    """
    import signal

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("tnjax_kill_at_step")
        if jax.process_index() == 0:
            time.sleep(2.0)
    os.kill(os.getpid(), signal.SIGKILL)


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
    sampled weights); the logged loss is still the task's loss of `outputs`, or the
    objective itself when `outputs` is None (e.g. phase 1's block MSE, no model output).
    """
    graph = trainable.train_graph
    param_filter = trainable.param_filter

    def loss_fn(params, rest, batch, step):
        # copy: fresh Variables at this trace level, so batch norm may update its statistics
        model = nnx.merge(graph, params, rest, copy=True)
        if objective is None:
            out = model(*task.inputs(batch))
        else:
            total, out = objective(model, batch, step)
        if out is None:
            loss, correct = total, jnp.zeros(())
        else:
            loss_B, correct_B = task.loss(out, batch["label"])
            loss, correct = jnp.mean(loss_B), jnp.sum(correct_B)
        if objective is None:
            total = loss + (extra_loss(model, batch, out) if extra_loss is not None else 0.0)
        new_rest = nnx.split(model, param_filter, ...)[2]
        return total, (loss, correct, new_rest)

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
    batch_sharding: Any,
) -> dict[str, float]:
    """Loss and accuracy over a whole split (every example once).

    With a `batch_sharding` and several processes, each process feeds its rows of every batch.
    """
    total = None
    process = (jax.process_index(), jax.process_count()) if batch_sharding is not None else (0, 1)
    for batch in input_pipeline.eval_batches(split, batch_size):
        batch = input_pipeline.process_rows(batch, process)
        sums = eval_step(
            state["params"], state["rest"], sharding.shard_batch(batch, batch_sharding)
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


class RunLoop:
    """The training loop of every trainer: resume, steps, logging, evaluation, checkpoints.

    Args:
      options: how it runs (`LoopOptions`).
      workdir: its checkpoints (`workdir/checkpoints`), metrics.jsonl and TensorBoard files.
      task, ds: what a batch feeds and how it is scored; the data.
      trainable, tx: what is trained and the optax transformation (its state is in
        `trainable.state`).
      extra_loss, objective: those of `make_train_step`.
      on_log: `on_log(step, trainable)` after each progress line.
      on_restore: `on_restore(step)` with the step the run resumes from (0 for a fresh run),
        before the first step (e.g. to cut another log back to it).
    """

    def __init__(
        self,
        options: LoopOptions,
        workdir: str,
        task: Task,
        ds: input_pipeline.Dataset,
        trainable: Trainable,
        tx: optax.GradientTransformation,
        *,
        extra_loss: Callable | None = None,
        objective: Callable | None = None,
        on_log: Callable[[int, Trainable], None] | None = None,
        on_restore: Callable[[int], None] | None = None,
    ):
        self.options, self.workdir, self.task, self.ds = options, workdir, task, ds
        self.trainable, self.num_steps = trainable, int(options.num_steps)
        self.on_log, self.on_restore = on_log, on_restore
        self.batch_size = int(options.batch_size)  # global: over every device of every process
        mesh_options = sharding.mesh_config({"mesh": dict(options.mesh)})
        self.mesh = sharding.make_mesh(mesh_options.data, mesh_options.model)
        sharding.check_batch_size(self.batch_size, self.mesh.shape["data"])
        self.process = (jax.process_index(), jax.process_count())
        input_pipeline.process_slice(self.batch_size, self.process)  # raises if P does not divide B
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.state_sharding = sharding.state_shardings(
            trainable.state, self.mesh, {"mesh": dict(mesh_options)}
        )
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
            os.path.join(workdir, "checkpoints"), max_to_keep=int(options.max_checkpoints)
        )
        self.elapsed = 0.0

    def _restore(self) -> int:
        """Resumes from the newest checkpoint that restores (see `restore_latest`); its step."""
        like = {"train": self.trainable.state, "elapsed": np.float64(0)}
        # straight onto this run's mesh, whatever the mesh of the run that wrote it
        shardings = {"train": self.state_sharding, "elapsed": None}
        latest = self.ckpt.restore_latest(like, shardings=shardings)
        step = 0
        if latest is not None:
            step, restored = latest
            self.trainable.state = restored["train"]
            self.elapsed = float(restored["elapsed"])
            logging.info("resumed from the checkpoint at step %d in %s", step, self.ckpt.directory)
        metrics.truncate_metrics(self.workdir, step)
        if self.on_restore is not None:
            self.on_restore(step)
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
        size = self.options.eval_batch_size or self.batch_size
        return size - size % jax.device_count() or jax.device_count()

    def _due(self, every: int | None, done: int) -> bool:
        return bool(every) and (self.options.batch_offset + done) % every == 0

    def train(self) -> dict[str, float] | None:
        """Runs the remaining steps; returns the final test metrics (None when
        `options.evaluate_at_end` is False)."""
        opts = self.options
        start = self._restore()
        state = jax.device_put(self.trainable.state, self.state_sharding)
        log_every = max(1, int(opts.log_every))
        writer = metrics.MetricWriter(self.workdir, tensorboard=opts.tensorboard)
        window = None  # metric sums since the last log line, on the device
        nonfinite = jnp.zeros(())
        t_window, steps_window = time.perf_counter(), 0
        t_run = time.perf_counter()
        elapsed0 = self.elapsed
        try:
            for step in range(start, self.num_steps):
                batch = input_pipeline.train_batch(
                    self.ds,
                    opts.batch_offset + step,
                    self.batch_size,
                    seed=int(opts.seed),
                    augment=opts.augment,
                    process=self.process,
                )
                state, sums = self.train_step(
                    state, sharding.shard_batch(batch, self.batch_sharding)
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
                if self._due(opts.eval_every, done) and not (last and opts.evaluate_at_end):
                    self._eval(writer, done)
                if (opts.checkpoint_every and done % opts.checkpoint_every == 0) or last:
                    self._guard(float(jax.device_get(nonfinite)), done)
                    self.elapsed = elapsed0 + time.perf_counter() - t_run
                    self._save(done)
                if done == opts.kill_at_step:  # test hook: a real SIGKILL, mid-run, after this step
                    writer.close()
                    _kill_every_process()
            self.elapsed = elapsed0 + time.perf_counter() - t_run
            if not opts.evaluate_at_end:
                return None
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
    options: LoopOptions,
    workdir: str,
    task: Task,
    ds: input_pipeline.Dataset,
    *,
    learning_rate: float,
    extra_loss: Callable | None = None,
) -> tuple[nnx.Module, dict[str, float]]:
    """End-to-end training of `model` (Adam, cosine from `learning_rate` over
    `options.num_steps`) in `workdir`, checkpointed and resumable like any run.

    Used after compression (phase 2) and after Bayesian pruning. Returns the trained model
    (eval mode) and its test metrics.
    """
    tx = optax.adam(optax.cosine_decay_schedule(float(learning_rate), int(options.num_steps)))
    model.train()
    trainable = Trainable.create(model, tx)
    result = RunLoop(options, workdir, task, ds, trainable, tx, extra_loss=extra_loss).train()
    return trainable.model(train=False), result
