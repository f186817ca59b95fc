"""The `bayes` trainer: planted-rank recovery, pruning that really shrinks, lambda logs."""

from __future__ import annotations

import importlib
import os

import numpy as np

from experiments import main as launcher
from experiments import metrics


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
    lam = np.sort(np.asarray(summary["lambdas"]["fc1"][0]))[::-1]
    assert lam[2] > 100 * lam[3]  # a clear gap between kept and pruned ranks
    records = metrics.read_metrics(str(tmp_path), "lambdas.jsonl")
    assert [r["step"] for r in records][-1] == config.num_steps
    assert os.path.getsize(tmp_path / "lambdas.png") > 1000
