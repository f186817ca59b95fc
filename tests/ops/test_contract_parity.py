"""`contract` takes what `jnp.einsum` takes and returns what it returns (numpy as the
reference): ellipses with and without an output, size-1 broadcasting, modes from any
alphabet, scalars; conv options that are not what the docs allow are named errors; the
docstring's examples run."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tnjax.ops.contraction as contraction
from tnjax.ops import contract, contract_path


def _normal(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


CASES = [
    ("...,...", [(5, 4), (5, 4)]),  # implicit output keeps the ellipsis dims
    ("...a,...b", [(5, 4, 2), (5, 4, 3)]),
    ("a...,a...", [(3, 2, 4), (3, 2, 4)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),  # ellipsis broadcasting (2 vs none)
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),  # size-1 broadcast inside "..."
    ("ij,ij->j", [(10, 2), (1, 2)]),  # size-1 broadcasting of a named mode
    ("ij,ij->ij", [(1, 3), (4, 1)]),
    ("ab...,b->...a", [(2, 3, 4, 5), (3,)]),
    ("i...,i...", [(3, 1, 4), (3, 5, 1)]),
    ("ii", [(4, 4)]),  # trace, implicit scalar output
    ("ii->i", [(4, 4)]),
    ("ba", [(2, 3)]),  # implicit output sorts: a transpose
    ("->", [()]),  # one scalar
    (",->", [(), ()]),
    ("i,->i", [(3,), ()]),
    ("αβ,βγ->αγ", [(3, 4), (4, 2)]),  # modes beyond ASCII
    ("ΑΩ,Ωж", [(3, 4), (4, 2)]),
]


@pytest.mark.parametrize("spec,shapes", CASES)
def test_contract_returns_what_einsum_returns(spec, shapes):
    ops = _normal(len(spec), *shapes)
    modes = sorted({c for c in spec if c.isalpha() and not c.isascii()})
    ascii_spec = spec.translate({ord(c): "pqrstu"[i] for i, c in enumerate(modes)})
    want = np.einsum(ascii_spec, *ops)  # numpy's parser takes ASCII letters only
    got = contract(spec, *ops)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jnp.einsum(spec, *ops), want, rtol=1e-5, atol=1e-5)


def test_more_than_52_modes():
    """Unicode letters give more modes than ASCII has: a 60-operand chain."""
    letters = [chr(0x3B1 + i) if i < 25 else chr(0x430 + i - 25) for i in range(61)]
    spec = ",".join(letters[i] + letters[i + 1] for i in range(60)) + f"->{letters[0]}{letters[60]}"
    ops = _normal(0, *[(2, 2)] * 60)
    want = np.linalg.multi_dot(ops)
    got = contract(spec, *ops, optimize="naive")
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_broadcasting_under_jit_vmap_and_grad():
    p, q = _normal(1, (10, 2), (1, 2))

    def f(p, q):
        return contract("ij,ij->j", p, q).sum()

    np.testing.assert_allclose(jax.jit(f)(p, q), np.einsum("ij,ij->j", p, q).sum(), rtol=1e-5)
    g = jax.grad(f, argnums=1)(p, q)
    np.testing.assert_allclose(g, p.sum(0, keepdims=True), rtol=1e-5)
    batched = jax.vmap(lambda a: contract("...a,...b", a, q[0]))(p)
    np.testing.assert_allclose(batched, np.einsum("za,b->zab", p, q[0]), rtol=1e-5)
    plan = contract_path("ij,ij->j", (10, 2), (1, 2))
    assert plan.path


@pytest.mark.parametrize(
    "spec,shapes,needle",
    [
        ("", [], "at least one operand"),
        ("->", [], "at least one operand"),
        ("ij,jk->ik", [(3, 4)], "2 operands but 1"),
        ("i$,jk", [(3, 4), (4, 2)], "modes must be letters"),
        ("ij->i->j", [(3, 4)], "more than one '->'"),
        ("...ij", [(3,)], "only 1 dimensions"),
        ("ij,jk->ik", [(3, 4), (5, 2)], "size 4"),
        ("ij,ij->ij", [(2, 3), (3, 3)], "size 2"),  # 2 vs 3: no broadcasting
        ("bh...,hc->bc|h", [(2, 5, 1), (3, 4)], "'...' cannot be combined"),
    ],
)
def test_what_einsum_rejects_is_a_named_error(spec, shapes, needle):
    ops = _normal(0, *shapes)
    with pytest.raises(ValueError, match=None) as err:
        contract(spec, *ops)
    assert needle in str(err.value), str(err.value)


def _conv1d_reference(x, w, stride=1, padding=((0, 0),), dilation=1):
    return jax.lax.conv_general_dilated(
        x, w, (stride,), padding, rhs_dilation=(dilation,), dimension_numbers=("NWC", "WIO", "NWC")
    )


def test_a_low_high_pair_pads_the_one_convolved_mode():
    x, w = _normal(2, (2, 9, 3), (3, 3, 4))
    got = contract("bws,wst->bwt|w", x, w, padding=(1, 2))
    np.testing.assert_allclose(got, _conv1d_reference(x, w, padding=((1, 2),)), rtol=1e-5)
    got = contract("bws,wst->bwt|w", x, w, padding=[(0, 3)], strides=2)
    want = _conv1d_reference(x, w, stride=2, padding=((0, 3),))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_two_convolved_modes_take_per_mode_ints_or_pairs():
    x, w = _normal(3, (1, 7, 8, 2), (3, 3, 2, 2))
    dn = ("NHWC", "HWIO", "NHWC")
    per_mode = contract("bhws,hwst->bhwt|hw", x, w, padding=(1, 2))
    want = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (2, 2)), dimension_numbers=dn)
    np.testing.assert_allclose(per_mode, want, rtol=1e-5)
    pairs = contract("bhws,hwst->bhwt|hw", x, w, padding=((0, 1), (2, 0)))
    want = jax.lax.conv_general_dilated(x, w, (1, 1), ((0, 1), (2, 0)), dimension_numbers=dn)
    np.testing.assert_allclose(pairs, want, rtol=1e-5)


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"strides": 2.5}, "needs an int >= 1, got 2.5"),
        ({"strides": "22"}, "needs an int >= 1, got '22'"),
        ({"strides": 0}, "needs an int >= 1, got 0"),
        ({"strides": True}, "needs an int >= 1, got True"),
        ({"dilation": 1.0}, "needs an int >= 1, got 1.0"),
        ({"padding": True}, "got True"),
        ({"padding": "FULL"}, "got 'FULL'"),
        ({"padding": (1, 2, 3)}, "3 entries but 1 modes"),
        ({"padding": (1.5, 2)}, "got (1.5, 2)"),
        ({"strides": {"q": 2}}, "not convolved"),
    ],
)
def test_bad_conv_options_are_named(options, needle):
    x, w = _normal(4, (1, 9, 3), (3, 3, 4))
    with pytest.raises(ValueError, match=None) as err:
        contract("bws,wst->bwt|w", x, w, **options)
    assert needle in str(err.value), str(err.value)


def test_the_docstring_examples_run():
    result = doctest.testmod(contraction, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0, result
