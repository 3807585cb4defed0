"""The built-in models as flax NNX modules, layer for layer the linen ones.

``nnx.Linear``/``nnx.Conv`` for ``nn.Dense``/``nn.Conv`` and :class:`jaxreg.nnx.BatchNorm`
with Keras' epsilon and the model's ``bn_momentum``: given the same weights, an NNX model and
its linen twin (:mod:`jaxreg.models.linen`) compute the same outputs. An NNX module needs one
example's shape at construction (``input_shape``, e.g. ``(28, 28)`` or ``(28, 28, 1)``) and
is called as ``model(x)`` in ``.train()`` or ``.eval()`` mode::

    model = SeedMLP((28, 28), rngs=nnx.Rngs(0))
    result = jaxreg.train.fit(model, dict(name="adam"), data)
    trained = result.model  # an nnx.Module
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxreg.models.linen import BN_EPSILON, BN_MOMENTUM
from jaxreg.nn.layers import im2col_conv, max_pool_2x2
from jaxreg.nnx import BatchNorm


def _batch_norm(features: int, momentum: float, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(features, momentum=momentum, epsilon=BN_EPSILON, rngs=rngs)


class MLP(nnx.Module):
    """``[Linear(h) -> BatchNorm -> relu] for h in hidden -> Linear(num_classes)`` on the
    flattened input (:class:`jaxreg.models.MLP`). Subclasses set the default ``HIDDEN``."""

    HIDDEN: tuple[int, ...] = (50,)

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10,
                 hidden: int | Sequence[int] | None = None, *, bn_momentum: float = BN_MOMENTUM,
                 rngs: nnx.Rngs):
        hidden = (
            self.HIDDEN
            if hidden is None
            else (hidden,)
            if isinstance(hidden, int)
            else tuple(hidden)
        )
        sizes = [math.prod(input_shape), *hidden]
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.norm = nnx.List([_batch_norm(b, bn_momentum, rngs) for b in hidden])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        for dense, norm in zip(self.dense, self.norm, strict=True):
            x = nnx.relu(norm(dense(x)))
        return self.head(x)


class SeedMLP(MLP):
    """``Linear(50) -> BatchNorm -> relu -> Linear(num_classes)``
    (:class:`jaxreg.models.SeedMLP`)."""

    HIDDEN = (50,)


class KerasMLP(MLP):
    """``Linear(128) -> BN -> relu -> Linear(64) -> BN -> relu -> Linear(num_classes)`` (the
    :class:`jaxreg.models.KerasMLP`)."""

    HIDDEN = (128, 64)


class SmallCNN(nnx.Module):
    """``[Conv(3x3, c) -> BN -> relu -> max-pool(2x2)] for c in channels -> Linear(hidden) ->
    relu -> Linear(num_classes)`` on ``[N, H, W, C]`` images (:class:`jaxreg.models.SmallCNN`,
    with the same CPU convolution and pooling); ``input_shape`` is ``(H, W, C)``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10,
                 channels: Sequence[int] = (32, 64), hidden: int = 128, *,
                 bn_momentum: float = BN_MOMENTUM, rngs: nnx.Rngs):
        height, width, in_channels = input_shape
        sizes = [in_channels, *channels]
        # the linen model's CPU path: im2col convolutions
        conv: dict[str, Any] = (
            {"conv_general_dilated": im2col_conv} if jax.default_backend() == "cpu" else {})
        self.conv = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs, **conv)
                              for a, b in itertools.pairwise(sizes)])
        self.norm = nnx.List([_batch_norm(c, bn_momentum, rngs) for c in channels])
        for _ in channels:
            height, width = height // 2, width // 2
        self.dense = nnx.Linear(height * width * sizes[-1], hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for conv, norm in zip(self.conv, self.norm, strict=True):
            x = max_pool_2x2(nnx.relu(norm(conv(x))))
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.head(x)


class Linear(nnx.Module):
    """``Linear(num_classes)`` on the flattened input (:class:`jaxreg.models.Linear`)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int = 1, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(math.prod(input_shape), num_classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.dense(x.reshape(x.shape[0], -1))
