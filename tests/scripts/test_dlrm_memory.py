"""scripts/dlrm_memory.py: per-device memory of the paper's Criteo tables."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")


def _load():
    sys.path.insert(0, SCRIPTS)
    spec = importlib.util.spec_from_file_location(
        "dlrm_memory", os.path.join(SCRIPTS, "dlrm_memory.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_state_and_working_memory_per_device():
    mod = _load()
    result = mod.compute(256, mod.parse_meshes("1x1,4x1,1x4"), only=["dense", "TTM HC"])
    dense, ttm = result["rows"]
    # dense: the five tables' 4,248,739,968 parameters; TTM-HC: the paper's 163,976
    assert dense["params"] == 4_248_739_968 and ttm["params"] == 163_976
    assert ttm["state_bytes"] == 16 * 163_976
    one, data4, model4 = ttm["per_mesh"]
    assert (one["ids_per_device"], data4["ids_per_device"], model4["ids_per_device"]) == (
        256,
        64,
        256,
    )
    # working memory is XLA's, positive and smaller for the smaller per-device batch
    assert 0 < data4["working_bytes"] < one["working_bytes"] == model4["working_bytes"]
    assert one["total_bytes"] == ttm["state_bytes"] + one["working_bytes"]
    d_one, _, d_model4 = dense["per_mesh"]
    # the dense tables' state (68 GB) only shrinks by splitting it over the model axis
    assert d_one["total_bytes"] > 16 * 4_248_739_968
    assert d_model4["state_bytes_per_device"] == 4 * 4_248_739_968
    assert "| TTM HC | 163,976 |" in mod.markdown(result)
    with pytest.raises(ValueError, match="unknown row"):
        mod.compute(256, [(1, 1)], only=["TTM XX"])
    with pytest.raises(ValueError, match="expected DATAxMODEL"):
        mod.parse_meshes("8by1")
