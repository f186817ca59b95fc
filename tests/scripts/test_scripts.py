"""Smoke tests of the README's main job and of the contract benchmark (no timing asserts)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path):
    # this checkout's tnjax, whatever the environment has installed
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_demo_decomposes_applies_and_reports(tmp_path):
    out_json = tmp_path / "demo.json"
    stdout = _run(["scripts/demo.py", "--json", str(out_json)], tmp_path)
    assert "TT-matrix" in stdout and "CP" in stdout
    rows = json.loads(out_json.read_text())
    assert len(rows) == 2
    for r in rows:
        assert r["params"] < r["dense_params"] / 10
        assert r["flops"] < r["dense_flops"]
        # kernels were planted at the demo's rank plus a few percent of noise
        assert r["kernel_rel_error"] < 0.1, r
        assert abs(r["output_rel_error"] - r["kernel_rel_error"]) < 0.1, r


def test_contract_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    stdout = _run(
        [
            "scripts/bench_contract.py",
            "--reps",
            "2",
            "--cases",
            "ttm_1024x1024_r8_B1",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert "jnp.einsum default" in stdout
    (res,) = json.loads(out.read_text())["results"]
    assert {"dense", "jnp.einsum default", "contract (cost model)", "contract (autotune)"} <= set(
        res["times_ms"]
    )
    assert res["chosen_by_autotune"] in res["plan"]


def test_main_job_quick_variant_prints_a_results_table(tmp_path):
    """The README's first command, in its quick form (the full run is the same configs)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TNJAX_RUNS=str(tmp_path))
    proc = subprocess.run(
        ["bash", "scripts/demo.sh", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| run | data |" in proc.stdout
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in proc.stdout.splitlines()
        if line.startswith("| lenet5_")
    }
    assert set(rows) == {"lenet5_dense", "lenet5_rtt_0.1"}
    assert float(rows["lenet5_dense"][5].strip().rstrip("%")) > 70.0
    assert rows["lenet5_rtt_0.1"][3].strip() == "rtt"
    fraction = float(rows["lenet5_rtt_0.1"][4].strip().rstrip("x"))
    assert abs(fraction / 0.1 - 1) <= 0.1
    summary = json.loads((tmp_path / "quick" / "lenet5_dense" / "summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist" and summary["steps"] == 150
    assert (tmp_path / "quick" / "lenet5_dense" / "curves.png").exists()


def _readme_block(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    after = text[text.index(heading) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def test_readme_compress_your_own_model_runs_as_written(tmp_path):
    script = tmp_path / "compress_own_model.py"
    script.write_text(_readme_block("### Compress your own model"))
    stdout = _run([str(script)], tmp_path)
    names = [line.split()[0] for line in stdout.splitlines()[:-1]]
    assert names == [
        "embed",
        "attention/query",
        "attention/key",
        "attention/value",
        "attention/out",
        "mlp/layers/0",
        "mlp/layers/2",
    ]
    assert stdout.splitlines()[-1] == "(8, 2) []"
