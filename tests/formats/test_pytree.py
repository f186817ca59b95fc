"""Pytree behaviour shared by all formats: leaves, key paths, jit, immutability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tnjax
from tnjax.formats import CP, TR, TT, TTMatrix, Tucker, cp, modes, tr, tt, ttm, tucker

KEY = jax.random.key(0)
EXAMPLES = {
    "cp": lambda: CP.random(KEY, (3, 4, 5), 2),
    "tucker": lambda: Tucker.random(KEY, (3, 4, 5), (2, 3, 2)),
    "tt": lambda: TT.random(KEY, (3, 4, 5), 2),
    "ttm": lambda: TTMatrix.random(KEY, (2, 3), (3, 2), 2),
    "tr": lambda: TR.random(KEY, (3, 4, 5), 2),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_leaves_are_arrays_only(name):
    x = EXAMPLES[name]()
    leaves, treedef = jax.tree_util.tree_flatten(x)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert x.num_params == sum(leaf.size for leaf in leaves)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is type(x)
    np.testing.assert_allclose(back.to_dense(), x.to_dense())
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(x)[0]]
    assert all(p.startswith(".") for p in paths)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_jit_roundtrip_tree_map_and_eval_shape(name):
    x = EXAMPLES[name]()
    y = jax.jit(lambda t: jax.tree_util.tree_map(lambda a: 2 * a, t))(x)
    assert type(y) is type(x) and y.shape == x.shape and y.ranks == x.ranks
    shapes = jax.eval_shape(lambda t: t, x)
    assert type(shapes) is type(x)
    assert x.dtype == jnp.float32
    assert type(x).__name__ in repr(x)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_immutable(name):
    x = EXAMPLES[name]()
    field = type(x)._fields[0]
    with pytest.raises(AttributeError, match="immutable"):
        setattr(x, field, None)


def test_grad_through_format():
    x = TT.random(KEY, (3, 4, 5), 2)
    g = jax.grad(lambda t: jnp.sum(t.to_dense() ** 2))(x)
    assert isinstance(g, TT) and g.ranks == x.ranks


def test_exports():
    assert tnjax.formats.CP is CP and cp.CP is CP
    assert tucker.Tucker is Tucker and tt.TT is TT and ttm.TTMatrix is TTMatrix and tr.TR is TR
    assert callable(modes.factorize)
    for mod in (cp, tucker, tt, ttm, tr):
        for fn in ("to_dense", "num_params", "random", "from_dense"):
            assert callable(getattr(mod, fn)), (mod, fn)
