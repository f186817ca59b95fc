"""The benchmark suite: tnjax layers against the dense layers they replace (DESIGN.md section 4).

For each canonical case, in one process (jitted, warmed up, interleaved rounds, median of
best-of-burst): forward and forward+backward times of the tnjax layer, of the dense layer
and, for the TT-matrix linears, of plain `jnp.einsum` (default path) on the same cores;
their ratios to dense; the FLOPs of the path taken against opt_einsum's optimum and against
dense; XLA's compiled memory for the embedding; one training step of LeNet-5 and ResNet-32,
dense against 10%-compressed models; and the machine's roofline (a large float32 matmul's
GFLOP/s and a streaming copy's GB/s, measured in the same run). With `--peers`, the
TensorLy-Torch / TensorLy rows of `scripts/bench_peers.py` (when torch is installed).

    python scripts/bench.py [--reps 10] [--only linear,conv,embed,train] [--peers] \\
        [--processes 3] [--out docs/results/bench.json]   # also writes docs/results/bench.md

The harness guards itself:
* `--processes N` (default 3) runs the suite in N separate processes, one after the other,
  and reports each ratio's median with its spread (min-max over the processes), never one
  process's number alone;
* every process measures the roofline (matmul GFLOP/s, copy GB/s) before and after its
  cases; a drift above 15% (or processes that disagree by more) marks the run as taken on
  a busy machine;
* every dense baseline's forward+backward / forward time ratio is printed and flagged
  when implausible (outside 1.5-6x: a backward pass costs about twice a forward).

A benchmark, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from bench_contract import median_times  # noqa: E402

from tnjax import nn as tnn  # noqa: E402
from tnjax.ops import contract_path  # noqa: E402

# case id -> (batch, in modes, out modes, rank): the TT-matrix linears of DESIGN.md section 4
LINEAR_CASES = {
    "ttm_novikov_B100": (100, (2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4), 4),
    "ttm_1024_r8_B1": (1, (4, 4, 8, 8), (4, 4, 8, 8), 8),
    "ttm_1024_r8_B256": (256, (4, 4, 8, 8), (4, 4, 8, 8), 8),
}
CONV_FORMATS = ("cp", "tucker", "tt", "tr", "rcp", "rtk", "rtt", "rtr")
CONV_CASE = (128, 32, 64, 64, 3)  # batch, H = W, in, out, kernel
DENSE_BWD_RANGE = (1.5, 6.0)  # plausible dense forward+backward / forward time ratios
ROOFLINE_DRIFT = 0.15  # relative change of the roofline that marks a busy machine
BUSY_LOAD = 0.5  # 1-minute load average per CPU, before a process starts, that marks it busy
EMBED_CASE = (10_131_227, 128, (200, 220, 250), (4, 4, 8), 16, 4096)


# --------------------------------------------------------------------------- timing helpers


def forward_and_grad(module: nnx.Module) -> tuple[Callable, Callable, nnx.State]:
    """Jitted forward(state, x) and forward+backward(state, x) (grads of sum(out) w.r.t.
    the params and x) of `module`, and its state."""
    graph, state = nnx.split(module)

    def forward(state, x):
        return nnx.merge(graph, state, copy=True)(x)

    def loss(state, x):
        return jnp.sum(forward(state, x).astype(jnp.float32))

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1))), state


def time_pairs(entries: dict[str, tuple[Callable, tuple]], reps: int) -> dict[str, float]:
    """Median seconds of each entry (interleaved rounds), via bench_contract's timer."""
    return median_times(entries, reps)


def roofline(reps: int) -> dict[str, float]:
    """The machine's float32 matmul GFLOP/s (2048^3) and streaming copy GB/s (256 MB)."""
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    big = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    t = time_pairs(
        {
            "matmul": (jax.jit(lambda x, y: x @ y), (a, b)),
            "copy": (jax.jit(lambda x: x * 1.0001), (big,)),
        },
        max(3, reps // 2),
    )
    return {
        "matmul_gflops": 2 * n**3 / t["matmul"] / 1e9,
        "copy_gbytes_per_s": 2 * big.size * 4 / t["copy"] / 1e9,  # read + write
    }


def dense_check(times: dict[str, float]) -> dict:
    """The dense baseline's forward+backward / forward ratio and whether it is plausible."""
    ratio = times["dense fwd+bwd"] / times["dense fwd"]
    lo, hi = DENSE_BWD_RANGE
    return {"dense_bwd_over_fwd": ratio, "dense_plausible": lo <= ratio <= hi}


def drift(before: dict[str, float], after: dict[str, float]) -> float:
    """The largest relative change between two roofline measurements."""
    return max(abs(after[k] - before[k]) / before[k] for k in before)


# --------------------------------------------------------------------------- cases


def linear_case(name: str, reps: int) -> dict:
    batch, rows, cols, rank = LINEAR_CASES[name]
    n_in, n_out = math.prod(rows), math.prod(cols)
    layer = tnn.Linear(
        n_in, n_out, format="ttm", in_modes=rows, out_modes=cols, rank=rank, rngs=nnx.Rngs(0)
    )
    dense = nnx.Linear(n_in, n_out, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (batch, n_in))
    t_fwd, t_grad, t_state = forward_and_grad(layer)
    d_fwd, d_grad, d_state = forward_and_grad(dense)
    cores = [c[...] for c in layer.cores]
    spec, bias = layer.spec, layer.bias[...]

    def einsum_forward(x, *cores):  # what a user would write by hand, bias included
        return jnp.einsum(spec, x.reshape(batch, *rows), *cores).reshape(batch, n_out) + bias

    def einsum_loss(cores, x):
        return jnp.sum(einsum_forward(x, *cores))

    times = time_pairs(
        {
            "dense fwd": (d_fwd, (d_state, x)),
            "tnjax fwd": (t_fwd, (t_state, x)),
            "jnp.einsum fwd": (jax.jit(einsum_forward), (x, *cores)),
            "dense fwd+bwd": (d_grad, (d_state, x)),
            "tnjax fwd+bwd": (t_grad, (t_state, x)),
            "jnp.einsum fwd+bwd": (jax.jit(jax.grad(einsum_loss, argnums=(0, 1))), (cores, x)),
        },
        reps,
    )
    plan = contract_path(spec, (batch, *rows), *[c.shape for c in cores])
    dense_flops = 2 * batch * n_in * n_out
    return {
        "case": name,
        "kind": "linear",
        "format": "ttm",
        "params": layer.num_params,
        "dense_params": n_in * n_out,
        "times_ms": {k: v * 1e3 for k, v in times.items()},
        "fwd_ratio": times["tnjax fwd"] / times["dense fwd"],
        "fwd_bwd_ratio": times["tnjax fwd+bwd"] / times["dense fwd+bwd"],
        **dense_check(times),
        "einsum_fwd_ratio": times["jnp.einsum fwd"] / times["dense fwd"],
        "einsum_fwd_bwd_ratio": times["jnp.einsum fwd+bwd"] / times["dense fwd+bwd"],
        "path": plan.chosen,
        "flops_ratio": plan.cost.flops / dense_flops,
        "flop_optimal_ratio": plan.flop_optimal.flops / dense_flops,
    }


def conv_case(fmt: str, reps: int) -> dict:
    batch, hw, c_in, c_out, k = CONV_CASE
    layer = tnn.Conv(c_in, c_out, k, format=fmt, compression=0.1, rngs=nnx.Rngs(0))
    dense = nnx.Conv(c_in, c_out, (k, k), padding="SAME", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (batch, hw, hw, c_in))
    t_fwd, t_grad, t_state = forward_and_grad(layer)
    d_fwd, d_grad, d_state = forward_and_grad(dense)
    times = time_pairs(
        {
            "dense fwd": (d_fwd, (d_state, x)),
            "tnjax fwd": (t_fwd, (t_state, x)),
            "dense fwd+bwd": (d_grad, (d_state, x)),
            "tnjax fwd+bwd": (t_grad, (t_state, x)),
        },
        reps,
    )
    cost = layer.cost(x.shape)
    return {
        "case": f"conv3x3_64_32x32_B128_{fmt}10",
        "kind": "conv",
        "format": fmt,
        "params": cost["params"],
        "dense_params": cost["dense_params"],
        "times_ms": {k: v * 1e3 for k, v in times.items()},
        "fwd_ratio": times["tnjax fwd"] / times["dense fwd"],
        "fwd_bwd_ratio": times["tnjax fwd+bwd"] / times["dense fwd+bwd"],
        **dense_check(times),
        "path": cost["path"],
        "flops_ratio": cost["flops"] / cost["dense_flops"],
        "ranks": list(cost["ranks"]),
    }


def embed_case(reps: int) -> dict:
    vocab, features, vocab_modes, feature_modes, rank, batch = EMBED_CASE
    table = tnn.Embed(
        vocab,
        features,
        format="ttm",
        rank=rank,
        vocab_modes=vocab_modes,
        feature_modes=feature_modes,
        rngs=nnx.Rngs(0),
    )
    ids = jax.random.randint(jax.random.key(1), (batch,), 0, vocab)
    graph, state = nnx.split(table)

    def loss(state, ids):
        return jnp.sum(nnx.merge(graph, state, copy=True)(ids))

    step = jax.jit(jax.grad(loss))
    compiled = step.lower(state, ids).compile()
    mem = compiled.memory_analysis()
    times = time_pairs({"tnjax fwd+bwd": (step, (state, ids))}, reps)
    dense_bytes = vocab * features * 4
    return {
        "case": f"ttm_embed_{vocab}x{features}_r{rank}_{batch}ids",
        "kind": "embed",
        "format": "ttm",
        "params": table.num_params,
        "dense_params": vocab * features,
        "times_ms": {k: v * 1e3 for k, v in times.items()},
        "memory_bytes": {
            "temp": int(mem.temp_size_in_bytes),
            "arguments": int(mem.argument_size_in_bytes),
            "outputs": int(mem.output_size_in_bytes),
            "total": int(
                mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            ),
            "dense_table": dense_bytes,
        },
    }


def train_step_cases(reps: int) -> list[dict]:
    """One training step (the trainer's own jitted step) of dense vs 10% models."""
    import optax

    from experiments import loop, tasks
    from tnjax import models

    out = []
    specs = (
        ("lenet5", (28, 28, 1), 10, 128, ("dense", "tt", "tucker")),
        ("resnet32", (32, 32, 3), 10, 128, ("dense", "tt", "tucker")),
    )
    for name, shape, classes, batch, formats in specs:
        entries, info = {}, {}
        x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
        y = np.random.default_rng(1).integers(0, classes, batch).astype(np.int32)
        data = jax.device_put({"image": x, "label": y})
        for fmt in formats:
            spec = {"format": fmt, "conv_format": fmt, "compression": 0.1}
            layers = None if fmt == "dense" else {"default": spec}
            model = models.create_model(name, num_classes=classes, layers=layers, rngs=nnx.Rngs(0))
            report = models.model_report(model, jnp.zeros((1, *shape)))
            tx = optax.adam(1e-3)
            trainable = loop.Trainable.create(model, tx)
            step = loop.make_train_step(trainable, tx, tasks.TASKS["classification"])
            state = {"s": trainable.state}

            def run(batch, step=step, state=state):
                state["s"], sums = step(state["s"], batch)
                return sums

            entries[fmt] = (run, (data,))
            info[fmt] = {"params": report["params"], "compression": report["compression"]}
        times = time_pairs(entries, reps)
        for fmt in formats:
            out.append(
                {
                    "case": f"train_step_{name}_B{batch}_{fmt}",
                    "kind": "train_step",
                    "format": fmt,
                    "params": info[fmt]["params"],
                    "compression": info[fmt]["compression"],
                    "times_ms": {"step": times[fmt] * 1e3},
                    "ratio": times[fmt] / times["dense"],
                }
            )
    return out


# --------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    roof = result["roofline"]
    lines = [
        f"Machine: {result['meta']['machine']}, {result['meta']['cpu_count']} CPUs, "
        f"backend {result['meta']['backend']}, jax {result['meta']['jax']}; "
        f"{result['meta']['reps']} interleaved rounds, median of best-of-burst. Roofline "
        f"measured in the same run: float32 matmul {roof['matmul_gflops']:.1f} GFLOP/s, "
        f"streaming copy {roof['copy_gbytes_per_s']:.1f} GB/s.",
        "",
        "| case | format | params / dense | fwd ms (dense) | fwd ratio | fwd+bwd ms (dense) "
        "| fwd+bwd ratio | jnp.einsum fwd / fwd+bwd | FLOPs / dense (optimum) | path |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        t = r["times_ms"]
        if r["kind"] in ("linear", "conv"):
            ein = (
                f"{r['einsum_fwd_ratio']:.3f}x / {r['einsum_fwd_bwd_ratio']:.3f}x"
                if "einsum_fwd_ratio" in r
                else "-"
            )
            opt = f" ({r['flop_optimal_ratio']:.3f})" if "flop_optimal_ratio" in r else ""
            lines.append(
                f"| {r['case']} | {r['format']} | {r['params'] / r['dense_params']:.4f} "
                f"| {t['tnjax fwd']:.3f} ({t['dense fwd']:.3f}) | **{r['fwd_ratio']:.3f}x** "
                f"| {t['tnjax fwd+bwd']:.3f} ({t['dense fwd+bwd']:.3f}) "
                f"| **{r['fwd_bwd_ratio']:.3f}x** | {ein} | {r['flops_ratio']:.3f}{opt} "
                f"| {r['path']} |"
            )
        elif r["kind"] == "embed":
            m = r["memory_bytes"]
            lines.append(
                f"| {r['case']} | ttm | {r['params']:,} params | - | - "
                f"| {t['tnjax fwd+bwd']:.3f} | - | - | XLA memory {m['total'] / 1e6:.1f} MB "
                f"(temp {m['temp'] / 1e6:.1f} MB); dense table {m['dense_table'] / 1e9:.2f} GB "
                "| - |"
            )
        else:
            lines.append(
                f"| {r['case']} | {r['format']} | {r['compression']:.4f} | - | - "
                f"| {t['step']:.2f} | **{r['ratio']:.3f}x** | - | - | - |"
            )
    return "\n".join(lines) + "\n"


def _key(row: dict) -> tuple[str, str]:
    return row["case"], row["format"]


def aggregate(results: list[dict]) -> dict:
    """Per (case, format): every ratio's median and (min, max) over the processes."""
    out = {}
    for row in results[0]["rows"]:
        runs = [r for res in results for r in res["rows"] if _key(r) == _key(row)]
        stats = {}
        for name in ("fwd_ratio", "fwd_bwd_ratio", "ratio", "dense_bwd_over_fwd"):
            values = [r[name] for r in runs if name in r]
            if values:
                stats[name] = {
                    "median": float(np.median(values)),
                    "min": float(min(values)),
                    "max": float(max(values)),
                }
        stats["dense_plausible"] = all(r.get("dense_plausible", True) for r in runs)
        stats["rows"] = runs
        out["/".join(_key(row))] = stats
    return out


def busy_report(results: list[dict]) -> dict:
    """Roofline drift within each process and across processes."""
    within = [res["roofline_drift"] for res in results]
    firsts = [res["roofline"] for res in results]
    across = max(drift(firsts[0], f) for f in firsts) if len(firsts) > 1 else 0.0
    worst = max(max(within), across)
    # a steady background load slows before and after alike: the load average tells
    loads = [res.get("meta", {}).get("load_per_cpu", 0.0) for res in results]
    busy = worst > ROOFLINE_DRIFT or max(loads) > BUSY_LOAD
    return {"within": within, "across": across, "load_per_cpu": loads, "busy": busy}


def _spread(stats: dict, name: str) -> str:
    s = stats.get(name)
    if s is None:
        return "-"
    return f"**{s['median']:.3f}x** [{s['min']:.3f}-{s['max']:.3f}]"


def markdown_spread(meta: dict, results: list[dict], agg: dict, busy: dict) -> str:
    roofs = [res["roofline"] for res in results] + [res["roofline_after"] for res in results]
    gf = [r["matmul_gflops"] for r in roofs]
    gb = [r["copy_gbytes_per_s"] for r in roofs]
    lines = [
        f"Machine: {meta['machine']}, {meta['cpu_count']} CPUs, backend {meta['backend']}, "
        f"jax {meta['jax']}; {len(results)} separate processes of {meta['reps']} interleaved "
        f"rounds each; ratios are the median over the processes [min-max]. Roofline before "
        f"and after each process: matmul {min(gf):.1f}-{max(gf):.1f} GFLOP/s, copy "
        f"{min(gb):.1f}-{max(gb):.1f} GB/s; largest drift {max(busy['within']):.0%} within a "
        f"process, {busy['across']:.0%} across processes; load average per CPU before each "
        f"process {', '.join(f'{x:.2f}' for x in busy['load_per_cpu'])}"
        + (" -- **BUSY MACHINE: do not publish these ratios**." if busy["busy"] else "."),
        "",
        "| case | format | fwd ratio | fwd+bwd ratio | dense fwd+bwd / fwd | dense ms fwd "
        "(fwd+bwd) |",
        "|---|---|---|---|---|---|",
    ]
    for key, stats in agg.items():
        case, fmt = key.split("/", 1)
        row = stats["rows"][0]
        t = row["times_ms"]
        if "fwd_ratio" in stats:
            d = stats["dense_bwd_over_fwd"]
            flag = "" if stats["dense_plausible"] else " **implausible**"
            dense = f"{t['dense fwd']:.3f} ({t['dense fwd+bwd']:.3f})"
            lines.append(
                f"| {case} | {fmt} | {_spread(stats, 'fwd_ratio')} | "
                f"{_spread(stats, 'fwd_bwd_ratio')} | {d['median']:.2f}x "
                f"[{d['min']:.2f}-{d['max']:.2f}]{flag} | {dense} |"
            )
        elif "ratio" in stats:
            lines.append(f"| {case} | {fmt} | - | {_spread(stats, 'ratio')} (train step) | - | - |")
        else:
            lines.append(f"| {case} | {fmt} | - | {t['tnjax fwd+bwd']:.3f} ms | - | - |")
    return "\n".join(lines) + "\n"


def repeated(args: argparse.Namespace, meta: dict) -> dict:
    """Runs the suite in `args.processes` separate processes and aggregates them."""
    passed = [f"--reps={args.reps}", f"--only={args.only}"] + (["--peers"] if args.peers else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = os.path.join(tmp, f"run{i}.json")
            cmd = [sys.executable, __file__, *passed, "--processes=1", f"--out={out}"]
            print(f"process {i + 1}/{args.processes}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                results.append(json.load(f))
    agg = aggregate(results)
    busy = busy_report(results)
    table = markdown_spread(meta, results, agg, busy)
    print(table)
    result = {"meta": meta, "processes": results, "aggregate": agg, "busy": busy}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(table)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--only", default="linear,conv,embed,train")
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--out", default="", help="JSON path (a .md table is written beside)")
    parser.add_argument(
        "--processes", type=int, default=3, help="separate processes to repeat the suite in"
    )
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    unknown = parts - {"linear", "conv", "embed", "train"}
    if unknown:
        parser.error(f"--only: unknown part(s) {sorted(unknown)}")
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "reps": args.reps,
        "date": time.strftime("%Y-%m-%d"),
        "load_per_cpu": os.getloadavg()[0] / (os.cpu_count() or 1),
        "command": "python scripts/bench.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.processes > 1:
        return repeated(args, meta)
    before = roofline(args.reps)
    rows = []
    if "linear" in parts:
        rows += [linear_case(name, args.reps) for name in LINEAR_CASES]
    if "conv" in parts:
        rows += [conv_case(fmt, args.reps) for fmt in CONV_FORMATS]
    if "embed" in parts:
        rows.append(embed_case(args.reps))
    if "train" in parts:
        rows += train_step_cases(max(3, args.reps // 2))
    result = {"meta": meta, "roofline": before, "rows": rows}
    result["roofline_after"] = roofline(args.reps)
    result["roofline_drift"] = drift(before, result["roofline_after"])
    if args.peers:
        import bench_peers

        result["peers"] = bench_peers.run(reps=args.reps)
    table = markdown(result)
    if result.get("peers"):
        import bench_peers

        table += "\n" + bench_peers.markdown_table(result["peers"])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(table)
    return result


if __name__ == "__main__":
    main()
