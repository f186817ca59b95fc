"""A small model mixing tensorized Conv, Embed and Linear trains under nnx.jit with optax."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tnjax.nn import Conv, Core, Embed, Linear


class Mixed(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = Conv(3, 8, (3, 3), format="rcp", rank=4, rngs=rngs)
        self.embed = Embed(50, 12, format="ttm", rank=4, rngs=rngs)
        self.fc1 = Linear(8 * 6 * 6 + 12, 48, format="ttm", rank=4, rngs=rngs)
        self.fc2 = Linear(48, 3, format="cp", rank=6, rngs=rngs)

    def __call__(self, images, tokens):
        h = jax.nn.relu(self.conv(images)).reshape(images.shape[0], -1)
        e = self.embed(tokens)
        return self.fc2(jax.nn.relu(self.fc1(jnp.concatenate([h, e], axis=-1))))


def test_mixed_model_trains_on_synthetic_data():
    k1, k2 = jax.random.split(jax.random.key(0))
    images = jax.random.normal(k1, (64, 6, 6, 3))
    tokens = jax.random.randint(k2, (64,), 0, 50)
    labels = (jnp.sum(images[..., 0], axis=(1, 2)) > 0).astype(jnp.int32) + (tokens % 2)
    model = Mixed(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            logits = m(images, tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(80)]
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    # every tensorized layer holds only Core parameters besides biases
    cores = jax.tree.leaves(nnx.state(model, Core))
    assert len(cores) == sum(len(m.cores) for m in (model.conv, model.embed, model.fc1, model.fc2))
