"""scripts/bench_peers.py: row fields of the peer benchmark (no timing asserts).

Skipped where tltorch is not installed (CI does not install torch).
"""

import importlib.util
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "bench_peers.py")


@pytest.fixture(autouse=True)
def _peers_installed():
    """Skips without the peers; imports them only here, and puts TensorLy's backend back
    afterwards (importing tltorch switches it to PyTorch for the whole process, which
    would break every other test that compares against TensorLy)."""
    pytest.importorskip("torch")
    tl = pytest.importorskip("tensorly")
    backend = tl.get_backend()
    pytest.importorskip("tltorch")
    yield
    tl.set_backend(backend)


def _load():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_layer_row_fields_and_times():
    bench = _load()
    (row,) = bench.run(reps=1, cases=["ttm_1024_r8_B1"])
    assert row["case"] == "ttm_1024_r8_B1"
    assert (row["kind"], row["library"], row["format"]) == ("layer", "tltorch", "blocktt")
    assert row["rank"] == [1, 8, 8, 8, 1]
    assert row["dense_params"] == 1024 * 1024
    # cores (r, J_k, I_k, r) on modes 4x4x8x8 a side
    assert row["params"] == 4 * 4 * 8 + 8 * 4 * 4 * 8 + 8 * 8 * 8 * 8 + 8 * 8 * 8
    for key in ("fwd", "fwdbwd", "recon_fwd", "recon_fwdbwd"):
        assert _positive(row[f"{key}_ms"]) and _positive(row[f"{key}_ratio"]), key
    assert _positive(row["dense_fwd_ms"]) and _positive(row["dense_fwdbwd_ms"])
    assert row["factorized_vs_reconstructed_rel_diff"] < 1e-4


def test_decomp_row_fields_and_errors_agree():
    bench = _load()
    (row,) = bench.run(reps=1, cases=["decomp_tt_conv64x64x3x3_r8"])
    assert (row["kind"], row["library"], row["format"]) == ("decomp", "tensorly", "tt")
    assert row["shape"] == [64, 64, 3, 3]
    assert _positive(row["tensorly_ms"]) and _positive(row["tnjax_ms"])
    # same algorithm (TT-SVD) at the same ranks: same error up to float32 rounding
    assert abs(row["tensorly_rel_err"] - row["tnjax_rel_err"]) < 1e-3


def test_unknown_case_is_an_error():
    with pytest.raises(ValueError, match="valid ids"):
        _load().run(reps=1, cases=["no_such_case"])
