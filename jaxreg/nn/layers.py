"""Layer functions fast on XLA CPU: :func:`im2col_conv` and :func:`max_pool_2x2`.

Drop-ins for ``lax.conv_general_dilated`` (stride-1 2-D NHWC convolutions, as
``flax.linen.Conv(..., conv_general_dilated=im2col_conv)`` or ``flax.nnx.Conv``) and
``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``: the same values to float rounding and the
same gradients, written as a matmul and a reshape, which XLA CPU runs fast inside a
``lax.scan`` (figures: ``benchmarks/RESULTS.md``). Matmuls follow the caller's precision
(``jax_default_matmul_precision``; ``docs/conventions.md``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

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
