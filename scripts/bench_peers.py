"""Times the peer libraries (TensorLy-Torch layers, TensorLy decompositions) on tnjax's cases.

Two kinds of rows, one per case id (DESIGN.md section 4):

- ``layer`` rows: a `tltorch` factorized layer against the torch dense layer of the same
  shape (`nn.Linear` / `nn.Conv2d`), same process, ``torch.set_num_threads(2)``. Forward
  under ``torch.no_grad()`` and forward+backward (``loss = y.sum()``, gradients of the
  parameters), each for tltorch's default ``implementation="factorized"`` and for
  ``"reconstructed"`` (build the dense weight, then the dense op). Times are medians of
  interleaved rounds (best of a short burst per round) after warm-up; ratios are to the
  dense layer timed in the same rounds. Case ids match tnjax's benchmark rows.
- ``decomp`` rows: ``tensorly.decomposition`` (numpy backend) against `tnjax.formats`
  (jitted, warmed up, ``block_until_ready``) at the same ranks and sweep counts, with the
  relative reconstruction error of both.

Importable (``bench_peers.run(reps=..., cases=None) -> list[dict]``, used by
``scripts/bench.py --peers``) and runnable alone:

    python scripts/bench_peers.py [--reps 7] [--out docs/results/bench_peers.json]
        [--cases ttm_1024_r8_B1 ...]

torch, tensorly and tltorch are benchmark-only: imported lazily, never a tnjax dependency;
without them `run` prints why and returns [].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Novikov et al.'s VGG fc6 and the 1024 -> 1024 case, with the mode factorisations of
# scripts/bench_contract.py (input modes, output modes).
NOVIKOV_MODES = ((2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4))
SQUARE_1024_MODES = ((4, 4, 8, 8), (4, 4, 8, 8))

# case id -> spec. Layer cases: (in modes, out modes, rank, batch) or conv
# (channels, spatial, batch, format, parameter fraction).
LAYER_CASES: dict[str, dict[str, Any]] = {
    "ttm_novikov_B100": dict(kind="linear", modes=NOVIKOV_MODES, rank=4, batch=100),
    "ttm_1024_r8_B1": dict(kind="linear", modes=SQUARE_1024_MODES, rank=8, batch=1),
    "ttm_1024_r8_B256": dict(kind="linear", modes=SQUARE_1024_MODES, rank=8, batch=256),
    **{
        f"conv3x3_64_32x32_B128_{fmt}10": dict(
            kind="conv", channels=64, size=32, batch=128, format=fmt, fraction=0.1
        )
        for fmt in ("cp", "tucker", "tt")
    },
}

# Decomposition cases: same ranks and (for the iterative ones) the same number of sweeps on
# both sides, with the stopping tolerance off, so that time compares equal work.
DECOMP_CASES: dict[str, dict[str, Any]] = {
    # A rank-8 TT-matrix (8^4 x 8^4) plus 1% noise: both errors should sit near 0.01.
    "decomp_tt_ttm4096_r8": dict(fmt="ttm", data="ttm4096", rank=8),
    # A He-initialised 64x64x3x3 kernel: full rank, so the errors are large but must agree.
    "decomp_tt_conv64x64x3x3_r8": dict(fmt="tt", data="conv", rank=8),
    "decomp_cp_conv64x64x3x3_r27": dict(fmt="cp", data="conv", rank=27, sweeps=50),
    "decomp_tucker_conv64x64x3x3_r16": dict(
        fmt="tucker", data="conv", rank=(16, 16, 3, 3), sweeps=10
    ),
    # 256^3 tensors with planted low-rank structure plus 1% noise.
    "decomp_cp_256cube_r10": dict(fmt="cp", data="cp256", rank=10, sweeps=25),
    "decomp_tucker_256cube_r16": dict(fmt="tucker", data="tucker256", rank=(16, 16, 16), sweeps=5),
}

CASES = (*LAYER_CASES, *DECOMP_CASES)
NUM_THREADS = 2


def _missing_peers() -> str | None:
    """Why the peer libraries cannot be used here, or None if they can."""
    try:
        import tensorly  # noqa: F401
        import tltorch  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}"
    return None


def environment() -> dict[str, Any]:
    """Versions and machine facts that go with the rows (for the JSON's meta)."""
    meta: dict[str, Any] = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": NUM_THREADS,
    }
    if _missing_peers() is None:
        import jax
        import tensorly
        import tltorch
        import torch

        meta.update(
            torch=torch.__version__,
            tensorly=tensorly.__version__,
            tltorch=tltorch.__version__,
            jax=jax.__version__,
            torch_opt_einsum=bool(torch.backends.opt_einsum.is_available()),
        )
    return meta


def median_ms(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median over `reps` interleaved rounds of the best time (ms) of a short burst per round.

    Each callable must block until its result is ready. The order rotates between rounds
    so that machine noise hits every entry alike.
    """
    burst = {}
    for k, f in fns.items():  # warm up, then size the bursts (~20 ms each, at most 20 calls)
        f()
        t0 = time.perf_counter()
        f()
        burst[k] = max(1, min(20, int(0.02 / max(time.perf_counter() - t0, 1e-7))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            best = float("inf")
            for _ in range(burst[k]):
                t0 = time.perf_counter()
                fns[k]()
                best = min(best, time.perf_counter() - t0)
            times[k].append(best)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


# ---------------------------------------------------------------------------------------
# TensorLy-Torch layers against torch dense layers


def _tltorch_layer(spec: dict[str, Any], implementation: str):
    """(factorized layer, dense layer, input) for a layer case; torch float32."""
    import tltorch
    import torch

    if spec["kind"] == "linear":
        in_modes, out_modes = spec["modes"]
        layer = tltorch.FactorizedLinear(
            in_tensorized_features=in_modes,
            out_tensorized_features=out_modes,
            factorization="blocktt",
            rank=spec["rank"],
            implementation=implementation,
        )
        n_in, n_out = int(np.prod(in_modes)), int(np.prod(out_modes))
        dense = torch.nn.Linear(n_in, n_out)
        x = torch.randn(spec["batch"], n_in)
    else:
        c, size = spec["channels"], spec["size"]
        # rank as a float is TensorLy's "this fraction of the dense parameters".
        layer = tltorch.FactorizedConv(
            c,
            c,
            3,
            order=2,
            padding=1,
            factorization=spec["format"],
            rank=spec["fraction"],
            implementation=implementation,
        )
        layer.reset_parameters(std=0.02)  # tltorch leaves the factors uninitialised
        dense = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        x = torch.randn(spec["batch"], c, size, size)
    return layer, dense, x


def _weight_params(layer) -> int:
    """Parameters of the factorized weight (the bias is left out on both sides)."""
    return sum(p.numel() for p in layer.weight.parameters())


def _torch_fns(layer, x) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) callables of a torch module on input `x`."""
    import torch

    params = [p for p in layer.parameters() if p.requires_grad]

    def forward():
        with torch.no_grad():
            return layer(x)

    def forward_backward():
        for p in params:
            p.grad = None
        layer(x).sum().backward()

    return forward, forward_backward


def _impl_rel_diff(layer, x) -> float:
    """Relative difference of tltorch's factorized and reconstructed forward of one layer."""
    import torch
    from tltorch.functional.convolution import _get_factorized_conv

    with torch.no_grad():
        y_fact = layer(x)
        if hasattr(layer, "forward_fun"):  # FactorizedConv picks its forward at __init__
            fact_fun = layer.forward_fun
            layer.forward_fun = _get_factorized_conv(layer.weight, "reconstructed")
            y_recon = layer(x)
            layer.forward_fun = fact_fun
        else:
            layer.implementation = "reconstructed"
            y_recon = layer(x)
            layer.implementation = "factorized"
    return float(torch.linalg.norm(y_fact - y_recon) / torch.linalg.norm(y_recon))


def _rank_list(rank: Any) -> Any:
    if isinstance(rank, (int, np.integer)):
        return int(rank)
    return [int(r) for r in rank]


def run_layer_case(name: str, reps: int) -> dict[str, Any]:
    """One `layer` row: tltorch (factorized and reconstructed forward) against dense."""
    import torch

    spec = LAYER_CASES[name]
    torch.manual_seed(0)
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fact, dense, x = _tltorch_layer(spec, "factorized")
        recon, _, _ = _tltorch_layer(spec, "reconstructed")
        fns = {}
        for key, mod in (("dense", dense), ("fact", fact), ("recon", recon)):
            fwd, fwdbwd = _torch_fns(mod, x)
            fns[f"{key}_fwd"], fns[f"{key}_fwdbwd"] = fwd, fwdbwd
        impl_diff = _impl_rel_diff(fact, x)
        t = median_ms(fns, reps)
        caught = sorted({str(m.message)[:160] for m in w})
    dense_params = dense.weight.numel()
    params = _weight_params(fact)
    fmt = "blocktt" if spec["kind"] == "linear" else spec["format"]
    row: dict[str, Any] = {
        "case": name,
        "kind": "layer",
        "library": "tltorch",
        "format": fmt,
        "rank": _rank_list(fact.rank),
        "batch": spec["batch"],
        "implementation_default": "factorized",
        "params": params,
        "dense_params": dense_params,
        "param_fraction": params / dense_params,
        "dense_fwd_ms": t["dense_fwd"],
        "dense_fwdbwd_ms": t["dense_fwdbwd"],
    }
    for impl, prefix in (("fact", ""), ("recon", "recon_")):
        row[f"{prefix}fwd_ms"] = t[f"{impl}_fwd"]
        row[f"{prefix}fwd_ratio"] = t[f"{impl}_fwd"] / t["dense_fwd"]
        row[f"{prefix}fwdbwd_ms"] = t[f"{impl}_fwdbwd"]
        row[f"{prefix}fwdbwd_ratio"] = t[f"{impl}_fwdbwd"] / t["dense_fwdbwd"]
    row["factorized_vs_reconstructed_rel_diff"] = impl_diff
    if caught:
        row["warnings"] = caught
    return row


# ---------------------------------------------------------------------------------------
# TensorLy decompositions against tnjax.formats


def _decomp_data(data: str) -> np.ndarray:
    """The float32 tensor a decomposition case works on (seeded)."""
    rng = np.random.default_rng(0)

    def with_noise(x: np.ndarray, level: float = 0.01) -> np.ndarray:
        noise = rng.standard_normal(x.shape)
        return x + level * np.linalg.norm(x) / np.linalg.norm(noise) * noise

    if data == "ttm4096":
        # (r, I_k, J_k, r) cores -> (I_1..I_4, J_1..J_4) -> (4096, 4096)
        ranks = (1, 8, 8, 8, 1)
        cores = [rng.standard_normal((ranks[k], 8, 8, ranks[k + 1])) for k in range(4)]
        w = np.einsum("aijb,bklc,cmnd,dope->ikmojlnp", *cores, optimize=True).reshape(4096, 4096)
        return with_noise(w).astype(np.float32)
    if data == "conv":
        fan_in = 64 * 3 * 3
        return (rng.standard_normal((64, 64, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if data == "cp256":
        factors = [rng.standard_normal((256, 10)) for _ in range(3)]
        return with_noise(np.einsum("ir,jr,kr->ijk", *factors, optimize=True)).astype(np.float32)
    if data == "tucker256":
        core = rng.standard_normal((16, 16, 16))
        factors = [np.linalg.qr(rng.standard_normal((256, 16)))[0] for _ in range(3)]
        x = np.einsum("abc,ia,jb,kc->ijk", core, *factors, optimize=True)
        return with_noise(x).astype(np.float32)
    raise ValueError(f"bench_peers: unknown decomposition data {data!r}.")


def _rel_err(x: np.ndarray, x_hat: Any) -> float:
    x64 = np.asarray(x, np.float64)
    return float(np.linalg.norm(x64 - np.asarray(x_hat, np.float64)) / np.linalg.norm(x64))


def _decomp_fns(spec: dict[str, Any], x: np.ndarray):
    """(tensorly decompose, tensorly reconstruct, tnjax decompose, tnjax reconstruct, params)."""
    import jax
    import tensorly as tl
    from tensorly import decomposition as tld

    from tnjax.formats import cp, tt, ttm, tucker

    fmt, rank, sweeps = spec["fmt"], spec["rank"], spec.get("sweeps")
    if fmt == "ttm":
        modes = (8, 8, 8, 8)
        x_t = x.reshape(modes + modes)  # TensorLy's tensor_train_matrix takes (I.., J..)
        return (
            lambda: tld.tensor_train_matrix(x_t, rank),
            lambda f: tl.tt_matrix_to_tensor(f).reshape(x.shape),
            jax.jit(lambda a: ttm.from_dense(a, modes, modes, rank)),
            ttm.to_dense,
            lambda f: sum(int(np.prod(c.shape)) for c in f.cores),
        )
    if fmt == "tt":
        return (
            lambda: tld.tensor_train(x, rank),
            tl.tt_to_tensor,
            jax.jit(lambda a: tt.from_dense(a, rank)),
            tt.to_dense,
            lambda f: sum(int(np.prod(c.shape)) for c in f.cores),
        )
    if fmt == "cp":
        return (
            lambda: tld.parafac(x, rank, n_iter_max=sweeps, init="svd", tol=0, random_state=0),
            tl.cp_to_tensor,
            jax.jit(lambda a: cp.from_dense(a, rank, init="svd", n_iter_max=sweeps, tol=0.0)),
            cp.to_dense,
            lambda f: rank * (1 + sum(x.shape)),
        )
    if fmt == "tucker":
        return (
            lambda: tld.tucker(x, rank, n_iter_max=sweeps, init="svd", tol=0, random_state=0),
            tl.tucker_to_tensor,
            jax.jit(lambda a: tucker.from_dense(a, rank, n_iter_max=sweeps, tol=0.0)),
            tucker.to_dense,
            lambda f: int(np.prod(f.core.shape)) + sum(int(np.prod(u.shape)) for u in f.factors),
        )
    raise ValueError(f"bench_peers: unknown decomposition format {fmt!r}.")


def run_decomp_case(name: str, reps: int) -> dict[str, Any]:
    """One `decomp` row: TensorLy (numpy backend) against tnjax (jitted) at equal ranks."""
    import jax
    import jax.numpy as jnp
    import tensorly as tl

    spec = DECOMP_CASES[name]
    x = _decomp_data(spec["data"])
    x_j = jnp.asarray(x)
    # tltorch switches TensorLy to its pytorch backend on import; TensorLy's default is numpy.
    with tl.backend_context("numpy"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl_fn, tl_dense, jx_fn, jx_dense, jx_params = _decomp_fns(spec, x)
        t0 = time.perf_counter()
        jx_out = jax.block_until_ready(jx_fn(x_j))
        compile_s = time.perf_counter() - t0
        tl_out = tl_fn()
        fns = {
            "tensorly": tl_fn,
            "tnjax": lambda: jax.block_until_ready(jx_fn(x_j)),
        }
        t = median_ms(fns, max(1, min(reps, 3)))  # decompositions are slow: few rounds
        tl_err = _rel_err(x, tl_dense(tl_out))
    jx_err = _rel_err(x, jx_dense(jx_out))
    params = jx_params(jx_out)
    row = {
        "case": name,
        "kind": "decomp",
        "library": "tensorly",
        "format": spec["fmt"],
        "shape": list(x.shape),
        "rank": _rank_list([spec["rank"]] if isinstance(spec["rank"], int) else spec["rank"]),
        "sweeps": spec.get("sweeps"),
        "dtype": str(x.dtype),
        "params": params,
        "dense_params": int(x.size),
        "param_fraction": params / x.size,
        "tensorly_ms": t["tensorly"],
        "tnjax_ms": t["tnjax"],
        "tnjax_over_tensorly": t["tnjax"] / t["tensorly"],
        "tensorly_rel_err": tl_err,
        "tnjax_rel_err": jx_err,
        "tnjax_first_call_s": compile_s,
    }
    if caught:
        row["warnings"] = sorted({str(m.message)[:160] for m in caught})
    return row


# ---------------------------------------------------------------------------------------


def run(reps: int = 7, cases: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the peer cases and returns one row (dict) per case id.

    Args:
      reps: interleaved timing rounds per case (decompositions use at most 3).
      cases: case ids to run (see `CASES`), or None for all.

    Returns:
      Rows with ``case``, ``kind`` ("layer" or "decomp"), ``library`` and the timings;
      [] (after printing why) if torch, tensorly or tltorch cannot be imported.

    Raises:
      ValueError: on an unknown case id.
    """
    cases = list(CASES) if cases is None else list(cases)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"bench_peers: unknown case ids {unknown}; valid ids: {list(CASES)}.")
    why = _missing_peers()
    if why is not None:
        print(f"bench_peers: skipped, the peer libraries are not importable ({why}).")
        return []
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS)
    rows = []
    try:
        for name in cases:
            t0 = time.perf_counter()
            case_fn = run_layer_case if name in LAYER_CASES else run_decomp_case
            rows.append(case_fn(name, reps))
            print(f"bench_peers: {name} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    finally:
        torch.set_num_threads(old_threads)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as markdown: one table for layers, one for decompositions."""
    lines = []
    layers = [r for r in rows if r["kind"] == "layer"]
    if layers:
        lines += [
            "TensorLy-Torch factorized layers vs torch dense (same process; ratio = time / "
            "dense time; fwd under no_grad, fwd+bwd = y.sum().backward()).",
            "",
            "| case | format | rank | params (fraction) | implementation | fwd ms | dense fwd ms "
            "| fwd ratio | fwd+bwd ms | dense fwd+bwd ms | fwd+bwd ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in layers:
            for impl, p in (("factorized (default)", ""), ("reconstructed", "recon_")):
                lines.append(
                    f"| {r['case']} | {r['format']} | {r['rank']} "
                    f"| {r['params']:,} ({r['param_fraction']:.3g}) | {impl} "
                    f"| {r[p + 'fwd_ms']:.3f} | {r['dense_fwd_ms']:.3f} "
                    f"| {r[p + 'fwd_ratio']:.3f}x | {r[p + 'fwdbwd_ms']:.3f} "
                    f"| {r['dense_fwdbwd_ms']:.3f} | {r[p + 'fwdbwd_ratio']:.3f}x |"
                )
        lines.append("")
    decomps = [r for r in rows if r["kind"] == "decomp"]
    if decomps:
        lines += [
            "TensorLy decompositions (numpy backend) vs tnjax.formats (jitted, after warm-up), "
            "same ranks and sweeps (tolerance off).",
            "",
            "| case | shape | rank | sweeps | params (fraction) | TensorLy ms | tnjax ms "
            "| tnjax / TensorLy | TensorLy rel err | tnjax rel err | tnjax first call s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in decomps:
            lines.append(
                f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['rank']} "
                f"| {r['sweeps'] or '-'} | {r['params']:,} ({r['param_fraction']:.3g}) "
                f"| {r['tensorly_ms']:.1f} | {r['tnjax_ms']:.1f} | {r['tnjax_over_tensorly']:.3f}x "
                f"| {r['tensorly_rel_err']:.4f} | {r['tnjax_rel_err']:.4f} "
                f"| {r['tnjax_first_call_s']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default=None, help="JSON path (a .md is written next to it)")
    parser.add_argument("--cases", nargs="*", default=None, choices=CASES)
    args = parser.parse_args()
    rows = run(reps=args.reps, cases=args.cases)
    if not rows:
        return
    meta = environment() | {"reps": args.reps}
    print(
        f"Machine: {meta['machine']}, {meta['cpu_count']} CPUs; torch {meta['torch']} "
        f"({meta['torch_threads']} threads), tltorch {meta['tltorch']}, tensorly "
        f"{meta['tensorly']}, jax {meta['jax']}; {args.reps} interleaved rounds, median of "
        "best-of-burst.\n"
    )
    md = markdown_table(rows)
    print(md)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(md)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
