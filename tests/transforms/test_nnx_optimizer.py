"""jaxreg's optax transforms under nnx.Optimizer, and the default mask on NNX state."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxreg
from jaxreg import masks
from jaxreg import nnx as jnnx


class Model(nnx.Module):
    """Every layer kind the default mask must classify, incl. stacked layers (axis 0 = layer)."""

    def __init__(self, rngs: nnx.Rngs):
        self.emb = nnx.Embed(10, 4, rngs=rngs)
        self.conv = nnx.Conv(4, 4, (3,), rngs=rngs)
        self.ln = nnx.LayerNorm(4, rngs=rngs)
        self.bn = jnnx.BatchNorm(4, rngs=rngs)
        self.flax_bn = nnx.BatchNorm(4, rngs=rngs)

        @nnx.vmap(in_axes=0, out_axes=0)
        def stacked(key):
            return nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(key)),
                                  nnx.LayerNorm(4, rngs=nnx.Rngs(key)))

        self.stack = stacked(jax.random.split(jax.random.key(1), 3))
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, tokens):
        h = self.bn(self.ln(self.conv(self.emb(tokens))))
        h = self.flax_bn(h)

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def through(layer, h):
            return layer(h)

        return self.head(through(self.stack, h)).mean((1, 2))


EXPECTED_PENALIZED = {
    "emb/embedding": True, "conv/kernel": True, "conv/bias": False, "ln/scale": False,
    "ln/bias": False, "bn/scale": False, "bn/bias": False, "flax_bn/scale": False,
    "flax_bn/bias": False, "stack/layers/0/kernel": True, "stack/layers/0/bias": False,
    "stack/layers/1/scale": False, "stack/layers/1/bias": False, "head/kernel": True,
    "head/bias": False,
}


def _flat(tree):
    return {"/".join(str(k) for k in path): v for path, v in nnx.to_flat_state(tree)}


def test_default_mask_on_nnx_state_selects_kernels_and_embeddings_only():
    model = Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert params["stack"]["layers"][0]["bias"].shape == (3, 4)  # stacked: 2-D biases
    mask = _flat(masks.kernels_only(params))
    assert {k: bool(v.get_value()) for k, v in mask.items()} == EXPECTED_PENALIZED


def _penalty_grads(model, tx, **extra):
    """The update that tx alone (penalty only, zero loss gradients) applies to each Param."""
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    zeros = jax.tree.map(jnp.zeros_like, before)
    opt.update(model, zeros, **extra)
    after = nnx.state(model, nnx.Param)
    return _flat(before), _flat(after)


def test_batch_scaled_l2_under_nnx_optimizer_gets_batch_size():
    model = Model(nnx.Rngs(0))
    lr, lam, b = 0.1, 0.5, 8
    tx = optax.chain(jaxreg.batch_scaled_l2(lam), optax.sgd(lr))
    before, after = _penalty_grads(model, tx, batch_size=b)
    for name, penalized in EXPECTED_PENALIZED.items():
        w, w_new = np.asarray(before[name].get_value()), np.asarray(after[name].get_value())
        expected = w * (1 - lr * lam / b) if penalized else w
        np.testing.assert_allclose(w_new, expected, rtol=1e-6, err_msg=name)


def test_reduce_on_plateau_under_nnx_optimizer_takes_value():
    model = Model(nnx.Rngs(0))
    tx = optax.chain(optax.sgd(1.0), jaxreg.reduce_on_plateau(factor=0.5, patience=0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    steps = []
    for value in (1.0, 2.0, 2.0):  # worse, worse: the scale halves twice
        w = jnp.copy(model.head.bias[...])
        opt.update(model, grads, value=value)
        steps.append(float((w - model.head.bias[...])[0]))
    np.testing.assert_allclose(steps, [1.0, 0.5, 0.25])


def test_training_step_with_nnx_jit_and_add_l2():
    model = Model(nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (6, 5), 0, 10)
    opt = nnx.Optimizer(model, optax.chain(jaxreg.add_l2(1e-2), optax.adam(1e-2)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, tokens):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(jnp.square(m(tokens) - 1.0)))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, tokens)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert float(jnp.abs(model.bn.mean[...]).sum()) > 0  # BatchNorm trained its statistics
