"""configs/bayes_dlrm.py: the bayes trainer on a DLRM with tensorized embedding tables."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from experiments import bayes

TABLES = ("emb0", "emb1", "emb2", "emb3")


def _config(arg: str):
    return importlib.import_module("configs.bayes_dlrm").get_config(arg)


def test_quick_config_trains_reads_out_and_prunes_every_table(tmp_path):
    config = _config("quick")
    config.num_steps = 100
    config.log_every = 50
    config.checkpoint_every = 100
    summary = bayes.train_and_evaluate(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["learned_ranks"]) == set(TABLES)
    layers = {row["name"]: row for row in summary["layers"]}
    for name in TABLES:
        assert layers[name]["format"] == "ttm"
        learned = on_disk["learned_ranks"][name]
        assert len(learned) == 2 and all(1 <= r <= 16 for r in learned)
    before, after = summary["before_pruning"], summary["after_pruning"]
    assert after["params"] <= before["params"]
    assert np.isfinite(after["test"]["loss"]) and np.isfinite(summary["test_loss"])
    assert (tmp_path / "lambdas.jsonl").exists()


@pytest.mark.parametrize("fmt", ["tt", "cp", "tucker"])
def test_other_formats_tensorize_every_table(fmt):
    config = _config(f"quick,format={fmt}")
    specs = config.model.layers.overrides
    assert set(specs) == set(TABLES)
    assert all(spec.format == fmt for spec in specs.values())
    assert config.trainer == "bayes" and config.data.name == "synthetic_clicks"


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="format='tr'"):
        _config("format=tr")
