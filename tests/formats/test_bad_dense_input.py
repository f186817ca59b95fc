"""Decompositions check their input before any SVD: NaN/Inf (which made the CPU SVD hang),
complex values and empty dimensions are named errors; CP-ALS keeps its best sweep and is
never further from the tensor than the zero tensor."""

import multiprocessing
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tnjax
from tnjax import nn as tnn
from tnjax.ops import linalg

FORMATS = {
    "cp": lambda x: tnjax.CP.from_dense(x, rank=2),
    "tucker": lambda x: tnjax.Tucker.from_dense(x, rank=2),
    "tt": lambda x: tnjax.TT.from_dense(x, rank=2),
    "tr": lambda x: tnjax.TR.from_dense(x, rank=2),
    "ttm": lambda x: tnjax.TTMatrix.from_dense(x.reshape(42, 8), (6, 7), (2, 4), rank=2),
}


def _tensor(seed=0):
    return np.random.default_rng(seed).standard_normal((6, 7, 8)).astype(np.float32)


def _decompose_with_inf(queue):
    x = _tensor()
    x[2, 3, 4] = np.inf
    for name in sorted(FORMATS):
        try:
            FORMATS[name](x)
            queue.put((name, "returned"))
        except ValueError as e:
            queue.put((name, str(e)))


def test_an_inf_fails_fast_with_its_position():
    """In a child process with a timeout: before the check, one Inf hung the CPU SVD."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=_decompose_with_inf, args=(queue,))
    start = time.time()
    proc.start()
    proc.join(timeout=180)
    if proc.is_alive():
        proc.kill()
        pytest.fail(f"from_dense still running after {time.time() - start:.0f} s")
    messages = dict(queue.get(timeout=5) for _ in FORMATS)
    for name, message in messages.items():
        where = "(17, 4)" if name == "ttm" else "(2, 3, 4)"  # ttm sees the (42, 8) matrix
        assert "1 non-finite value(s)" in message and where in message, (name, message)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_nan_complex_and_empty_inputs_are_named(name):
    x = _tensor()
    x[0, 1, 2] = x[5, 6, 7] = np.nan
    where = r"\(1, 2\)" if name == "ttm" else r"\(0, 1, 2\)"
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*" + where):
        FORMATS[name](x)
    with pytest.raises(ValueError, match="complex input"):
        FORMATS[name](_tensor().astype(np.complex64))
    if name != "ttm":
        with pytest.raises(ValueError, match="dimension 1 .* is empty"):
            FORMATS[name](np.zeros((6, 0, 8), np.float32))


def test_truncated_svd_names_an_empty_matrix():
    with pytest.raises(ValueError, match=r"shape \(0, 3\) is empty"):
        linalg.truncated_svd(jnp.zeros((0, 3)), 2)


def test_a_traced_tensor_still_decomposes_under_jit():
    x = _tensor()
    got = jax.jit(lambda a: tnjax.TT.from_dense(a, rank=8).to_dense())(x)
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


def _cp_error(x, rank, **kw):
    approx = tnjax.CP.from_dense(x, rank=rank, **kw).to_dense()
    return float(jnp.linalg.norm(approx - x) / jnp.linalg.norm(x))


@pytest.mark.parametrize("init", ["svd", "random"])
def test_cp_als_is_never_worse_than_the_zero_tensor_and_falls_with_rank(init):
    x = _tensor(1)
    errors = [_cp_error(x, r, init=init, key=jax.random.key(3)) for r in (1, 2, 4, 8, 16)]
    assert all(e <= 1.0 for e in errors), errors
    assert all(b <= a + 1e-3 for a, b in zip(errors, errors[1:], strict=False)), errors


def test_cp_embedding_error_falls_with_rank():
    """The case that had relative error 1.02 at rank 8 and 1.01 at rank 1."""
    table = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    src = nnx.Embed(1000, 16, rngs=nnx.Rngs(0))
    src.embedding[...] = table
    errors = []
    for rank in (1, 4, 8):
        layer = tnn.Embed.from_embed(src, format="cp", rank=rank)
        got = layer(jnp.arange(1000))
        errors.append(float(jnp.linalg.norm(got - table) / np.linalg.norm(table)))
    assert errors[0] <= 1.0 and errors[2] <= errors[1] <= errors[0], errors
