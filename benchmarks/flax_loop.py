"""Seed 004's recipe as a flax user writes it by hand: the reference of ``bench_cli``.

``SeedMLP`` (Dense(50) -> BatchNorm -> relu -> Dense(10)), Adam 1e-3, batch 128, an L2 penalty
``(0.025 / 128) / 2 ||w||^2`` on the kernels (``jaxreg train``'s default batch-scaled L2, as
its gradient ``(0.025 / 128) w`` added before Adam), softmax cross-entropy; a
``flax.training.train_state.TrainState`` with ``batch_stats``, one jitted step per batch with
the state donated, a numpy permutation per epoch, the epoch's metrics fetched once per epoch,
and the test accuracy at the end. It imports nothing from jaxreg (the model is written here in
flax, with ``flax.linen.BatchNorm`` at Keras' momentum and epsilon like ``jaxreg``'s
``SeedMLP``; the data are read with numpy / scikit-learn), so its process time is what such a
script costs (the data: :mod:`benchmarks.loop_data`, numpy only). No checkpoints: the
minimal loop.

Run as a module it prints one JSON line ``{"train_seconds", "test_accuracy", "epochs"}``::

    python -m benchmarks.flax_loop --dataset digits --epochs 10 [--data-dir DIR]

``train_seconds`` spans initialization, compilation, the epochs and the test evaluation, as
``jaxreg train``'s ``train_seconds`` spans its ``fit`` call.
"""
from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

from benchmarks.loop_data import BATCH_SIZE, L2, LEARNING_RATE, SEED, main

__all__ = ["BATCH_SIZE", "L2", "LEARNING_RATE", "SEED", "SeedMLP", "State", "run_epochs", "step",
           "train"]


class SeedMLP(nn.Module):
    """Seed 004's model in flax: flatten, Dense(50), BatchNorm, relu, Dense(10)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(50)(x.reshape(len(x), -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)(x)
        return nn.Dense(10)(nn.relu(x))


class State(train_state.TrainState):
    batch_stats: Any


def step(state: State, x: jax.Array, y: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                         train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
    return state, {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}


def run_epochs(step: Any, state: State, x: np.ndarray, y: np.ndarray, epochs: int) -> State:
    """``epochs`` passes of ``step`` over batches of a numpy permutation per epoch (seed
    ``SEED``, the last partial batch dropped), the epoch's metrics fetched once per epoch, as a
    user prints them."""
    rng = np.random.default_rng(SEED)
    steps = len(x) // BATCH_SIZE
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        metrics = []
        for i in range(steps):
            idx = perm[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            state, m = step(state, x[idx], y[idx])
            metrics.append(m)
        jax.device_get(metrics)
    return state


def train(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          epochs: int) -> float:
    """Trains the recipe for ``epochs`` and returns the test accuracy."""
    model = SeedMLP()
    variables = model.init(jax.random.key(SEED), x[:1], train=False)
    kernels = jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel",
                                               variables["params"])
    tx = optax.chain(optax.masked(optax.add_decayed_weights(L2 / BATCH_SIZE), kernels),
                     optax.adam(LEARNING_RATE))
    state = State.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                         batch_stats=variables["batch_stats"])
    state = run_epochs(jax.jit(step, donate_argnums=0), state, x, y, epochs)
    logits = cast(jax.Array, model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                         x_test, train=False))
    return float((jnp.argmax(logits, -1) == y_test).mean())


if __name__ == "__main__":
    main(train, __doc__)
