"""Seed 004's model in flax NNX, trained the way flax's NNX documentation teaches (the MNIST
tutorial): the reference row of ``bench_cli`` beside ``flax_loop``.

``nnx.Linear(784, 50) -> nnx.BatchNorm`` (Keras' momentum 0.99 and epsilon 1e-3) ``-> relu ->
nnx.Linear(50, 10)``, ``nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)``, an
``@nnx.jit`` train step updating an ``nnx.MultiMetric`` (loss, accuracy), host-side batches of
128 from a numpy permutation per epoch, ``metrics.compute()`` once per epoch, then an
``@nnx.jit`` evaluation of the test split. As in the tutorial there is no L2 penalty. Nothing
from jaxreg is imported (the data: :mod:`benchmarks.loop_data`, numpy only).

Run as a module it prints one JSON line ``{"train_seconds", "test_accuracy", "epochs"}``::

    python -m benchmarks.nnx_loop --dataset digits --epochs 10 [--data-dir DIR]

``train_seconds`` spans building the model, compilation, the epochs and the test evaluation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

from benchmarks.loop_data import BATCH_SIZE, LEARNING_RATE, SEED, main


class SeedMLP(nnx.Module):
    """Flatten, Linear(50), BatchNorm, relu, Linear(10)."""

    def __init__(self, features: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(features, 50, rngs=rngs)
        self.norm = nnx.BatchNorm(50, momentum=0.99, epsilon=1e-3, rngs=rngs)
        self.out = nnx.Linear(50, 10, rngs=rngs)

    def __call__(self, x: ArrayLike) -> jax.Array:
        x = jnp.asarray(x)
        x = self.norm(self.hidden(x.reshape(len(x), -1)))
        return self.out(nnx.relu(x))


def loss_fn(model: nnx.Module, x: ArrayLike, y: ArrayLike) -> tuple[jax.Array, jax.Array]:
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def tutorial_loop(model: nnx.Module, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, epochs: int) -> float:
    """The tutorial's loop on ``model`` for ``epochs``; returns the test accuracy.

    Its steps are jitted per call, so every call includes their compilation.
    """
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))

    @nnx.jit
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric,
                   x: ArrayLike, y: ArrayLike) -> None:
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        metrics.update(loss=loss, logits=logits, labels=y)
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model: nnx.Module, metrics: nnx.MultiMetric, x: ArrayLike,
                  y: ArrayLike) -> None:
        loss, logits = loss_fn(model, x, y)
        metrics.update(loss=loss, logits=logits, labels=y)

    rng = np.random.default_rng(SEED)
    steps = len(x) // BATCH_SIZE
    for _ in range(epochs):
        model.train()
        perm = rng.permutation(len(x))
        for i in range(steps):
            idx = perm[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            train_step(model, optimizer, metrics, x[idx], y[idx])
        metrics.compute()  # the epoch's logs, as the tutorial prints them
        metrics.reset()
    model.eval()
    for i in range(0, len(x_test), 1000):
        eval_step(model, metrics, x_test[i:i + 1000], y_test[i:i + 1000])
    return float(metrics.compute()["accuracy"])


def train(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          epochs: int) -> float:
    """Trains the tutorial's loop on :class:`SeedMLP` for ``epochs``; returns the test accuracy."""
    model = SeedMLP(int(np.prod(x.shape[1:])), nnx.Rngs(SEED))
    return tutorial_loop(model, x, y, x_test, y_test, epochs)


if __name__ == "__main__":
    main(train, __doc__)
