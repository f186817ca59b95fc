"""The package's import order: ops -> formats -> functional -> nn -> {models, compress, bayes}.

Read from the source (every `import` and `from ... import` in tnjax/), so a new import that
breaks the layering fails here, whatever the test order or what is already imported.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "tnjax"
# package -> imports it must not make (module prefixes)
FORBIDDEN = {
    "ops": ("flax", "numpyro", "tnjax.formats", "tnjax.functional", "tnjax.nn", "tnjax.models"),
    "formats": ("flax", "numpyro", "tnjax.functional", "tnjax.nn", "tnjax.models"),
    "functional": ("flax", "numpyro", "tnjax.nn", "tnjax.models", "tnjax.bayes"),
    "nn": ("numpyro", "tnjax.models", "tnjax.bayes", "tnjax.compress"),
    "bayes": ("tnjax.models", "tnjax.compress"),
    "compress": ("tnjax.models", "tnjax.bayes"),
    "models": ("tnjax.bayes", "tnjax.compress"),
}
EVERYWHERE = ("experiments", "configs", "absl", "ml_collections")


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _package(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else ""


FILES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_imports_follow_the_layering(path):
    forbidden = FORBIDDEN.get(_package(path), ()) + EVERYWHERE
    bad = sorted(
        name
        for name in _imports(path)
        for prefix in forbidden
        if name == prefix or name.startswith(prefix + ".")
    )
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
