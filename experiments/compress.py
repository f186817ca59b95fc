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

Resume: phase 1 is checkpointed after each block (stage checkpoints in `WORKDIR/phase1`),
phase 2 by the `train` loop in `WORKDIR/phase2`; a restarted run skips what is done.
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

from experiments import input_pipeline, sharding, train
from experiments.checkpoint import Checkpointer, write_json
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
    linear = config.get("linear_format", "")
    if not linear:
        return config.format
    return {"*": config.format, "fc*": linear}


def _rate_spec(config: ml_collections.ConfigDict) -> Any:
    """`config.rate`, or {"*": rate, **rate_overrides} when per-layer rates are given."""
    overrides = dict(config.get("rate_overrides", {}) or {})
    if not overrides:
        return float(config.rate)
    return {"*": float(config.rate), **{k: float(v) for k, v in overrides.items()}}


def _phase1_step(graph, teacher_graph, block: tnc.DistillBlock, tx):
    """A jitted Adam step on the block MSE; only the block's parameters move."""

    def loss_fn(block_params, other, teacher_state, images):
        student = nnx.merge(graph, block_params, other, copy=True)
        teacher = nnx.merge(teacher_graph, teacher_state, copy=True)
        return tnc.block_mse(student, teacher, block, images)

    def step(block_params, opt_state, other, teacher_state, images):
        loss, grads = jax.value_and_grad(loss_fn)(block_params, other, teacher_state, images)
        updates, opt_state = tx.update(grads, opt_state, block_params)
        return optax.apply_updates(block_params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


class _Compression:
    """State of one compression run (the phases are methods, run in order by the trainer)."""

    def __init__(self, config, workdir, teacher_model, ds, task):
        self.config, self.workdir, self.ds, self.task = config, workdir, ds, task
        self.teacher = teacher_model
        self.teacher.eval()
        self.batch_size = int(config.batch_size)
        self.eval_batch = int(config.get("eval_batch_size", 1000))
        self.example = train.example_inputs(task, ds.test)
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

    def images(self, step: int) -> jax.Array:
        batch = input_pipeline.train_batch(
            self.ds,
            step,
            self.batch_size,
            seed=self.seed,
            augment=self.config.get("augment", None),
        )
        return jnp.asarray(batch["image"])

    def evaluate(self, model) -> dict[str, float]:
        return train.evaluate_model(model, self.task, self.ds.test, self.eval_batch)

    def phase1(self, model, blocks, *, start_block=0, curve_every=0, on_block_done=None):
        """Sequential training; returns the model and the curve [(steps, test accuracy)]."""
        p1 = self.config.phase1
        steps = int(p1.steps_per_block)
        curve = []
        teacher_graph, teacher_state = nnx.split(self.teacher)
        for b, block in enumerate(blocks):
            if b < start_block:
                continue
            model.eval()  # batch norm in inference mode
            graph, block_params, other = nnx.split(model, tnc.block_param_filter(block), ...)
            schedule = optax.cosine_decay_schedule(float(p1.learning_rate), max(steps, 1))
            tx = optax.adam(schedule)
            opt_state = tx.init(block_params)
            step_fn = _phase1_step(graph, teacher_graph, block, tx)
            t0 = time.perf_counter()
            loss = jnp.zeros(())
            for i in range(steps):
                global_step = b * steps + i
                block_params, opt_state, loss = step_fn(
                    block_params, opt_state, other, teacher_state, self.images(global_step)
                )
                done = global_step + 1
                if curve_every and done % curve_every == 0:
                    acc = self.evaluate(nnx.merge(graph, block_params, other))["accuracy"]
                    curve.append((done, acc))
            model = nnx.merge(graph, block_params, other)
            logging.info(
                "phase 1 block %s (%s): %d steps, final block MSE %.3g, %.1fs",
                block.name,
                ",".join(block.layers),
                steps,
                float(loss),
                time.perf_counter() - t0,
            )
            if on_block_done is not None:
                on_block_done(b, model)
        return model, curve

    def end_to_end(self, model, num_steps: int, curve_every: int) -> list[tuple[int, float]]:
        """Cross-entropy training of `model` from its current weights (for comparison)."""
        p1 = self.config.phase1
        tx = optax.adam(optax.cosine_decay_schedule(float(p1.learning_rate), max(num_steps, 1)))
        model.train()
        trainable = train.Trainable.create(model, tx)
        step_fn = train.make_train_step(trainable, tx, self.task)
        state = trainable.state
        curve = []
        for i in range(num_steps):
            batch = input_pipeline.train_batch(
                self.ds,
                i,
                self.batch_size,
                seed=self.seed,
                augment=self.config.get("augment", None),
            )
            state, _ = step_fn(state, {k: jnp.asarray(v) for k, v in batch.items()})
            if curve_every and (i + 1) % curve_every == 0:
                trainable.state = state
                curve.append((i + 1, self.evaluate(trainable.model())["accuracy"]))
        return curve

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

        return train.finetune(
            model,
            self.config,
            os.path.join(self.workdir, "phase2"),
            self.task,
            self.ds,
            steps=int(p2.steps),
            learning_rate=float(p2.learning_rate),
            checkpoint_every=int(p2.get("checkpoint_every", 500)),
            extra_loss=extra,
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the whole pipeline (see the module docstring); returns the summary."""
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    train.check_resumable(workdir, config)
    teacher_dir = config.get("teacher_workdir", "") or os.path.join(workdir, "teacher")
    logging.info("teacher: %s in %s", config.teacher.name, teacher_dir)
    teacher_summary = train.train_and_evaluate(config.teacher, teacher_dir)
    trainable, ds = train.load_trained(config.teacher, teacher_dir)
    task = train.task_of(config.teacher)
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

    # Phase 1 with a stage checkpoint after each block.
    ckpt = Checkpointer(os.path.join(workdir, "phase1"), max_to_keep=1)
    start = ckpt.latest_step() or 0
    if start:
        like = nnx.state(compressed)
        nnx.update(compressed, ckpt.restore(like, start))
        logging.info("phase 1: resuming after block %d of %d", start, len(blocks))
    curve_every = int(config.get("curve_every", 0) or 0)

    def on_block_done(b, model):
        ckpt.save(b + 1, nnx.state(model))

    if start < len(blocks) or "phase1" not in stages:
        compressed, curve1 = run.phase1(
            compressed,
            blocks,
            start_block=start,
            curve_every=curve_every,
            on_block_done=on_block_done,
        )
        stages["phase1"] = run.evaluate(compressed)
        if start == 0 and curve1:
            stages["phase1_curve"] = curve1
        write_json(stages_path, stages)
    ckpt.close()
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
        "linear_format": config.get("linear_format", "") or config.format,
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
    write_json(os.path.join(workdir, "summary.json"), summary)
    _plot(summary, os.path.join(workdir, "curves.png"))
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
