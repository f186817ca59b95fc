"""Trainer `compress`: the TNN paper's compression pipeline on a trained model.

    python -m experiments.main --config=configs/compress_lenet5.py:format=rcp,rate=0.1 \\
        --workdir=runs/compress/lenet5_rcp_0.1

1. **Teacher.** Trains the dense model of `config.teacher` in `config.teacher_workdir`
   (default `WORKDIR/teacher`), or resumes / reuses it if it is there already.
2. **Decomposition.** `tnjax.compress.compress_model`: every eligible layer (default: all
   but the first conv and the last dense) becomes `config.format` at `config.rate` of its
   dense parameters, initialised by decomposing the trained kernel.
3. **Phase 1, sequential training.** For each block (a compressed layer, or a ResNet stage)
   in forward order: `phase1.steps_per_block` Adam steps on the MSE between the block's output
   in the compressed network (fed by the earlier, already trained, compressed blocks) and
   in the original, batch norm in inference mode, only the block's parameters trained.
4. **Phase 2, fine-tuning** (if `phase2.steps > 0`): end to end with cross-entropy, plus
   `phase2.kd_weight` times the KL divergence to the teacher's softened logits.

Evaluates after each phase; `summary.json` has per-layer formats, ranks, params and FLOPs,
the measured compression and FLOP ratios, and the accuracy of the dense model, after
decomposition, after phase 1 and after phase 2. With `compare_end_to_end`, the same
decomposition is also trained end to end (cross-entropy) for as many steps as phase 1 took,
and both accuracy curves go into the summary (the paper's convergence claim).

Every phase trains through the shared loop (`experiments.loop.RunLoop`: the mesh, each
process its rows, metrics, checkpoints) in its own directory: `WORKDIR/phase1/blockNN_NAME`
per block, `WORKDIR/end_to_end`, `WORKDIR/phase2`; a restarted run restores what is done
and goes on where it stopped. The config is checked before any teacher is trained, and a
finished run is returned untouched (see experiments/workdir.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from experiments import input_pipeline, loop, metrics, schema, sharding, train
from experiments import workdir as workdir_lib
from experiments.checkpoint import write_json
from experiments.tasks import example_inputs, task_of
from tnjax import compress as tnc
from tnjax import models

__all__ = ["train_and_evaluate", "kd_loss"]


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Hinton et al.'s distillation term: T^2 KL(softmax(t/T) || softmax(s/T)), batch mean."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    return temperature**2 * jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


def _format_spec(config: ml_collections.ConfigDict) -> Any:
    """`config.format`, with `linear_format` overriding it for Linear layers if set."""
    linear = config.get("linear_format", None)
    if linear is None:
        return config.format
    return {"*": config.format, "fc*": linear}


def _rate_spec(config: ml_collections.ConfigDict) -> Any:
    """`config.rate`, or {"*": rate, **rate_overrides} when per-layer rates are given."""
    overrides = dict(config.get("rate_overrides", {}) or {})
    if not overrides:
        return float(config.rate)
    return {"*": float(config.rate), **{k: float(v) for k, v in overrides.items()}}


class _Compression:
    """State of one compression run (the phases are methods, run in order by the trainer).

    Every phase trains through `loop.RunLoop` (typed options, the mesh, each process its
    rows, checkpoints, resume) in its own directory under the workdir.
    """

    def __init__(self, config, workdir, teacher_model, ds, task):
        self.config, self.workdir, self.ds, self.task = config, workdir, ds, task
        self.teacher = teacher_model
        self.teacher.eval()
        self.eval_batch = int(config.get("eval_batch_size", None) or config.batch_size)
        self.example = example_inputs(task, ds.test)
        self.seed = int(config.seed)

    def decompose(self) -> tuple[nnx.Module, list[dict]]:
        layers = list(self.config.layers) if self.config.get("layers") else None
        return tnc.compress_model(
            self.teacher,
            *self.example,
            format=_format_spec(self.config),
            rate=_rate_spec(self.config),
            layers=layers,
            key=jax.random.key(self.seed),
        )

    def evaluate(self, model) -> dict[str, float]:
        return loop.evaluate_model(model, self.task, self.ds.test, self.eval_batch)

    def _options(self, num_steps: int, **changes) -> loop.LoopOptions:
        """The loop options of a phase: the run's, without the test hook."""
        return loop.LoopOptions.from_config(self.config, num_steps, kill_at_step=None, **changes)

    def block_dir(self, b: int, block: tnc.DistillBlock) -> str:
        return os.path.join(self.workdir, "phase1", f"block{b:02d}_{block.name}")

    def phase1(self, model, blocks, *, curve_every: int = 0) -> nnx.Module:
        """Sequential training: block b (its parameters only, batch norm in inference mode)
        minimises the MSE to the teacher's block output on batches b*S .. (b+1)*S - 1 of the
        stream (S = steps_per_block), in WORKDIR/phase1/blockNN_NAME; a finished block is
        restored from its checkpoint."""
        p1 = self.config.phase1
        steps = int(p1.steps_per_block)
        teacher_graph, teacher_state = nnx.split(self.teacher)
        for b, block in enumerate(blocks):
            t0 = time.perf_counter()
            model.eval()  # batch norm in inference mode
            tx = optax.adam(optax.cosine_decay_schedule(float(p1.learning_rate), max(steps, 1)))
            trainable = loop.Trainable.create(
                model, tx, tnc.block_param_filter(block), train_mode=False
            )

            def block_loss(student, batch, step, block=block):
                teacher = nnx.merge(teacher_graph, teacher_state, copy=True)
                images = self.task.inputs(batch)[0]
                return tnc.block_mse(student, teacher, block, images), None

            options = self._options(
                steps,
                eval_every=curve_every or None,
                checkpoint_every=None,
                max_checkpoints=1,
                batch_offset=b * steps,
                evaluate_at_end=False,
            )
            run = loop.RunLoop(
                options,
                self.block_dir(b, block),
                self.task,
                self.ds,
                trainable,
                tx,
                objective=block_loss,
            )
            run.train()
            model = trainable.model(train=False)
            logging.info(
                "phase 1 block %s (%s): %d steps, %.1fs",
                block.name,
                ",".join(block.layers),
                steps,
                time.perf_counter() - t0,
            )
        return model

    def phase1_curve(self, blocks) -> list[tuple[int, float]]:
        """(steps from the decomposition, test accuracy) of phase 1's evaluations."""
        steps = int(self.config.phase1.steps_per_block)
        curve = []
        for b, block in enumerate(blocks):
            for r in metrics.read_metrics(self.block_dir(b, block)):
                if r["split"] == "test":
                    curve.append((b * steps + r["step"], r["accuracy"]))
        return curve

    def end_to_end(self, model, num_steps: int, curve_every: int) -> list[tuple[int, float]]:
        """Cross-entropy training of `model` from its current weights (for comparison), in
        WORKDIR/end_to_end; returns its curve (step, test accuracy)."""
        p1 = self.config.phase1
        tx = optax.adam(optax.cosine_decay_schedule(float(p1.learning_rate), max(num_steps, 1)))
        model.train()
        trainable = loop.Trainable.create(model, tx)
        workdir = os.path.join(self.workdir, "end_to_end")
        options = self._options(
            num_steps, eval_every=curve_every, checkpoint_every=None, evaluate_at_end=False
        )
        loop.RunLoop(options, workdir, self.task, self.ds, trainable, tx).train()
        return [
            (r["step"], r["accuracy"])
            for r in metrics.read_metrics(workdir)
            if r["split"] == "test"
        ]

    def phase2(self, model) -> tuple[nnx.Module, dict[str, float]]:
        """End-to-end fine-tuning in WORKDIR/phase2 (checkpointed, resumable)."""
        p2 = self.config.phase2
        extra = None
        if float(p2.get("kd_weight", 0.0)) > 0:
            teacher_graph, teacher_state = nnx.split(self.teacher)
            weight, temp = float(p2.kd_weight), float(p2.get("kd_temperature", 4.0))

            def extra(student, batch, logits):
                teacher = nnx.merge(teacher_graph, teacher_state, copy=True)
                t_logits = jax.lax.stop_gradient(teacher(*self.task.inputs(batch)))
                return weight * kd_loss(logits, t_logits, temp)

        options = self._options(
            int(p2.steps), eval_every=None, checkpoint_every=int(p2.get("checkpoint_every", 500))
        )
        return loop.finetune(
            model,
            options,
            os.path.join(self.workdir, "phase2"),
            self.task,
            self.ds,
            learning_rate=float(p2.learning_rate),
            extra_loss=extra,
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the whole pipeline (see the module docstring); returns the summary (that of
    `summary.json`, unchanged, when the run in `workdir` has finished)."""
    schema.validate(config)  # before any teacher is trained
    with workdir_lib.claim(workdir, config):
        finished = workdir_lib.finished_summary(workdir)
        if finished is not None:
            return finished
        return _compress(config, workdir)


def _train_teacher(config: ml_collections.ConfigDict, workdir: str):
    """The teacher's summary, config and directory (trained, resumed, or reused untouched)."""
    teacher = schema.teacher_config(config)
    teacher_dir = config.get("teacher_workdir", None) or os.path.join(workdir, "teacher")
    logging.info("teacher: %s in %s", teacher.name, teacher_dir)
    try:
        summary = train.train_and_evaluate(teacher, teacher_dir)
    except workdir_lib.ConfigMismatchError as e:
        keys = [f"teacher.{k}" for k in e.keys]
        raise workdir_lib.ConfigMismatchError(e.workdir, keys) from None
    return summary, teacher, teacher_dir


def _student_data(config, teacher, teacher_ds: input_pipeline.Dataset) -> input_pipeline.Dataset:
    """The student's dataset: the teacher's, unless `config.data` differs from it."""
    student = train.data_config(config)
    inherited = {k: v for k, v in train.data_config(teacher).items() if k in student}
    if student == inherited:
        return teacher_ds
    return input_pipeline.load_dataset(student)


def _compress(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    teacher_summary, teacher, teacher_dir = _train_teacher(config, workdir)
    trainable, teacher_ds = train.load_trained(teacher, teacher_dir)
    ds = _student_data(config, teacher, teacher_ds)
    task = task_of(teacher)
    run = _Compression(config, workdir, trainable.model(train=False), ds, task)

    compressed, rows = run.decompose()
    frac = sum(r["params"] for r in rows) / sum(r["dense_params"] for r in rows)
    logging.info(
        "decomposed %d layers to %.4f of their dense parameters: %s",
        len(rows),
        frac,
        ", ".join(f"{r['name']}:{r['format']}{list(r['ranks'])}" for r in rows),
    )
    stages_path = os.path.join(workdir, "stages.json")
    stages = _read_json(stages_path)
    if "decomposed" not in stages:
        stages["decomposed"] = run.evaluate(compressed)
        write_json(stages_path, stages)
    blocks = tnc.distillation_blocks(compressed, [r["name"] for r in rows])

    # Phase 1, a loop per block (a finished block is restored, not retrained).
    curve_every = config.get("curve_every", None) or 0  # None: no curves
    compressed = run.phase1(compressed, blocks, curve_every=curve_every)
    if "phase1" not in stages:
        stages["phase1"] = run.evaluate(compressed)
        curve1 = run.phase1_curve(blocks)
        if curve1:
            stages["phase1_curve"] = curve1
        write_json(stages_path, stages)
    logging.info(
        "after decomposition %.4f, after phase 1 %.4f (dense %.4f)",
        stages["decomposed"]["accuracy"],
        stages["phase1"]["accuracy"],
        teacher_summary["test_accuracy"],
    )

    if config.get("compare_end_to_end", False) and "end_to_end_curve" not in stages:
        fresh, _ = run.decompose()
        total = int(config.phase1.steps_per_block) * len(blocks)
        stages["end_to_end_curve"] = run.end_to_end(fresh, total, curve_every or total)
        write_json(stages_path, stages)

    if int(config.phase2.steps) > 0:
        compressed, stages["phase2"] = run.phase2(compressed)
        write_json(stages_path, stages)

    compressed.eval()
    report = models.model_report(compressed, *run.example)
    by_name = {r["name"]: r for r in report["layers"]}
    for r in rows:
        r["flops"] = by_name[r["name"]]["flops"]
        r["dense_flops"] = by_name[r["name"]]["dense_flops"]
    compressed_dense = sum(r["dense_params"] for r in rows)
    summary = {
        "config": config.get("name", "compress"),
        "dataset": ds.name,
        "format": config.format,
        "linear_format": config.get("linear_format", None) or config.format,
        "rate_requested": float(config.rate),
        "compressed_layers": {
            "names": [r["name"] for r in rows],
            "params": sum(r["params"] for r in rows),
            "dense_params": compressed_dense,
            "fraction": sum(r["params"] for r in rows) / compressed_dense,
            "flops": sum(r["flops"] for r in rows),
            "dense_flops": sum(r["dense_flops"] for r in rows),
        },
        "layers": rows,
        "all_layers": report["layers"],
        **train.size_summary(report),
        "accuracy": {
            "dense": teacher_summary["test_accuracy"],
            "decomposed": stages["decomposed"]["accuracy"],
            "phase1": stages["phase1"]["accuracy"],
            "phase2": stages.get("phase2", {}).get("accuracy"),
        },
        "loss": {k: v["loss"] for k, v in stages.items() if isinstance(v, Mapping)},
        "curves": {
            "phase1": stages.get("phase1_curve", []),
            "end_to_end": stages.get("end_to_end_curve", []),
        },
        "phase1_steps": int(config.phase1.steps_per_block) * len(blocks),
        "phase2_steps": int(config.phase2.steps),
        "blocks": [b.name for b in blocks],
        "wall_time_sec": time.perf_counter() - t_start,
    }
    summary["test_accuracy"] = summary["accuracy"]["phase2"] or summary["accuracy"]["phase1"]
    _plot(summary, os.path.join(workdir, "curves.png"))
    # last: a summary.json marks a finished run (see workdir.finished_summary)
    write_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE), summary)
    return summary


def _read_json(path: str) -> dict:
    import json

    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _plot(summary: Mapping[str, Any], path: str) -> None:
    if not sharding.is_primary_process():
        return
    records = []
    for name in ("phase1", "end_to_end"):
        for step, acc in summary["curves"][name]:
            records.append({"step": step, "split": name, "accuracy": acc})
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, style in (("phase1", "o-"), ("end_to_end", "s--")):
        pts = [(r["step"], r["accuracy"]) for r in records if r["split"] == name]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, style, label=name.replace("_", " "), markersize=3)
    ax.axhline(summary["accuracy"]["dense"], color="k", lw=0.8, ls=":", label="dense")
    ax.set_xlabel("steps from the decomposition")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{summary['format']} at {summary['rate_requested']:.0%}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
