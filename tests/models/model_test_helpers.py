"""Helpers shared by the model tests (imported as a sibling module)."""

import jax
import jax.numpy as jnp
from flax import nnx


def step_and_grads(model, *inputs):
    """Outputs and parameter gradients of a squared error to 1, in one jitted call.

    The target is 1, not 0: a model whose output is exactly 0 (e.g. batch norm of constant
    activations) still has a non-zero loss gradient, so a vanishing gradient means a broken
    backward pass, not an unlucky input.
    """

    @nnx.jit
    def step(model, *inputs):
        def loss_fn(m):
            y = m(*inputs)
            return jnp.mean((y - 1.0) ** 2), y

        (_, y), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        return y, grads

    return step(model, *inputs)


def assert_finite_nonzero(grads):
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def random_inputs(shape, seed=0):
    """Standard normal inputs: constant inputs can make batch-normalised activations 0."""
    return jax.random.normal(jax.random.key(seed), shape)


def rbg_rngs():
    # RBG keys: XLA compiles their sampling far faster than threefry's, on CPU.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))
