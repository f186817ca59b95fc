"""End-to-end demonstration of tnjax's foundation (the README's main job for now).

1. A 1024 -> 1024 dense layer whose kernel has TT-matrix structure plus noise is
   decomposed by TT-matrix SVD at rank 8 and applied with `tnjax.ops.contract`.
2. A 3x3, 64 -> 64 conv kernel with CP structure plus noise is decomposed by CP-ALS at
   rank 16 and applied as one `contract` call with convolved modes.

For each it prints parameters, forward FLOPs (from `contract_path`) against dense, the
relative error of the kernel and of the layer's outputs, and jitted times against dense
measured in this process. Runs offline in a few seconds on a laptop CPU.

    python scripts/demo.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import tnjax
from tnjax.ops import contract, contract_path


def _time_ms(fn, *args, reps: int = 20) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def linear_demo(key) -> dict:
    rows, cols, rank, batch = (4, 4, 8, 8), (4, 4, 8, 8), 8, 32
    k1, k2, k3 = jax.random.split(key, 3)
    planted = tnjax.TTMatrix.random(k1, rows, cols, rank, std=1.0)
    kernel = planted.to_dense()
    kernel = kernel + 0.05 * jax.random.normal(k2, kernel.shape)  # not exactly low rank
    ttm = tnjax.TTMatrix.from_dense(kernel, rows, cols, rank=rank)
    d = len(rows)
    ins, outs, rks = "abcd", "efgh", "pqrst"
    spec = (
        "z"
        + ins
        + ","
        + ",".join(f"{rks[k]}{ins[k]}{outs[k]}{rks[k + 1]}" for k in range(d))
        + "->z"
        + outs
    )
    x = jax.random.normal(k3, (batch, *rows))
    x_flat = x.reshape(batch, -1)

    def tt_layer(x, *cores):
        return contract(spec, x, *cores).reshape(batch, -1)

    y_tt = jax.jit(tt_layer)(x, *ttm.cores)
    y_dense = x_flat @ kernel
    plan = contract_path(spec, x, *ttm.cores)
    dense_flops = 2 * batch * kernel.shape[0] * kernel.shape[1]
    return {
        "layer": f"Linear {kernel.shape[0]}->{kernel.shape[1]} as TT-matrix {rows}x{cols}",
        "rank": rank,
        "params": ttm.num_params,
        "dense_params": kernel.size,
        "flops": plan.cost.flops,
        "dense_flops": dense_flops,
        "kernel_rel_error": _rel(ttm.to_dense(), kernel),
        "output_rel_error": _rel(y_tt, y_dense),
        "ms": _time_ms(tt_layer, x, *ttm.cores),
        "dense_ms": _time_ms(lambda a, w: a @ w, x_flat, kernel),
        "path": plan.chosen,
    }


def conv_demo(key) -> dict:
    c_in, c_out, k, hw, batch, rank = 64, 64, 3, 32, 32, 16
    k1, k2, k3 = jax.random.split(key, 3)
    planted = tnjax.CP.random(k1, (k, k, c_in, c_out), rank, std=0.1)
    kernel = planted.to_dense() + 0.002 * jax.random.normal(k2, (k, k, c_in, c_out))
    cp = tnjax.CP.from_dense(kernel, rank=rank, key=k3)
    fh, fw, fs, ft = cp.factors  # (I_n, R) factor layout, as in TensorLy
    x = jax.random.normal(key, (batch, hw, hw, c_in))
    spec = "bhws,r,hr,wr,sr,tr->bhwt|hw"

    def cp_conv(x, weights, fh, fw, fs, ft):
        return contract(spec, x, weights, fh, fw, fs, ft, padding="SAME")

    def dense_conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    args = (x, cp.weights, fh, fw, fs, ft)
    plan = contract_path(spec, *args, padding="SAME")
    dense_plan = contract_path("bhws,hwst->bhwt|hw", x, kernel, padding="SAME")
    return {
        "layer": f"Conv {k}x{k} {c_in}->{c_out} on {hw}x{hw} as CP",
        "rank": rank,
        "params": cp.num_params,
        "dense_params": kernel.size,
        "flops": plan.cost.flops,
        "dense_flops": dense_plan.cost.flops,
        "kernel_rel_error": _rel(cp.to_dense(), kernel),
        "output_rel_error": _rel(jax.jit(cp_conv)(*args), dense_conv(x, kernel)),
        "ms": _time_ms(cp_conv, *args),
        "dense_ms": _time_ms(dense_conv, x, kernel),
        "path": plan.chosen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    key = jax.random.key(0)
    rows = [linear_demo(key), conv_demo(jax.random.fold_in(key, 1))]
    print(
        f"tnjax {tnjax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s))\n"
    )
    header = (
        f"{'layer':<58} {'rank':>4} {'params':>9} {'x dense':>8} {'FLOPs x dense':>13} "
        f"{'kernel err':>10} {'output err':>10} {'time x dense':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['layer']:<58} {r['rank']:>4} {r['params']:>9,} "
            f"{r['params'] / r['dense_params']:>8.4f} {r['flops'] / r['dense_flops']:>13.4f} "
            f"{r['kernel_rel_error']:>10.2e} {r['output_rel_error']:>10.2e} "
            f"{r['ms'] / r['dense_ms']:>12.3f}"
        )
    print(
        "\n(time ratios are medians of jitted runs against the dense layer in this process;"
        " errors are relative Frobenius norms)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
