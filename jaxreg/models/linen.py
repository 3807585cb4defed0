"""The built-in models as flax linen modules: ``__call__(x, train: bool) -> logits``.

Logits are ``[batch, num_classes]`` (``num_classes=1``: one output per example, regression);
the MLPs flatten ``[N, H, W, C]`` images. In training, batch normalization uses the batch
statistics and updates the running averages, so ``batch_stats`` is mutable::

    logits, updates = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                  mutable=["batch_stats"])
    logits = model.apply({"params": p, "batch_stats": s}, x, train=False)

Any linen module with that call signature works with ``jaxreg.train.fit``. Batch
normalization is :class:`jaxreg.nn.BatchNorm` with Keras' defaults (``BN_MOMENTUM``,
``BN_EPSILON``): the reference recipes are Keras models (``docs/formulas.md``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxreg.nn import BatchNorm, im2col_conv, max_pool_2x2

BN_MOMENTUM = 0.99
"""Keras' BatchNormalization momentum, the models' default ``bn_momentum``."""
BN_EPSILON = 1e-3
"""Keras' BatchNormalization epsilon, the models' BatchNorm ``epsilon``."""


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
    """The :class:`MLP` ``Dense(50) -> BatchNorm -> relu -> Dense(num_classes)``: the reference
    training recipe's model (Adam, batch size 128, 10 epochs; ``docs/formulas.md``)."""

    hidden: int | tuple[int, ...] = 50


class KerasMLP(MLP):
    """The :class:`MLP` ``Dense(128) -> BN -> relu -> Dense(64) -> BN -> relu ->
    Dense(num_classes)``: the reference Keras model with the usual tutorial widths
    (``docs/formulas.md``)."""

    hidden: int | tuple[int, ...] = (128, 64)


class SmallCNN(nn.Module):
    """Two convolution blocks and a dense head, for ``[N, H, W, C]`` images.

    Each block is ``Conv(3x3) -> BN -> relu -> max-pool(2x2)`` with 32 then 64 channels,
    followed by ``Dense(128) -> relu -> Dense(num_classes)``.

    On CPU the convolutions are :func:`jaxreg.nn.im2col_conv` and the pooling
    :func:`jaxreg.nn.max_pool_2x2` (flax's ``Conv`` and ``max_pool`` to float rounding, same
    variables: fast on XLA CPU); other backends keep ``lax.conv_general_dilated``.
    """

    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for c in self.channels:
            conv = im2col_conv if jax.default_backend() == "cpu" else None
            x = nn.Conv(c, (3, 3), conv_general_dilated=conv)(x)
            x = _batch_norm(self, train)(x)
            x = max_pool_2x2(nn.relu(x))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
    """``Dense(num_classes)`` on the flattened input: with squared error and L2, ridge
    regression."""

    num_classes: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
