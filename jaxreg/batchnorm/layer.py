"""One call of a BatchNorm layer, whichever flax API stores its variables.

:mod:`jaxreg.batchnorm.linen` and :mod:`jaxreg.batchnorm.nnx` read and write their variables;
this module maps a layer's hyperparameters (its attributes, named alike in both) onto
:func:`jaxreg.batchnorm.core.batch_norm` and shapes what comes back.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.nnx.nn import dtypes

from jaxreg.batchnorm import core

Array = jax.Array


def call(
    layer: Any, x: Array, scale: Array | None, bias: Array | None, mean: Array, var: Array, *,
    use_running_average: bool, stats_dtype: Any, mask: Array | None,
    renorm_bounds: tuple[Any, Any] | None = None, initializing: bool = False,
) -> core.BatchNormOutput:
    """:func:`~jaxreg.batchnorm.core.batch_norm` with ``layer``'s hyperparameters.

    Reads ``layer.axis``, ``momentum``, ``epsilon``, ``axis_name``, ``axis_index_groups``,
    ``use_fast_variance``, ``virtual_batch_size``, ``unbiased_running_var`` and ``dtype``.
    ``initializing`` (linen's ``init``): the running statistics are left as created and no
    device axis is reduced over.

    Returns:
      The core's output with ``y`` cast to flax's output dtype,
      ``canonicalize_dtype(x, scale, bias, dtype=layer.dtype)``, and in training the
      ``moments`` with the running variance's ``ddof`` (0, or 1 if ``unbiased_running_var``).
    """
    out = core.batch_norm(
        x, scale, bias, mean, var,
        axis=layer.axis,
        use_running_average=use_running_average,
        momentum=layer.momentum,
        epsilon=layer.epsilon,
        stats_dtype=stats_dtype,
        mask=mask,
        axis_name=None if initializing else layer.axis_name,
        axis_index_groups=layer.axis_index_groups,
        use_fast_variance=layer.use_fast_variance,
        virtual_batch_size=layer.virtual_batch_size,
        unbiased_running_var=layer.unbiased_running_var,
        renorm_bounds=renorm_bounds,
        update_stats=not initializing,
    )
    moments = out.moments
    if moments is not None:
        moments = {**moments, "ddof": jnp.asarray(1.0 if layer.unbiased_running_var else 0.0)}
    y = jnp.asarray(out.y, dtypes.canonicalize_dtype(x, scale, bias, dtype=layer.dtype))
    return out._replace(y=y, moments=moments)


def renorm_bounds(layer: Any, step: Array) -> tuple[Any, Any]:
    """BatchRenorm's ``(r_max, d_max)`` after ``step`` training calls (schedules evaluated)."""
    r_max, d_max = (v(step) if callable(v) else v for v in (layer.r_max, layer.d_max))
    return r_max, d_max
