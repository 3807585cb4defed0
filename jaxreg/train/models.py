"""Small flax (linen) models for the reference workloads, and a name registry.

"Seed NNN" below is one of the project's numbered source documents: the documentation's page
"The formulas and their sources" (``docs/formulas.md``) says what each asks for.

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
import jax
import jax.numpy as jnp
from jax import lax

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


_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def im2col_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, *, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                precision=None, out_sharding=None) -> jax.Array:
    """``lax.conv_general_dilated`` for stride-1 2-D NHWC convolutions, as one matmul (im2col).

    ``y[n, h, w, o] = sum_{i, j, c} xpad[n, h + i, w + j, c] rhs[i, j, c, o]``: the ``kh * kw``
    shifted views of the padded input are concatenated along channels, ``[N, H', W', kh kw C]``,
    and multiplied by ``rhs.reshape(kh kw C, O)`` (the same ``(i, j, c)`` order). Equal to
    ``lax.conv_general_dilated`` to float rounding, gradients included (autodiff of a pad, slices
    and a dot). The reason: XLA CPU runs a convolution inside a loop (``lax.scan``, as
    :func:`jaxreg.train.scan_epoch` runs the steps) much slower than the same convolution
    outside one, while a dot in a loop keeps its speed (figures: ``benchmarks/RESULTS.md``).
    Pass it to ``flax.linen.Conv`` as ``conv_general_dilated=im2col_conv`` (same parameters).

    Args:
      lhs: ``[N, H, W, C]``. rhs: ``[kh, kw, C, O]``.
      window_strides: ``(1, 1)``. padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``.
      lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, precision, out_sharding:
        as in ``lax.conv_general_dilated``; only no dilation, NHWC/HWIO/NHWC, one group and no
        output sharding are supported.

    Returns:
      ``[N, H', W', O]``.

    Raises:
      ValueError: for strides, dilations, layouts or groups other than those above.
    """
    dims = None if dimension_numbers is None else lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers)
    unsupported = {
        "window_strides": (tuple(window_strides), (1, 1)),
        "lhs_dilation": (tuple(lhs_dilation or (1, 1)), (1, 1)),
        "rhs_dilation": (tuple(rhs_dilation or (1, 1)), (1, 1)),
        "dimension_numbers": (dims, _NHWC),
        "feature_group_count": (feature_group_count, 1),
        "out_sharding": (out_sharding, None),  # flax.nnx.Conv passes it
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(f"im2col_conv supports {name}={supported}, got {value!r}")
    kh, kw, c, o = rhs.shape
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1), padding)
    x = jnp.pad(lhs, ((0, 0), *map(tuple, padding), (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    cols = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.dot(cols, rhs.reshape(kh * kw * c, o), precision=precision)


def _pool_windows(x: jax.Array) -> jax.Array:
    """``[N, H, W, C] -> [N, H//2, 2, W//2, 2, C]``: the 2x2 windows (an odd last row/column is
    dropped, as by ``VALID`` pooling)."""
    n, h, w, c = x.shape
    return x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """``flax.linen.max_pool(x, (2, 2), strides=(2, 2))`` for ``[N, H, W, C]``, fast on XLA CPU.

    ``y[n, i, j, c] = max(x[n, 2i + a, 2j + b, c] for a, b in {0, 1}^2)``, a reshape and a
    reduction. The gradient is ``flax``'s exactly: each output's cotangent goes to the *first*
    maximum of its window in row-major order ``(0, 0), (0, 1), (1, 0), (1, 1)`` (XLA's
    select-and-scatter with ``>=``), so ties (as after ``relu``) are treated the same, written
    out as four masked selects instead of the select-and-scatter that ``max_pool``'s gradient
    lowers to, which is slow on XLA CPU (figures: ``benchmarks/RESULTS.md``).

    Args:
      x: ``[N, H, W, C]``.

    Returns:
      ``[N, H // 2, W // 2, C]``.
    """
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return max_pool_2x2(x), x


def _max_pool_2x2_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    windows = _pool_windows(x)
    y = windows.max(axis=(2, 4))
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for a in (0, 1):
        row = []
        for b in (0, 1):
            first = (windows[:, :, a, :, b, :] == y) & ~taken
            taken = taken | first
            row.append(jnp.where(first, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(row, axis=3))
    n, h, w, c = x.shape
    dx = jnp.stack(rows, axis=2).reshape(n, h - h % 2, w - w % 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


class SmallCNN(nn.Module):
    """Two convolution blocks and a dense head, for ``[N, H, W, C]`` images.

    Each block is ``Conv(3x3) -> BN -> relu -> max-pool(2x2)`` with 32 then 64 channels,
    followed by ``Dense(128) -> relu -> Dense(num_classes)``.

    On CPU the convolutions are :func:`im2col_conv` and the pooling :func:`max_pool_2x2`
    (flax's ``Conv`` and ``max_pool`` to float rounding, same variables), because XLA CPU's
    convolution in a scanned epoch and ``max_pool``'s select-and-scatter gradient are slow
    there (see ``benchmarks/RESULTS.md``). Other backends keep ``lax.conv_general_dilated``
    (cuDNN on GPU).
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
