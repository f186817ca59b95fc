"""Census of the compiled XLA programs of the tensorized layers (forward + backward).

For each conv format (64 -> 64, 3x3, 10%, batch 8 at 16x16) and four linear formats
(1024 -> 1024, 5%, batch 64): the number of transposes, convolutions, dots, fusions and all
ops in the optimised HLO of value_and_grad(sum(layer(x))). Two code versions that print the
same census compile to programs of the same structure; docs/benchmarks.md uses it to show
that a refactor did not change what runs.

    python scripts/hlo_census.py                           # the installed tnjax
    PYTHONPATH=../other-checkout python scripts/hlo_census.py   # another version of it
"""

import re
from collections import Counter

import jax
import jax.numpy as jnp
from flax import nnx

from tnjax import nn as tnn

OPS = ("transpose", "convolution", "dot", "fusion")


def census(layer: nnx.Module, x: jax.Array) -> tuple[int, ...]:
    """(transposes, convolutions, dots, fusions, all ops) of the compiled fwd+bwd."""
    graph, state = nnx.split(layer)

    def loss(state, x):
        return jnp.sum(nnx.merge(graph, state)(x))

    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(state, x).compile().as_text()
    ops = Counter(re.findall(r"= \S+ (\w+)\(", text))
    return tuple(ops.get(op, 0) for op in OPS) + (sum(ops.values()),)


def main() -> None:
    rngs = nnx.Rngs(0)
    print("layer: (" + ", ".join(OPS) + ", all ops)")
    x = jnp.ones((8, 16, 16, 64))
    for fmt in tnn.CONV_FORMATS:
        layer = tnn.Conv(64, 64, 3, format=fmt, compression=0.1, rngs=rngs)
        print(f"conv {fmt}: {census(layer, x)}")
    x = jnp.ones((64, 1024))
    for fmt in ("ttm", "tt", "tucker", "rcp"):
        layer = tnn.Linear(1024, 1024, format=fmt, compression=0.05, rngs=rngs)
        print(f"linear {fmt}: {census(layer, x)}")


if __name__ == "__main__":
    main()
