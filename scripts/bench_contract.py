"""Times `tnjax.ops.contract` on the canonical TT-matrix cases against dense and jnp.einsum.

For each case (DESIGN.md section 4) it prints and saves (JSON) the median time of the jitted
dense layer, of `jnp.einsum` with its default path, of `contract` with the cost model,
of `contract` autotuned, and of every candidate path, all measured in the same process
with interleaved repeats.

    python scripts/bench_contract.py [--reps 30] [--out docs/results/bench_contract.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from tnjax.ops import contract, contract_path


def ttm_case(batch: int, row_modes, col_modes, rank: int):
    """Spec and operands of y = x @ W with W a TT-matrix (Novikov's TT layer)."""
    d = len(row_modes)
    ranks = (1,) + (rank,) * (d - 1) + (1,)
    ins, outs, rks = "abcdefgh"[:d], "ijklmnop"[:d], "qrstuvwxy"[: d + 1]
    spec = (
        "z"
        + ins
        + ","
        + ",".join(f"{rks[k]}{ins[k]}{outs[k]}{rks[k + 1]}" for k in range(d))
        + "->z"
        + outs
    )
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, *row_modes))
    cores = [
        jax.random.normal(
            jax.random.key(k + 1), (ranks[k], row_modes[k], col_modes[k], ranks[k + 1])
        )
        for k in range(d)
    ]
    n_in, n_out = int(np.prod(row_modes)), int(np.prod(col_modes))
    dense_w = jax.random.normal(jax.random.key(99), (n_in, n_out))
    return spec, x, cores, dense_w


CASES = {
    "ttm_25088x4096_r4_B100": (100, (2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4), 4),
    "ttm_1024x1024_r8_B1": (1, (4, 4, 8, 8), (4, 4, 8, 8), 8),
    "ttm_1024x1024_r8_B256": (256, (4, 4, 8, 8), (4, 4, 8, 8), 8),
}


def median_times(fns: dict, reps: int) -> dict[str, float]:
    """Median over `reps` interleaved rounds of the best time of a short burst per round."""
    burst = {}
    for k, (f, args) in fns.items():  # compile, warm up, size the bursts (~20 ms each)
        jax.block_until_ready(f(*args))
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        burst[k] = max(1, min(50, int(0.02 / max(time.perf_counter() - t0, 1e-7))))
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):  # rotate the order so that machine noise hits every entry alike
        for k in names[r % len(names) :] + names[: r % len(names)]:
            f, args = fns[k]
            best = float("inf")
            for _ in range(burst[k]):
                t0 = time.perf_counter()
                jax.block_until_ready(f(*args))
                best = min(best, time.perf_counter() - t0)
            times[k].append(best)
    return {k: float(np.median(v)) for k, v in times.items()}


def run_case(name: str, reps: int) -> dict:
    batch, rows, cols, rank = CASES[name]
    spec, x, cores, w = ttm_case(batch, rows, cols, rank)
    x_flat = x.reshape(batch, -1)
    plan = contract_path(spec, x, *cores)
    tuned = contract_path(spec, x, *cores, optimize="autotune")
    fns = {
        "dense": (jax.jit(lambda a, b: a @ b), (x_flat, w)),
        "jnp.einsum default": (jax.jit(lambda *o: jnp.einsum(spec, *o)), (x, *cores)),
        "contract (cost model)": (jax.jit(lambda *o: contract(spec, *o)), (x, *cores)),
        "contract (autotune)": (
            jax.jit(lambda *o: contract(spec, *o, optimize="autotune")),
            (x, *cores),
        ),
    }
    for cand, pc in plan.candidates.items():
        if pc.seconds < 20 * plan.cost.seconds:  # skip hopeless paths (as autotune does)
            fns[f"path {cand}"] = (
                jax.jit(lambda *o, p=pc.path: contract(spec, *o, optimize=p)),
                (x, *cores),
            )
    times = median_times(fns, reps)
    dense = times["dense"]
    dense_flops = 2 * batch * int(np.prod(rows)) * int(np.prod(cols))
    return {
        "case": name,
        "spec": spec,
        "times_ms": {k: v * 1e3 for k, v in times.items()},
        "ratio_to_dense": {k: v / dense for k, v in times.items()},
        "chosen_by_cost_model": plan.chosen,
        "chosen_by_autotune": tuned.chosen,
        "flops_ratio_chosen": plan.cost.flops / dense_flops,
        "flops_ratio_flop_optimal": plan.flop_optimal.flops / dense_flops,
        "plan": str(plan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default="docs/results/bench_contract.json")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    results = []
    for name in args.cases:
        r = run_case(name, args.reps)
        results.append(r)
        print(f"\n== {name}  ({r['spec']})")
        print(
            f"   FLOPs vs dense: chosen {r['flops_ratio_chosen']:.3f}x, "
            f"flop-optimal {r['flops_ratio_flop_optimal']:.3f}x; cost model chose "
            f"{r['chosen_by_cost_model']}, autotune chose {r['chosen_by_autotune']}"
        )
        for k, v in sorted(r["times_ms"].items(), key=lambda kv: kv[1]):
            print(f"   {k:<32} {v:9.3f} ms  {r['ratio_to_dense'][k]:7.3f}x dense")
        t = r["times_ms"]
        fastest = min(v for k, v in t.items() if k.startswith("path "))
        print(
            f"   contract/jnp.einsum: {t['contract (cost model)'] / t['jnp.einsum default']:.3f}"
            f"   autotune/fastest candidate: {t['contract (autotune)'] / fastest:.3f}"
        )
    meta = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "reps": args.reps,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown_table(meta, results))
    print(f"\nwrote {args.out} and {md}")


def markdown_table(meta: dict, results: list[dict]) -> str:
    """The figures of one run as a markdown table (times are medians, ratios to dense)."""
    lines = [
        f"Machine: {meta['machine']}, {meta['cpu_count']} CPUs, backend {meta['backend']}, "
        f"jax {meta['jax']}; {meta['reps']} interleaved rounds, median of best-of-burst.",
        "",
        "| case | dense ms | jnp.einsum default | contract (cost model) | contract (autotune) "
        "| fastest candidate | FLOPs chosen / dense | FLOP-optimal / dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, q = r["times_ms"], r["ratio_to_dense"]
        fastest = min((k for k in t if k.startswith("path ")), key=t.get)
        lines.append(
            f"| {r['case']} | {t['dense']:.3f} | {q['jnp.einsum default']:.3f}x "
            f"| {q['contract (cost model)']:.3f}x ({r['chosen_by_cost_model']}) "
            f"| {q['contract (autotune)']:.3f}x ({r['chosen_by_autotune']}) "
            f"| {q[fastest]:.3f}x ({fastest[5:]}) | {r['flops_ratio_chosen']:.3f} "
            f"| {r['flops_ratio_flop_optimal']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
