"""The `bayes` trainer: planted-rank recovery, pruning that really shrinks, lambda logs."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import bayes as bayes_trainer
from experiments import input_pipeline, loop, metrics, tasks, train
from experiments import main as launcher
from tnjax import models
from tnjax import nn as tnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "planted, ranks, params", [("cp", [4], 512), ("tucker", [3, 5, 3, 5], 737)]
)
def test_map_recovers_planted_cp_and_tucker_ranks(tmp_path, planted, ranks, params):
    config = importlib.import_module("configs.bayes_synthetic").get_config(f"planted={planted}")
    config.tensorboard = False
    summary = bayes_trainer.train_and_evaluate(config, str(tmp_path))
    assert summary["planted_ranks"] == ranks
    assert summary["learned_ranks"] == {"fc1": ranks}
    assert summary["after_pruning"]["params"] == params  # what the learned ranks imply
    before, after = summary["before_pruning"]["test"], summary["after_pruning"]["test"]
    assert after["loss"] < 0.4 and abs(after["loss"] - before["loss"]) < 1e-3 * before["loss"]


def test_map_recovers_planted_tt_matrix_ranks_and_prunes(tmp_path):
    config = importlib.import_module("configs.bayes_synthetic").get_config("planted=ttm")
    summary = launcher.run(config, str(tmp_path))
    assert summary["planted_ranks"] == [3, 2]
    assert summary["learned_ranks"] == {"fc1": [3, 2]}
    before, after = summary["before_pruning"], summary["after_pruning"]
    assert after["params"] < before["params"] / 10
    assert after["flops_per_example"] < before["flops_per_example"]
    # pruning removed only negligible slices: the test loss is unchanged (noise floor 0.32)
    assert abs(after["test"]["loss"] - before["test"]["loss"]) < 1e-3 * before["test"]["loss"]
    assert before["test"]["loss"] < 0.4
    # measured FLOPs (XLA's count of the compiled forward) drop to those of a layer built
    # at the learned ranks from scratch
    fresh = tnn.Linear(
        256,
        256,
        format="ttm",
        in_modes=(4, 8, 8),
        out_modes=(4, 8, 8),
        rank=(3, 2),
        rngs=nnx.Rngs(0),
    )
    x = jnp.zeros((1, 256))
    assert after["xla_flops_per_example"] == models.compiled_flops(fresh, x)
    assert after["xla_flops_per_example"] < before["xla_flops_per_example"] / 10
    lam = np.sort(np.asarray(summary["lambdas"]["fc1"][0]))[::-1]
    assert lam[2] > 100 * lam[3]  # a clear gap between kept and pruned ranks
    records = metrics.read_metrics(str(tmp_path), "lambdas.jsonl")
    assert [r["step"] for r in records][-1] == config.num_steps
    assert os.path.getsize(tmp_path / "lambdas.png") > 1000


def test_svi_recovers_planted_tt_matrix_ranks(tmp_path):
    config = importlib.import_module("configs.bayes_synthetic").get_config(
        "planted=ttm,inference=svi"
    )
    summary = launcher.run(config, str(tmp_path))
    assert summary["inference"] == "svi"
    assert summary["learned_ranks"] == {"fc1": [3, 2]}
    assert summary["before_pruning"]["test"]["loss"] < 0.4
    # the posterior stds were learned and then dropped: the served model is the means
    (stds,) = summary["posterior_std_rms"].values()
    assert len(stds) == 3 and all(0 < s < 1 for s in stds)
    assert summary["after_pruning"]["params"] == 816


def _quick_ttm(workdir, *overrides):
    args = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=configs/bayes_synthetic.py:quick,inference=svi",
        f"--workdir={workdir}",
        "--config.num_steps=60",
        "--config.log_every=10",
        "--config.checkpoint_every=20",
        "--config.tensorboard=False",
        *overrides,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_svi_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    assert _quick_ttm(whole).returncode == 0
    killed = _quick_ttm(cut, "--config.debug.kill_at_step=47")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _quick_ttm(cut)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from the checkpoint at step 40" in resumed.stderr
    sa = json.load(open(os.path.join(whole, "summary.json")))
    sb = json.load(open(os.path.join(cut, "summary.json")))
    # same samples of the cores (keys are a function of the step), same lambdas, same fit
    assert sa["lambdas"] == sb["lambdas"] and sa["posterior_std_rms"] == sb["posterior_std_rms"]
    assert sa["before_pruning"]["test"] == sb["before_pruning"]["test"]
    lam_a = metrics.read_metrics(whole, "lambdas.jsonl")
    lam_b = metrics.read_metrics(cut, "lambdas.jsonl")
    assert lam_a == lam_b and [r["step"] for r in lam_a] == list(range(10, 61, 10))


def test_pruned_model_is_fine_tuned_saved_and_reloaded(tmp_path):
    config = importlib.import_module("configs.bayes_synthetic").get_config("quick")
    config.bayes.finetune_steps = 40
    config.tensorboard = False
    summary = bayes_trainer.train_and_evaluate(config, str(tmp_path))
    assert summary["finetune_steps"] == 40
    tuned = summary["after_finetuning"]["test"]
    assert summary["test_loss"] == tuned["loss"]
    assert tuned["loss"] < summary["after_pruning"]["test"]["loss"]
    served = bayes_trainer.load_pruned(config, str(tmp_path))
    ranks = {r["name"]: list(r["ranks"]) for r in summary["layers"] if r["ranks"]}
    assert ranks == summary["learned_ranks"] and sum(ranks["fc1"]) < 32  # really pruned
    assert [int(r) for r in served.layers[0].ranks] == summary["learned_ranks"]["fc1"]
    ds = input_pipeline.load_dataset(train.data_config(config))
    reloaded = loop.evaluate_model(served, tasks.task_of(config), ds.test, 1024)
    np.testing.assert_allclose(reloaded["loss"], tuned["loss"], rtol=1e-5)
