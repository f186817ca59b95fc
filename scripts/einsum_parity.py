"""einsum parity: every expression of opt_einsum's own test files through `tnjax.ops.contract`
and `jnp.einsum`; prints how many each gets right (numpy's `einsum` is the reference).

    python scripts/einsum_parity.py [--show_failures]

The expressions are the string constants of opt_einsum/tests/*.py (installed with
opt_einsum) that parse as einsum specs; operands are random, with sizes from
`opt_einsum.testing.build_shapes` (an ellipsis stands for two dimensions of sizes 2 and 3).
An expression counts as passed when the function returns numpy's result (allclose), or
when numpy rejects it and the function raises too.
"""

from __future__ import annotations

import argparse
import ast
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from opt_einsum import testing

from tnjax.ops import contract

_SPEC = re.compile(r"^[A-Za-z.,>\-]*$")


def expressions() -> list[str]:
    """Distinct einsum-looking string constants of opt_einsum's test files, in file order."""
    found: dict[str, None] = {}
    folder = os.path.join(os.path.dirname(opt_einsum.__file__), "tests")
    for path in sorted(glob.glob(os.path.join(folder, "test_*.py"))):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.replace(" ", "")
                if text and _SPEC.match(text) and ("," in text or "->" in text):
                    if text.count("->") <= 1 and "-" not in text.replace("->", ""):
                        found.setdefault(text, None)
    return list(found)


def operands(expr: str, rng: np.random.Generator) -> list[np.ndarray]:
    lhs = expr.split("->")[0]
    plain = lhs.replace("...", "")
    sizes = dict(zip(sorted(set(plain) - {","}), (2, 3, 4, 5, 3, 2, 4) * 8, strict=False))
    shapes = testing.build_shapes(plain, sizes) if plain.replace(",", "") else ()
    shapes = list(shapes) or [() for _ in lhs.split(",")]
    out = []
    for term, shape in zip(lhs.split(","), shapes, strict=False):
        if "..." in term:
            head = term.index("...")
            shape = tuple(shape[:head]) + (2, 3) + tuple(shape[head:])
        out.append(rng.standard_normal(shape))
    return out


def _run(fn, expr, ops):
    try:
        return np.asarray(fn(expr, *ops)), None
    except Exception as e:  # noqa: BLE001 (any failure counts)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show_failures", action="store_true")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    exprs = expressions()
    passed = {"contract": 0, "jnp.einsum": 0}
    failures: dict[str, list[str]] = {"contract": [], "jnp.einsum": []}
    for expr in exprs:
        try:
            ops = operands(expr, rng)
        except Exception:  # noqa: BLE001 (sizes opt_einsum cannot build: skip)
            continue
        want, want_err = _run(np.einsum, expr, ops)
        for name, fn in (("contract", contract), ("jnp.einsum", jnp.einsum)):
            got, err = _run(fn, expr, ops)
            if want is None:
                ok = err is not None
            else:
                ok = got is not None and got.shape == want.shape and np.allclose(got, want)
            passed[name] += ok
            if not ok:
                failures[name].append(f"{expr!r}: {err or 'wrong result'} (numpy: {want_err})")
    total = sum(1 for _ in exprs)
    print(f"{total} expressions from opt_einsum {opt_einsum.__version__}'s tests")
    for name in passed:
        print(f"  {name:11s} {passed[name]} passed, {len(failures[name])} failed")
    if args.show_failures:
        for name, items in failures.items():
            for item in items:
                print(f"{name}: {item}")


if __name__ == "__main__":
    main()
