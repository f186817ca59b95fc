"""Every config's quick variant end to end, plus config parsing and the CLI's error paths."""

from __future__ import annotations

import glob
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import common
from experiments import main as launcher
from experiments import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not os.path.basename(p).startswith(("_", "common"))
)
FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
# Quick variants that read Fashion-MNIST, and the accuracy they must beat (chance is 0.1).
MIN_ACCURACY = {"lenet5": 0.7, "mlp": 0.7, "dlrm": 0.6}


def _config(name: str, arg: str = "quick"):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def test_every_config_is_listed():
    assert {"lenet5", "mlp", "resnet_cifar", "resnet50_imagenet", "dlrm", "compress_lenet5"} <= set(
        CONFIGS
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_quick_variant_runs_end_to_end(name, tmp_path):
    config = _config(name)
    data = config.data
    if data.name == "fashion_mnist" and not os.path.exists(FASHION):
        pytest.skip("needs `apt-get install dataset-fashion-mnist` (scripts/test.sh installs it)")
    summary = launcher.run(config, str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=list)
    )
    for key in (
        "test_accuracy",
        "params",
        "dense_equivalent_params",
        "compression",
        "flops_per_example",
        "flops_ratio",
        "layers",
        "wall_time_sec",
    ):
        assert key in summary, key
    if config.trainer == "compress":
        _check_compress_summary(config, summary, tmp_path)
    elif config.trainer == "bayes":
        _check_bayes_summary(config, summary, tmp_path)
    else:
        _check_train_summary(name, config, summary, tmp_path)


def _check_train_summary(name, config, summary, tmp_path):
    assert np.isfinite(summary["test_loss"])
    assert summary["test_accuracy"] > MIN_ACCURACY.get(name, 0.0)
    assert summary["params"] == summary["dense_equivalent_params"]  # quick variants are dense
    assert summary["compression"] == 1.0 and summary["flops_ratio"] == 1.0
    records = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in records if r["split"] == "train"][-1] == config.num_steps
    assert records[-1]["split"] == "test"
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert os.path.isdir(tmp_path / "checkpoints" / str(config.num_steps))


def _check_bayes_summary(config, summary, tmp_path):
    assert summary["learned_ranks"]
    for row in summary["prune_report"].values():
        before, after = row["ranks_before"], row["ranks_after"]
        assert len(after) == len(before) and all(
            1 <= a <= b for a, b in zip(after, before, strict=True)
        )
    if summary["planted_ranks"] is not None:
        (learned,) = summary["learned_ranks"].values()
        assert len(learned) == len(summary["planted_ranks"])
    assert summary["after_pruning"]["params"] <= summary["before_pruning"]["params"]
    assert np.isfinite(summary["test_loss"])
    assert (tmp_path / "lambdas.jsonl").exists()


def _check_compress_summary(config, summary, tmp_path):
    acc = summary["accuracy"]
    assert set(acc) == {"dense", "decomposed", "phase1", "phase2"}
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    layers = summary["compressed_layers"]
    assert layers["fraction"] == pytest.approx(layers["params"] / layers["dense_params"])
    assert abs(layers["fraction"] / config.rate - 1) <= 0.1
    assert summary["params"] < summary["dense_equivalent_params"]
    for row in summary["layers"]:
        assert row["params"] < row["dense_params"] and row["ranks"]
    # the teacher was trained, and phase 2 checkpointed, in the workdir
    assert (tmp_path / "teacher" / "summary.json").exists()
    assert os.path.isdir(tmp_path / "phase2" / "checkpoints" / str(config.phase2.steps))


def test_tensorized_lenet5_reports_formats_ranks_and_compression(tmp_path):
    config = _config("lenet5", "quick,format=tt,rank=4,conv_format=rcp,dataset=synthetic")
    config.num_steps = 20
    summary = launcher.run(config, str(tmp_path))
    by_name = {layer["name"]: layer for layer in summary["layers"]}
    assert by_name["conv1"]["format"] == "dense" and by_name["fc3"]["format"] == "dense"
    assert by_name["conv2"]["format"] == "rcp"
    assert by_name["fc1"]["format"] == "tt" and by_name["fc2"]["format"] == "tt"
    assert max(by_name["fc1"]["ranks"]) <= 4
    assert summary["params"] < summary["dense_equivalent_params"]
    assert summary["compression"] == pytest.approx(
        summary["params"] / summary["dense_equivalent_params"]
    )
    assert summary["flops_per_example"] == sum(layer["flops"] for layer in summary["layers"])


def test_parse_arg_types_and_unknown_keys():
    c = common.parse_arg(
        "quick,rank=8,compression=0.1,format=tt",
        quick=False,
        rank=0,
        compression=0.0,
        format="dense",
    )
    assert (c.quick, c.rank, c.compression, c.format) == (True, 8, 0.1, "tt")
    with pytest.raises(ValueError, match="unknown config arg 'quik'"):
        common.parse_arg("quik", quick=False)
    with pytest.raises(ValueError, match="rank='eight'"):
        common.parse_arg("rank=eight", rank=0)


def _cli(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_rejects_a_mistyped_override(tmp_path):
    proc = _cli(
        "--config=configs/lenet5.py:quick",
        "--config.optimizr.learning_rate=0.1",
        f"--workdir={tmp_path}",
    )
    assert proc.returncode != 0
    assert "optimizr" in proc.stderr


def test_cli_rejects_a_mistyped_config_arg(tmp_path):
    proc = _cli("--config=configs/lenet5.py:quick,rnak=4", f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert "rnak" in proc.stderr


def test_cli_names_a_missing_dataset(tmp_path):
    proc = _cli(
        "--config=configs/lenet5.py:quick",
        "--config.data.name=mnist",
        "--config.data.source=local",
        f"--config.data.data_dir={tmp_path}/nothing",
        f"--workdir={tmp_path}/run",
    )
    assert proc.returncode == 1
    assert "TNJAX_DATA_DIR" in proc.stderr and "mnist" in proc.stderr


def test_a_zero_in_a_config_reaches_the_data_pipeline():
    """bayes_dlrm once asked for `zipf_exponent = 0.0` (uniform ids) and got Zipf(1): the
    trainer dropped every 0 and "" as "not set". Only None means unset now."""
    from experiments import input_pipeline, train

    config = importlib.import_module("configs.bayes_dlrm").get_config("quick,zipf=0")
    data = train.data_config(config)
    assert data["zipf_exponent"] == 0.0
    ds = input_pipeline.load_dataset(data)
    assert ds.info["zipf_exponent"] == 0.0
    counts = np.bincount(np.asarray(ds.train["sparse"][:, 0]), minlength=200)
    assert counts.max() < 2 * counts.mean()  # uniform; Zipf(1) gives the top id ~34x the mean
    # unset optional fields are None and still settable (typed placeholders)
    assert config.data.data_dir is None
    config.data.data_dir = "/tmp"
    with pytest.raises(TypeError):
        config.data.num_test = "all"


def test_a_workdir_written_with_the_old_unset_markers_still_resumes(tmp_path):
    """Before None meant "unset", config.json stored data_dir "" and num_train 0."""
    from experiments import workdir

    config = importlib.import_module("configs.lenet5").get_config()  # full data: all unset
    saved = json.loads(config.to_json_best_effort())
    saved["data"].update(data_dir="", tfds_data_dir="", num_train=0, num_test=0)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    workdir.check_resumable(str(tmp_path), config)  # the same run: accepted
    saved["data"]["num_test"] = 7
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    with pytest.raises(ValueError, match="data.num_test"):
        workdir.check_resumable(str(tmp_path), config)
