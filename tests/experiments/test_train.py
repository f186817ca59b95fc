"""The trainer: exact resume after kill -9, the NaN/Inf guard, config checks, optimisers."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
import pytest
from run_helpers import launch_small_lenet5, synthetic_lenet5

from experiments import checkpoint, loop, metrics, optim, train


def _comparable(records):
    return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in records]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    proc = launch_small_lenet5(whole)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed = launch_small_lenet5(cut, "--config.debug.kill_at_step=37")
    assert killed.returncode == -9, killed.stderr[-3000:]  # really SIGKILLed mid-run
    assert checkpoint.Checkpointer(os.path.join(cut, "checkpoints")).latest_step() == 30
    assert max(r["step"] for r in metrics.read_metrics(cut)) == 35  # logged past the checkpoint
    resumed = launch_small_lenet5(cut)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step 30" in resumed.stderr

    config = synthetic_lenet5()
    like = None
    states = []
    for workdir in (whole, cut):
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
        assert ckpt.latest_step() == 40
        if like is None:
            ds = train.input_pipeline.load_dataset(train.data_config(config))
            model = train.build_model(config, ds)
            tx = optim.make_optimizer(config.optimizer, 40)
            like = {"train": loop.Trainable.create(model, tx).state, "elapsed": np.float64(0)}
        states.append(ckpt.restore(like)["train"])
    a, b = (jax.tree.leaves(s) for s in states)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _comparable(metrics.read_metrics(whole)) == _comparable(metrics.read_metrics(cut))
    sa = json.load(open(os.path.join(whole, "summary.json")))
    sb = json.load(open(os.path.join(cut, "summary.json")))
    assert sa["test_accuracy"] == sb["test_accuracy"] and sa["test_loss"] == sb["test_loss"]


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    c = synthetic_lenet5()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 1e30  # the second step's forward overflows
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.log_every = 1
    c.checkpoint_every = 1
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint"):
        train.train_and_evaluate(c, str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    last = ckpt.latest_step()
    assert last is not None and last < c.num_steps
    records = metrics.read_metrics(str(tmp_path))
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")


def test_resuming_with_a_different_config_is_refused(tmp_path):
    c = synthetic_lenet5()
    c.num_steps = 5
    train.train_and_evaluate(c, str(tmp_path))
    c2 = synthetic_lenet5()
    c2.num_steps = 5
    c2.optimizer.learning_rate = 0.5
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
        train.train_and_evaluate(c2, str(tmp_path))


def test_checkpoint_of_a_different_model_is_reported(tmp_path):
    import jax.numpy as jnp

    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(3, {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"\['w'\]"):
        ckpt.restore({"w": jnp.ones((2, 4)), "b": jnp.zeros(3)})
    restored = ckpt.restore({"w": jnp.zeros((2, 3)), "b": jnp.ones(3)})
    np.testing.assert_array_equal(restored["w"], np.ones((2, 3)))


def test_metrics_truncation_drops_later_steps_and_torn_lines(tmp_path):
    w = metrics.MetricWriter(str(tmp_path), tensorboard=False)
    for s in (10, 20, 30):
        w.write(s, "train", {"loss": 1.0 / s})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "spl')  # a line cut by kill -9
    metrics.truncate_metrics(str(tmp_path), 20)
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [10, 20]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_schedules_warm_up_and_decay(schedule):
    import ml_collections

    opt = ml_collections.ConfigDict(
        {
            "learning_rate": 0.1,
            "schedule": schedule,
            "warmup_steps": 10,
            "decay_boundaries": (0.5,),
            "decay_factor": 0.1,
        }
    )
    fn = optim.make_schedule(opt, 110)
    assert float(fn(0)) == 0.0 and float(fn(5)) == pytest.approx(0.05)
    assert float(fn(10)) == pytest.approx(0.1)
    end = float(fn(109))
    expected = {"constant": 0.1, "cosine": 0.0, "step": 0.01}[schedule]
    assert end == pytest.approx(expected, abs=1e-3)


def test_weight_decay_skips_biases():
    import jax.numpy as jnp
    import ml_collections

    opt = ml_collections.ConfigDict(
        {"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5, "schedule": "constant"}
    )
    tx = optim.make_optimizer(opt, 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zeros = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["bias"], 1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer(ml_collections.ConfigDict({"name": "adamax", "learning_rate": 1.0}), 1)
