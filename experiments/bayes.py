"""Trainer `bayes`: end-to-end training with rank-shrinking priors, rank read-out and pruning.

    python -m experiments.main --config=configs/bayes_synthetic.py:planted=ttm \\
        --workdir=runs/bayes/synthetic_ttm

The model's tensorized layers (Linear, Conv, Embed in cp/tucker/tt/ttm and their reshaped
variants) get the priors of `tnjax.bayes`: N(0, lambda_r^2) on the core slices tied to rank
index r, with a log-uniform or half-Cauchy(eta) hyper-prior on lambda. Inference (config
`bayes.inference`):

* "map": the MAP / EM scheme of the authors' code. The loss per minibatch is
  mean_i NLL(y_i | x_i) - (prior_weight / N) log p(cores | lambda), i.e. the negative log
  posterior divided by N (the N/B scaling of a minibatch); lambda is a point estimate,
  updated in closed form from the current cores in every training forward pass (damped by
  `em_step_size`), exactly as the reference code does.

lambda lives in the model as `RankScale` variables (one per rank group), so it is
checkpointed and resumed with the rest of the state. Every `log_every` steps the lambdas are
appended to `lambdas.jsonl`; at the end they are plotted (`lambdas.png`), the ranks are read
out with a threshold relative to each layer's largest lambda (`bayes.threshold`), and the
model is pruned: its cores are sliced to the kept ranks, so the saved and evaluated model is
really smaller. `summary.json` has the learned ranks per layer (and the planted ones when
the data have them), params and FLOPs before and after pruning, and test metrics of both.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from experiments import input_pipeline, metrics, optim, train
from experiments.checkpoint import write_json
from tnjax import bayes, models

__all__ = ["train_and_evaluate", "RankScale", "attach_lambdas", "lambdas_of"]

LAMBDAS_FILE = "lambdas.jsonl"
INFERENCE = ("map",)


class RankScale(nnx.Variable):
    """lambda of one rank group: set by the closed-form EM update, never by the optimizer."""


def attach_lambdas(model: nnx.Module, lambdas: dict[str, list[jax.Array]]) -> None:
    """Stores `lambdas` on the model's tensor layers as `layer.rank_scales` (in place)."""
    for name, layer in bayes.tensor_layers(model):
        layer.rank_scales = nnx.List([RankScale(jnp.asarray(v)) for v in lambdas[name]])


def lambdas_of(model: nnx.Module) -> dict[str, list[jax.Array]]:
    """{layer name: [lambda (R,) per group]} read from the model's `RankScale` variables."""
    return {name: [v[...] for v in layer.rank_scales] for name, layer in bayes.tensor_layers(model)}


def _set_lambdas(model: nnx.Module, lambdas: dict[str, list[jax.Array]]) -> None:
    for name, layer in bayes.tensor_layers(model):
        for var, value in zip(layer.rank_scales, lambdas[name], strict=True):
            var[...] = value


def prior_of(config: ml_collections.ConfigDict) -> bayes.RankPrior:
    b = config.bayes
    return bayes.RankPrior(b.prior, eta=float(b.eta), core_std=float(b.get("core_std", 10.0)))


def map_prior_term(prior: bayes.RankPrior, weight: float, step_size: float):
    """`extra_loss` of the MAP/EM scheme: EM-update lambda, return -weight * log prior."""

    def extra_loss(model, batch, outputs):
        del batch, outputs
        new = bayes.em_update(model, lambdas_of(model), prior, step_size=step_size)
        new = jax.tree.map(jax.lax.stop_gradient, new)
        _set_lambdas(model, new)
        return -weight * bayes.model_log_prior(model, new, prior)

    return extra_loss


def _log_lambdas(workdir: str):
    def on_log(step: int, trainable: train.Trainable) -> None:
        lam = jax.device_get(lambdas_of(trainable.model()))
        record = {
            "step": int(step),
            "lambdas": {k: [np.asarray(v).tolist() for v in vs] for k, vs in lam.items()},
        }
        with open(os.path.join(workdir, LAMBDAS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")

    return on_log


def plot_lambdas(workdir: str, path: str) -> str | None:
    """log10(lambda_r) against step, one panel per rank group."""
    records = metrics.read_metrics(workdir, LAMBDAS_FILE)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(k, g) for k, vs in records[0]["lambdas"].items() for g in range(len(vs))]
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, (layer, g) in zip(axes.flat, groups, strict=False):
        values = np.array([r["lambdas"][layer][g] for r in records])
        ax.plot(steps, np.log10(np.maximum(values, 1e-30)), lw=0.8)
        ax.set_title(f"{layer} bond {g}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("log10 lambda", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _planted(ds: input_pipeline.Dataset) -> Any:
    ranks = ds.info.get("planted_ranks") if isinstance(ds.info, dict) else None
    return None if ranks is None else [int(r) for r in ranks]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains with the priors, reads the ranks out, prunes, evaluates; returns the summary."""
    t0 = time.perf_counter()
    b = config.bayes
    if b.inference not in INFERENCE:
        raise ValueError(f"unknown bayes.inference {b.inference!r}; choose one of {INFERENCE}")
    os.makedirs(workdir, exist_ok=True)
    train.check_resumable(workdir, config)
    task = train.task_of(config)
    ds = input_pipeline.load_dataset(train.data_config(config))
    num_steps = train.resolve_num_steps(config, ds.num_train)
    model = train.build_model(config, ds)
    if not bayes.tensor_layers(model):
        raise ValueError(
            "the model has no tensorized layer with a supported format for the priors "
            f"(supported: {bayes.SUPPORTED_FORMATS}); set config.model.layers"
        )
    prior = prior_of(config)
    attach_lambdas(model, bayes.init_lambdas(model, prior))
    tx = optim.make_optimizer(config.optimizer, num_steps)
    trainable = train.Trainable.create(model, tx)
    weight = float(b.prior_weight) / ds.num_train  # the minibatch's N/B-scaled share
    extra = map_prior_term(prior, weight, float(b.em_step_size))
    run = train.RunLoop(
        config,
        workdir,
        task,
        ds,
        trainable,
        tx,
        num_steps,
        extra_loss=extra,
        on_log=_log_lambdas(workdir),
    )
    start = run.ckpt.latest_step() or 0
    metrics.truncate_metrics(workdir, start, LAMBDAS_FILE)
    final = run.train()

    trained = trainable.model(train=False)
    lambdas = jax.device_get(lambdas_of(trained))
    example = train.example_inputs(task, ds.test)
    before = models.model_report(trained, *example)
    pruned, prune_report, _ = bayes.prune_model(trained, lambdas, threshold=float(b.threshold))
    pruned.eval()
    after = models.model_report(pruned, *example)
    pruned_metrics = train.evaluate_model(pruned, task, ds.test, run.eval_batch_size())
    planted = _planted(ds)
    learned = {name: list(r["ranks_after"]) for name, r in prune_report.items()}
    summary = {
        "config": config.get("name", "bayes"),
        "dataset": ds.name,
        "inference": b.inference,
        "prior": {"kind": prior.kind, "eta": prior.eta},
        "threshold": float(b.threshold),
        "test_accuracy": pruned_metrics["accuracy"],
        "test_loss": pruned_metrics["loss"],
        "before_pruning": {"test": final, **train.size_summary(before)},
        "after_pruning": {"test": pruned_metrics, **train.size_summary(after)},
        **train.size_summary(after),
        "planted_ranks": planted,
        "learned_ranks": learned,
        "prune_report": prune_report,
        "lambdas": {k: [np.asarray(v).tolist() for v in vs] for k, vs in lambdas.items()},
        "layers": after["layers"],
        "steps": num_steps,
        "wall_time_sec": time.perf_counter() - t0,
    }
    write_json(os.path.join(workdir, "summary.json"), summary)
    metrics.plot_curves(metrics.read_metrics(workdir), os.path.join(workdir, "curves.png"))
    plot_lambdas(workdir, os.path.join(workdir, "lambdas.png"))
    logging.info(
        "learned ranks %s (planted %s); params %d -> %d",
        learned,
        planted,
        before["params"],
        after["params"],
    )
    return summary
