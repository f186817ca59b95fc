"""Memory per device of the Bayes paper's Criteo DLRM tables, dense and tensorized.

  python scripts/dlrm_memory.py [--batch 4096] [--meshes 1x1,8x1,1x8,8x8] [--json PATH]

For the five large Criteo tables of `scripts/criteo_tables.py` (4.25e9 dense parameters) at
fixed max ranks (FR) and at the ranks the priors learned (HC / LU), per device of a
(data x model) mesh:

* state: parameters + gradients + Adam's two moments = 16 bytes per float32 parameter,
  split over the `model` axis (`config.mesh.model`, the tables matched by
  `config.mesh.shard_params`; 1 = replicated, data parallel);
* working memory of one training step's lookups: XLA's compiled memory analysis (temp
  buffers) of the forward+backward of all five tables for one device's share of the batch
  (`--batch` ids per table, split over the `data` axis), compiled from abstract shapes on
  one device, so nothing of the dense tables is allocated. It leaves out the buffers of
  the collectives a model-sharded lookup adds.

Everything printed is computed here: layouts from `tnjax.nn.Embed` (built with
`nnx.eval_shape`), working memory from XLA. The other 21 tables and the MLPs (73.5 M
parameters, 1.18 GB of state) are left out: they are the same for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import criteo_tables  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from tnjax import nn as tnn  # noqa: E402

STATE_BYTES_PER_PARAM = 16  # float32 parameter, gradient, Adam mu and nu
# (name, format, ranks per table or None for dense)
ROWS = (
    ("dense", "dense", None),
    ("TTM FR", "ttm", (16,) * 5),
    ("TTM HC", "ttm", ((16, 2), (16, 2), (16, 1), (16, 1), (16, 2))),
    ("TT FR", "tt", (24,) * 5),
    ("TT LU", "tt", ((23, 5, 7), (20, 3, 5), (15, 6, 4), (22, 6, 5), (23, 6, 7))),
)


def _table(fmt: str, rows: int, vocab_modes: Sequence[int], rank: Any) -> nnx.Module:
    """One table as an abstract module (no memory allocated)."""
    if fmt == "dense":
        return nnx.eval_shape(lambda: nnx.Embed(rows, criteo_tables.EMBED_DIM, rngs=nnx.Rngs(0)))
    return nnx.eval_shape(
        lambda: tnn.Embed(
            rows,
            criteo_tables.EMBED_DIM,
            format=fmt,
            rank=rank,
            vocab_modes=vocab_modes,
            feature_modes=criteo_tables.TTM_FEATURE_MODES if fmt == "ttm" else None,
            rngs=nnx.Rngs(0),
        )
    )


def _tables(fmt: str, ranks: Sequence[Any] | None) -> list[nnx.Module]:
    """The five tables in `fmt` at `ranks` (one per table; None for dense)."""
    return [
        _table(fmt, rows, vocab_modes, None if ranks is None else ranks[t])
        for t, (_, rows, vocab_modes) in enumerate(criteo_tables.TABLES)
    ]


def lookup_working_bytes(tables: Sequence[nnx.Module], batch: int) -> int:
    """XLA's temp bytes of one forward+backward of `batch` ids through every table."""
    graphs, states = zip(*(nnx.split(t) for t in tables), strict=True)

    def loss(states, ids):
        total = 0.0
        for g, s, i in zip(graphs, states, ids, strict=True):
            total = total + jnp.sum(nnx.merge(g, s)(i))
        return total

    ids = [jax.ShapeDtypeStruct((batch,), jnp.int32) for _ in tables]
    compiled = jax.jit(jax.grad(loss)).lower(list(states), ids).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def parse_meshes(text: str) -> list[tuple[int, int]]:
    """ "8x1,1x8" -> [(8, 1), (1, 8)]: (data, model) sizes."""
    meshes = []
    for item in text.split(","):
        data, _, model = item.strip().partition("x")
        try:
            meshes.append((int(data), int(model)))
        except ValueError:
            raise ValueError(f"mesh {item!r}: expected DATAxMODEL, e.g. 8x1") from None
        if meshes[-1][0] < 1 or meshes[-1][1] < 1:
            raise ValueError(f"mesh {item!r}: sizes must be >= 1")
    return meshes


def compute(
    batch: int, meshes: Sequence[tuple[int, int]], only: Sequence[str] | None = None
) -> dict[str, Any]:
    """Params, state bytes and bytes per device on each (data, model) mesh of the ROWS
    (named in `only`, default all): the state split `model` ways (the tables matched by
    `config.mesh.shard_params`) plus the lookups' working memory for batch / data ids."""
    unknown = set(only or ()) - {name for name, _, _ in ROWS}
    if unknown:
        raise ValueError(f"unknown row(s) {sorted(unknown)}; rows: {[r[0] for r in ROWS]}")
    rows = []
    work_cache: dict[tuple[str, int], int] = {}
    for name, fmt, ranks in ROWS:
        if only and name not in only:
            continue
        tables = _tables(fmt, ranks)
        params = sum(int(x.size) for t in tables for x in jax.tree.leaves(nnx.state(t, nnx.Param)))
        state = params * STATE_BYTES_PER_PARAM
        per_mesh = []
        for data, model in meshes:
            if batch % data:
                raise ValueError(f"--batch {batch} is not divisible by data={data}")
            ids = batch // data
            if (name, ids) not in work_cache:
                work_cache[name, ids] = lookup_working_bytes(tables, ids)
            work = work_cache[name, ids]
            per_mesh.append(
                {
                    "mesh": f"{data}x{model}",
                    "devices": data * model,
                    "ids_per_device": ids,
                    "state_bytes_per_device": -(-state // model),
                    "working_bytes": work,
                    "total_bytes": -(-state // model) + work,
                }
            )
        rows.append(
            {
                "name": name,
                "format": fmt,
                "params": params,
                "state_bytes": state,
                "per_mesh": per_mesh,
            }
        )
    return {"batch": batch, "meshes": [f"{d}x{m}" for d, m in meshes], "rows": rows}


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def markdown(result: dict[str, Any]) -> str:
    head = "| tables | params | state (params+grads+Adam) |"
    sep = "|---|---|---|"
    for mesh in result["meshes"]:
        head += f" {mesh} |"
        sep += "---|"
    lines = [
        f"Five Criteo tables (E = 128), {result['batch']} ids per table per step; bytes per "
        "device on a data x model mesh: state / model + XLA's working memory of the lookups "
        "of batch / data ids (state + work = total).",
        "",
        head,
        sep,
    ]
    for r in result["rows"]:
        line = f"| {r['name']} | {r['params']:,} | {_gb(r['state_bytes'])} |"
        for p in r["per_mesh"]:
            line += (
                f" {_gb(p['state_bytes_per_device'])} + {_gb(p['working_bytes'])} = "
                f"**{_gb(p['total_bytes'])}** |"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096, help="ids per table per step")
    parser.add_argument(
        "--meshes", default="1x1,8x1,1x8,8x8", help="DATAxMODEL sizes, comma-separated"
    )
    parser.add_argument("--only", default="", help="comma-separated row names, e.g. 'TTM FR'")
    parser.add_argument("--json", default="", help="also write the result to this path")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    try:
        result = compute(args.batch, parse_meshes(args.meshes), only)
    except ValueError as e:
        parser.error(str(e))
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
