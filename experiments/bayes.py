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
* "svi": stochastic variational inference with NumPyro (`tnjax.bayes.svi`): a mean-field
  Gaussian q = N(mu, sigma^2) on every core entry (mu = the cores, log sigma extra params
  initialised at `svi_init_scale` x the core's RMS), one reparameterised sample per step,
  the loss -ELBO / N = mean NLL + (prior_weight / N) KL(q || p(. | lambda)) computed by
  `TraceMeanField_ELBO` with the likelihood in `numpyro.plate(N, subsample_size=B)`; lambda
  is the same closed-form point estimate, with M including sigma^2. The sample of step t
  uses the key fold_in(seed, t), so resumes are exact. The posterior means are what is
  evaluated, pruned and saved at the end.

After pruning, `finetune_steps` > 0 continues training the pruned (really smaller) model
without the prior, in WORKDIR/finetune (checkpointed and resumable like the first phase),
Adam with a cosine schedule from `finetune_learning_rate`: the prior's shrinkage of the kept
slices is undone at the pruned size.

Both accept a KL / prior warm-up: the prior weight is multiplied by
clip((step - kl_delay_steps) / kl_warmup_steps, 0, 1) (1 throughout when kl_warmup_steps is 0).

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

from experiments import input_pipeline, loop, metrics, optim, schema, sharding, train
from experiments import workdir as workdir_lib
from experiments.checkpoint import Checkpointer, write_json
from experiments.tasks import Task, example_inputs, task_of
from tnjax import bayes, models
from tnjax.bayes import svi

__all__ = [
    "train_and_evaluate",
    "RankScale",
    "attach_lambdas",
    "lambdas_of",
    "load_pruned",
    "save_served",
]

LAMBDAS_FILE = "lambdas.jsonl"
INFERENCE = ("map", "svi")


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


def warmup_factor(step: jax.typing.ArrayLike, delay: int, warmup: int) -> jax.Array:
    """clip((step - delay) / warmup, 0, 1), or 1 when warmup is 0 (traceable in `step`)."""
    if warmup < 0 or delay < 0:
        raise ValueError(f"kl_delay_steps={delay} and kl_warmup_steps={warmup} must be >= 0")
    if warmup == 0:
        return jnp.where(jnp.asarray(step) >= delay, 1.0, 0.0).astype(jnp.float32)
    return jnp.clip((jnp.asarray(step, jnp.float32) - delay) / warmup, 0.0, 1.0)


def _em_step(model, prior, step_size, scales=None):
    """Closed-form lambda update on the current cores, stored in the model and returned."""
    new = bayes.em_update(model, lambdas_of(model), prior, step_size=step_size, scales=scales)
    new = jax.tree.map(jax.lax.stop_gradient, new)
    _set_lambdas(model, new)
    return new


def map_objective(task: Task, prior: bayes.RankPrior, weight: float, step_size: float, kl):
    """`objective` of the MAP/EM scheme: EM-update lambda, mean NLL - w(t) log prior."""

    def objective(model, batch, step):
        out = model(*task.inputs(batch))
        nll = jnp.mean(task.loss(out, batch["label"])[0])
        new = _em_step(model, prior, step_size)
        w = weight * warmup_factor(step, *kl)
        return nll - w * bayes.model_log_prior(model, new, prior), out

    return objective


def svi_objective(
    task: Task,
    task_name: str,
    prior: bayes.RankPrior,
    weight: float,
    step_size: float,
    kl,
    num_data: int,
    seed: int,
):
    """`objective` of SVI: EM-update lambda (with sigma^2), then NumPyro's -ELBO / N."""
    base_key = jax.random.key(seed)

    def objective(model, batch, step):
        new = _em_step(model, prior, step_size, scales=svi.scales_of(model))
        return svi.elbo_loss(
            model,
            new,
            prior,
            forward=lambda m: m(*task.inputs(batch)),
            likelihood=svi.LIKELIHOODS[task_name],
            labels=batch["label"],
            num_data=num_data,
            rng=jax.random.fold_in(base_key, step),
            kl_weight=weight * num_data * warmup_factor(step, *kl),
        )

    return objective


def readout_lambdas(model, lambdas, prior: bayes.RankPrior, inference: str):
    """The lambdas the ranks are read from: the EM ones (MAP), or for SVI the closed-form
    lambda of the posterior means alone.

    Under SVI an unused rank's slice has mean ~0 but keeps a posterior std sigma that the
    optimizer shrinks only as fast as its learning rate allows; the EM lambda (whose M
    includes sigma^2) of that rank therefore floors near sigma, within 10-30x of the kept
    ranks, while the means of the slice are orders of magnitude smaller. Reading the ranks
    from the means keeps the read-out comparable to MAP's.
    """
    if inference != "svi":
        return lambdas
    return jax.device_get(bayes.init_lambdas(model, prior))


SERVED_DIR = "pruned"


def save_served(workdir: str, model: nnx.Module, step: int) -> None:
    """Saves the pruned (and fine-tuned) model's state in WORKDIR/pruned (see `load_pruned`)."""
    ckpt = Checkpointer(os.path.join(workdir, SERVED_DIR), max_to_keep=1)
    try:
        ckpt.save(step, nnx.state(model))
    finally:
        ckpt.close()


def load_pruned(config: ml_collections.ConfigDict, workdir: str) -> nnx.Module:
    """The served model of a finished `bayes` run: pruned to its learned ranks (eval mode).

    The structure is rebuilt from the config, the read-out lambdas and the threshold in
    `summary.json` (pruning is deterministic), then the saved state is restored into it.
    """
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    ds = input_pipeline.load_dataset(train.data_config(config))
    model = train.build_model(config, ds)
    readout = {
        k: [jnp.asarray(v, jnp.float32) for v in vs] for k, vs in summary["readout_lambdas"].items()
    }
    pruned, _, _ = bayes.prune_model(model, readout, threshold=float(summary["threshold"]))
    ckpt = Checkpointer(os.path.join(workdir, SERVED_DIR))
    try:
        latest = ckpt.restore_latest(nnx.state(pruned))
    finally:
        ckpt.close()
    if latest is None:
        raise FileNotFoundError(f"no served model in {ckpt.directory}: run {workdir} to the end")
    nnx.update(pruned, latest[1])
    pruned.eval()
    return pruned


def attach_priors(model: nnx.Module, config: ml_collections.ConfigDict, prior) -> None:
    """Puts the initial lambdas (and, for SVI, the posterior log sigmas) on the model."""
    attach_lambdas(model, bayes.init_lambdas(model, prior))
    if config.bayes.inference == "svi":
        svi.attach_scales(model, float(config.bayes.get("svi_init_scale", 1e-3)))


def objective_of(config: ml_collections.ConfigDict, task: Task, prior, num_data: int):
    """The training objective `config.bayes` asks for (MAP/EM or SVI) on N = num_data."""
    b = config.bayes
    weight = float(b.prior_weight) / num_data  # the minibatch's N/B-scaled share
    kl = (int(b.get("kl_delay_steps", 0)), int(b.get("kl_warmup_steps", 0)))
    step_size = float(b.em_step_size)
    if b.inference == "svi":
        task_name = config.get("task", "classification")
        return svi_objective(
            task, task_name, prior, weight, step_size, kl, num_data, int(config.seed)
        )
    return map_objective(task, prior, weight, step_size, kl)


def _log_lambdas(workdir: str):
    def on_log(step: int, trainable: loop.Trainable) -> None:
        if not sharding.is_primary_process():
            return  # only process 0 writes the lambdas file
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
    if not records or not sharding.is_primary_process():
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
    """Trains with the priors, reads the ranks out, prunes, evaluates; returns the summary
    (that of `summary.json` unchanged when the run in `workdir` has finished)."""
    schema.validate(config)
    with workdir_lib.claim(workdir, config):
        finished = workdir_lib.finished_summary(workdir)
        if finished is not None:
            return finished
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    b = config.bayes
    task = task_of(config)
    ds = input_pipeline.load_dataset(train.data_config(config))
    num_steps = train.resolve_num_steps(config, ds.num_train)
    model = train.build_model(config, ds)
    if not bayes.tensor_layers(model):
        raise ValueError(
            "the model has no tensorized layer with a supported format for the priors "
            f"(supported: {bayes.SUPPORTED_FORMATS}); set config.model.layers"
        )
    prior = prior_of(config)
    attach_priors(model, config, prior)
    tx = optim.make_optimizer(config.optimizer, num_steps)
    trainable = loop.Trainable.create(model, tx)
    objective = objective_of(config, task, prior, ds.num_train)
    run = loop.RunLoop(
        loop.LoopOptions.from_config(config, num_steps),
        workdir,
        task,
        ds,
        trainable,
        tx,
        objective=objective,
        on_log=_log_lambdas(workdir),
        # the lambdas log is cut back to the step actually restored
        on_restore=lambda step: metrics.truncate_metrics(workdir, step, LAMBDAS_FILE),
    )
    final = run.train()

    trained = trainable.model(train=False)
    sigmas = svi.detach_scales(trained)  # the posterior means are what is served
    lambdas = jax.device_get(lambdas_of(trained))
    readout = readout_lambdas(trained, lambdas, prior, b.inference)
    example = example_inputs(task, ds.test)
    before = models.model_report(trained, *example)
    pruned, prune_report, _ = bayes.prune_model(trained, readout, threshold=float(b.threshold))
    pruned.eval()
    after = models.model_report(pruned, *example)
    # measured: what XLA counts in the compiled forward of one example, before and after
    xla_flops_before = models.compiled_flops(trained, *example)
    xla_flops_after = models.compiled_flops(pruned, *example)
    pruned_metrics = loop.evaluate_model(pruned, task, ds.test, run.eval_batch_size())
    finetuned_metrics = None
    if int(b.get("finetune_steps", 0)) > 0:
        # the pruned (really smaller) model continues training, without the prior
        options = loop.LoopOptions.from_config(
            config, int(b.finetune_steps), eval_every=None, checkpoint_every=500, kill_at_step=None
        )
        pruned, finetuned_metrics = loop.finetune(
            pruned,
            options,
            os.path.join(workdir, "finetune"),
            task,
            ds,
            learning_rate=float(b.get("finetune_learning_rate", 1e-3)),
        )
    final_metrics = finetuned_metrics or pruned_metrics
    save_served(workdir, pruned, num_steps)
    planted = _planted(ds)
    learned = {name: list(r["ranks_after"]) for name, r in prune_report.items()}
    summary = {
        "config": config.get("name", "bayes"),
        "dataset": ds.name,
        "inference": b.inference,
        "prior": {"kind": prior.kind, "eta": prior.eta},
        "threshold": float(b.threshold),
        "test_accuracy": final_metrics["accuracy"],
        "test_loss": final_metrics["loss"],
        "before_pruning": {
            "test": final,
            **train.size_summary(before),
            "xla_flops_per_example": xla_flops_before,
        },
        "after_pruning": {
            "test": pruned_metrics,
            **train.size_summary(after),
            "xla_flops_per_example": xla_flops_after,
        },
        "after_finetuning": None if finetuned_metrics is None else {"test": finetuned_metrics},
        "finetune_steps": int(b.get("finetune_steps", 0)),
        **train.size_summary(after),
        "planted_ranks": planted,
        "learned_ranks": learned,
        "prune_report": prune_report,
        "lambdas": {k: [np.asarray(v).tolist() for v in vs] for k, vs in lambdas.items()},
        "readout_lambdas": {k: [np.asarray(v).tolist() for v in vs] for k, vs in readout.items()},
        "posterior_std_rms": {
            k: [float(np.sqrt(np.mean(np.square(np.asarray(v))))) for v in vs]
            for k, vs in jax.device_get(sigmas).items()
        },
        "layers": after["layers"],
        "steps": num_steps,
        "wall_time_sec": time.perf_counter() - t0,
    }
    metrics.plot_curves(metrics.read_metrics(workdir), os.path.join(workdir, "curves.png"))
    plot_lambdas(workdir, os.path.join(workdir, "lambdas.png"))
    # last: a summary.json marks a finished run (see workdir.finished_summary)
    write_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE), summary)
    logging.info(
        "learned ranks %s (planted %s); params %d -> %d",
        learned,
        planted,
        before["params"],
        after["params"],
    )
    return summary
