"""The benchmark harness guards itself (scripts/bench.py): spreads over processes, the dense
baseline's backward/forward plausibility, roofline drift marking a busy machine. Synthetic
timings only: nothing here measures time."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench  # noqa: E402


def _row(fwd_ratio, fwd_bwd_ratio, dense_fwd=10.0, dense_bwd=30.0, fmt="tt"):
    times = {"dense fwd": dense_fwd, "dense fwd+bwd": dense_bwd}
    times_ms = {**times, "tnjax fwd": 1.0, "tnjax fwd+bwd": 1.0}
    return {
        "case": "conv",
        "format": fmt,
        "kind": "conv",
        "times_ms": times_ms,
        "fwd_ratio": fwd_ratio,
        "fwd_bwd_ratio": fwd_bwd_ratio,
        **bench.dense_check(times),
    }


def _result(rows, before=(100.0, 10.0), after=(100.0, 10.0)):
    roof = lambda v: {"matmul_gflops": v[0], "copy_gbytes_per_s": v[1]}  # noqa: E731
    return {
        "rows": rows,
        "roofline": roof(before),
        "roofline_after": roof(after),
        "roofline_drift": bench.drift(roof(before), roof(after)),
    }


def test_ratios_are_reported_as_median_and_spread_over_processes():
    results = [_result([_row(r, 2 * r)]) for r in (0.5, 0.2, 0.3)]
    stats = bench.aggregate(results)["conv/tt"]
    assert stats["fwd_ratio"] == {"median": 0.3, "min": 0.2, "max": 0.5}
    assert stats["fwd_bwd_ratio"]["median"] == pytest.approx(0.6)
    busy = bench.busy_report(results)
    assert not busy["busy"]
    table = bench.markdown_spread(
        {"machine": "x", "cpu_count": 2, "backend": "cpu", "jax": "0", "reps": 3},
        results,
        bench.aggregate(results),
        busy,
    )
    assert "**0.300x** [0.200-0.500]" in table and "BUSY" not in table


def test_an_implausible_dense_backward_is_flagged():
    """A dense fwd+bwd only 1.1x its forward (the published conv figures were the reverse
    case: a slow forward baseline) is marked in the table."""
    ok = bench.dense_check({"dense fwd": 10.0, "dense fwd+bwd": 31.0})
    assert ok["dense_plausible"] and ok["dense_bwd_over_fwd"] == pytest.approx(3.1)
    for bwd in (11.0, 90.0):
        assert not bench.dense_check({"dense fwd": 10.0, "dense fwd+bwd": bwd})["dense_plausible"]
    results = [_result([_row(0.1, 0.1, dense_bwd=11.0)]), _result([_row(0.1, 0.1)])]
    agg = bench.aggregate(results)
    assert not agg["conv/tt"]["dense_plausible"]
    table = bench.markdown_spread(
        {"machine": "x", "cpu_count": 2, "backend": "cpu", "jax": "0", "reps": 3},
        results,
        agg,
        bench.busy_report(results),
    )
    assert "**implausible**" in table


def test_a_steady_background_load_marks_a_busy_machine():
    """Before and after alike slowed by another job: the load average catches it."""
    quiet, loaded = _result([_row(0.1, 0.1)]), _result([_row(0.1, 0.1)])
    quiet["meta"], loaded["meta"] = {"load_per_cpu": 0.1}, {"load_per_cpu": 1.9}
    assert not bench.busy_report([quiet, quiet])["busy"]
    assert bench.busy_report([quiet, loaded])["busy"]


@pytest.mark.parametrize(
    "before,after,others,busy",
    [
        ((100.0, 10.0), (99.0, 10.1), (100.0, 10.0), False),
        ((100.0, 10.0), (70.0, 10.0), (100.0, 10.0), True),  # slowed down within a process
        ((100.0, 10.0), (100.0, 10.0), (100.0, 6.0), True),  # a second process saw less
    ],
)
def test_roofline_drift_marks_a_busy_machine(before, after, others, busy):
    results = [_result([_row(0.1, 0.1)], before, after), _result([_row(0.1, 0.1)], others, others)]
    report = bench.busy_report(results)
    assert report["busy"] is busy, report
