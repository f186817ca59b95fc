"""Times a training step with the rank priors (MAP/EM and NumPyro SVI) against fixed rank.

For each case the same model (a config's max-rank tensorized layers) is trained by three
jitted steps of the trainers' own code (`experiments.loop.make_train_step`):

  fixed   the task loss only (no prior: the fixed-rank baseline)
  map     + the closed-form lambda update and the log-prior (`experiments.bayes.map_objective`)
  svi     NumPyro's -ELBO / N on one sample of the cores (`experiments.bayes.svi_objective`)

and reports median step times (repeats interleaved across the three, same process, same
batch) and the ratios map/fixed and svi/fixed. A benchmark, not a test: nothing asserts.

    python scripts/bench_bayes.py [--reps 30] [--out docs/results/bench_bayes.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import bayes as bayes_trainer  # noqa: E402
from experiments import input_pipeline, loop, optim, tasks, train  # noqa: E402

# (label, config module, config arg): the configs' full-size models, quick data
CASES = (
    ("MLP 784-512-10, fc1 TT-matrix r20 (bayes_mlp)", "bayes_mlp", "quick"),
    ("Linear 256->256 TT-matrix r16 (bayes_synthetic)", "bayes_synthetic", "quick,planted=ttm"),
    ("Linear 256->256 CP r16 (bayes_synthetic)", "bayes_synthetic", "quick,planted=cp"),
    ("Linear 256->256 Tucker r16 (bayes_synthetic)", "bayes_synthetic", "quick,planted=tucker"),
    ("DLRM, 4 TT-matrix tables r16 (bayes_dlrm)", "bayes_dlrm", "quick"),
)
KINDS = ("fixed", "map", "svi")


def build_steps(module: str, arg: str):
    """(steps by kind, states by kind, batch) for one config."""
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    ds = input_pipeline.load_dataset(train.data_config(config))
    task = tasks.task_of(config)
    prior = bayes_trainer.prior_of(config)
    steps, states = {}, {}
    for kind in KINDS:
        model = train.build_model(config, ds)
        objective = None
        if kind != "fixed":
            config.bayes.inference = kind
            bayes_trainer.attach_priors(model, config, prior)
            objective = bayes_trainer.objective_of(config, task, prior, ds.num_train)
        tx = optim.make_optimizer(config.optimizer, 1000)
        trainable = loop.Trainable.create(model, tx)
        steps[kind] = loop.make_train_step(trainable, tx, task, objective=objective)
        states[kind] = trainable.state
    batch = input_pipeline.train_batch(ds, 0, int(config.batch_size), seed=0)
    batch = jax.device_put({k: np.asarray(v) for k, v in batch.items()})
    return steps, states, batch, int(config.batch_size)


def time_case(module: str, arg: str, reps: int) -> dict:
    steps, states, batch, batch_size = build_steps(module, arg)
    for kind in KINDS:  # compile and warm up
        for _ in range(3):
            states[kind], sums = steps[kind](states[kind], batch)
        jax.block_until_ready(sums)
    times = {k: [] for k in KINDS}
    for _ in range(reps):
        for kind in KINDS:
            t = time.perf_counter()
            states[kind], sums = steps[kind](states[kind], batch)
            jax.block_until_ready((states[kind], sums))
            times[kind].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return {
        "batch_size": batch_size,
        "median_ms": med,
        "map_over_fixed": med["map"] / med["fixed"],
        "svi_over_fixed": med["svi"] / med["fixed"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | batch | fixed ms | MAP ms | SVI ms | MAP / fixed | SVI / fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["median_ms"]
        lines.append(
            f"| {r['case']} | {r['batch_size']} | {m['fixed']:.2f} | {m['map']:.2f} | "
            f"{m['svi']:.2f} | {r['map_over_fixed']:.2f}x | {r['svi_over_fixed']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--cases", default="", help="comma-separated config modules to run")
    parser.add_argument("--out", default="", help="JSON path (a .md table is written beside)")
    args = parser.parse_args(argv)
    wanted = set(filter(None, args.cases.split(",")))
    rows = []
    for label, module, arg in CASES:
        if wanted and module not in wanted:
            continue
        rows.append(
            {"case": label, "config": f"{module}:{arg}", **time_case(module, arg, args.reps)}
        )
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        meta = {
            "machine": platform.processor() or platform.machine(),
            "devices": [str(d) for d in jax.devices()],
            "reps": args.reps,
            "command": "python scripts/bench_bayes.py " + " ".join(argv or sys.argv[1:]),
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
