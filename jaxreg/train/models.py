"""Small flax (linen) models for the reference workloads, and a name registry.

Every model takes ``__call__(x, train: bool)`` and returns logits ``[batch, num_classes]``
(``num_classes=1`` gives one output per example, for regression). Images ``[N, H, W, C]`` are
flattened by the MLPs. In training, batch normalization uses the batch statistics and updates
the running averages, so the caller applies the model with the ``batch_stats`` collection
mutable::

    logits, updates = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                  mutable=["batch_stats"])
    logits = model.apply({"params": p, "batch_stats": s}, x, train=False)

Any other linen module with that call signature works with :func:`jaxreg.train.fit`.

Batch normalization is :class:`jaxreg.nn.BatchNorm` (flax's, with a stable variance) with
Keras' defaults (momentum 0.99, epsilon 1e-3), since the seed recipes are Keras models: running
statistics follow ``m <- 0.99 m + 0.01 mean(batch)``.
"""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxreg._validate import check_choice
from jaxreg.nn import BatchNorm

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


def _batch_norm(model: nn.Module, train: bool) -> BatchNorm:
    """The models' batch normalization: Keras' epsilon, the model's ``bn_momentum`` (a field, so
    :func:`jaxreg.train.sweep` can vary it with ``model.clone(bn_momentum=m)``)."""
    return BatchNorm(use_running_average=not train, momentum=model.bn_momentum, epsilon=BN_EPSILON)


class MLP(nn.Module):
    """``[Dense(h) -> BatchNorm -> relu] for h in hidden -> Dense(num_classes)``, on the
    flattened input. ``hidden`` is a tuple of widths, or one int for one hidden layer."""

    num_classes: int = 10
    hidden: int | tuple[int, ...] = (50,)
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        for width in (self.hidden,) if isinstance(self.hidden, int) else self.hidden:
            x = nn.Dense(width)(x)
            x = _batch_norm(self, train)(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x)


class SeedMLP(MLP):
    """Seed 004's model, the :class:`MLP` ``Dense(50) -> BatchNorm -> relu -> Dense(num_classes)``.

    The seed trains it with Adam, batch size 128, for 10 epochs on flattened 28x28 images.
    """

    hidden: int | tuple[int, ...] = 50


class KerasMLP(MLP):
    """Seed 001's Keras model, the :class:`MLP` with two hidden layers:
    ``Dense(128) -> BN -> relu -> Dense(64) -> BN -> relu -> Dense(num_classes)``. Seed 001
    does not pin the widths down; these are the usual Keras tutorial sizes.
    """

    hidden: int | tuple[int, ...] = (128, 64)


class SmallCNN(nn.Module):
    """Two convolution blocks and a dense head, for ``[N, H, W, C]`` images.

    Each block is ``Conv(3x3) -> BN -> relu -> max-pool(2x2)`` with 32 then 64 channels,
    followed by ``Dense(128) -> relu -> Dense(num_classes)``.
    """

    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for c in self.channels:
            x = nn.Conv(c, (3, 3))(x)
            x = _batch_norm(self, train)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
    """``Dense(num_classes)`` on the flattened input: with squared error and L2, ridge regression."""

    num_classes: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": Linear,
    "seed-mlp": SeedMLP,
    "keras-mlp": KerasMLP,
    "small-cnn": SmallCNN,
}


def get(name: str, num_classes: int | None = 10) -> nn.Module:
    """The registered model ``name`` (one of :data:`MODELS`) with ``num_classes`` outputs
    (``None``, a regression dataset's ``num_classes``: one output)."""
    return MODELS[check_choice("name", name, MODELS)](num_classes=num_classes or 1)
