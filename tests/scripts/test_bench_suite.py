"""scripts/bench.py runs end to end on small stand-ins of its cases and writes its report."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench  # noqa: E402


def test_bench_linear_and_embed_rows_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "LINEAR_CASES", {"ttm_small_B8": (8, (4, 4), (4, 4), 2)})
    monkeypatch.setattr(bench, "EMBED_CASE", (1000, 16, (10, 10, 10), (2, 2, 4), 4, 64))
    out = tmp_path / "bench.json"
    result = bench.main(
        ["--reps", "1", "--only", "linear,embed", "--processes", "1", "--out", str(out)]
    )
    linear, embed = result["rows"]
    assert linear["case"] == "ttm_small_B8" and linear["params"] < linear["dense_params"]
    for key in ("fwd_ratio", "fwd_bwd_ratio", "einsum_fwd_ratio", "einsum_fwd_bwd_ratio"):
        assert linear[key] > 0
    assert 0 < linear["flop_optimal_ratio"] <= linear["flops_ratio"]
    assert embed["memory_bytes"]["total"] > 0 and embed["times_ms"]["tnjax fwd+bwd"] > 0
    assert result["roofline"]["matmul_gflops"] > 0
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["case"] == "ttm_small_B8"
    assert "ttm_small_B8" in (tmp_path / "bench.md").read_text()
