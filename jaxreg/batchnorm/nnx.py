"""Flax NNX :class:`BatchNorm` and :class:`BatchRenorm`: drop-ins for ``flax.nnx.BatchNorm``.

Same constructor, variables (``scale``/``bias`` as ``nnx.Param``, ``mean``/``var`` as
``nnx.BatchStat``), call signature and ``.train()``/``.eval()`` modes as flax 0.12, with the
formulas of the linen :class:`jaxreg.nn.BatchNorm`: both call :mod:`jaxreg.batchnorm.core`.
What differs from flax (stable variance by default, exact cross-device statistics, float32
running statistics under ``dtype=bfloat16``, complex running means) and the momentum
convention are in ``docs/conventions.md``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes, initializers

from jaxreg.batchnorm import core, layer

Array = jax.Array
_ZEROS, _ONES = initializers.zeros_init(), initializers.ones_init()


class BatchMoments(nnx.Intermediate):
    """Whole-batch ``(count, mean, m2, ddof)`` sown by layers with ``record_moments=True``.

    Read by :func:`jaxreg.nn.recalibrate_batch_stats` for NNX models; nothing is stored in
    ordinary training.
    """


class BatchNorm(nnx.Module):
    """Batch normalization, a drop-in replacement for ``flax.nnx.BatchNorm``.

    Args:
      num_features: size of the feature axis.
      use_running_average: use ``mean``/``var`` instead of the input's statistics
        (``.eval()`` sets it True, ``.train()`` False; the call argument takes precedence).
      axis: feature axis (or axes, whose sizes multiply to ``num_features`` as one axis does).
      momentum: in ``[0, 1)``, the weight of the running statistics in their update.
      epsilon: finite, ``> 0``, added to the variance.
      dtype: dtype of the computation and output (default: promoted from input and params);
        statistics are computed in at least float32.
      param_dtype: dtype of ``scale``/``bias``.
      use_bias, use_scale: learn ``bias`` (beta) / ``scale`` (gamma).
      bias_init, scale_init: initializers (zeros / ones).
      axis_name: named device axis (pmap/shard_map) over which statistics are exact.
      axis_index_groups: subgroups of ``axis_name`` (as in ``lax.psum``).
      use_fast_variance: ``E[x^2] - E[x]^2`` only (flax's default). Default ``False``: stable.
      promote_dtype: flax's ``(x, mean, var, scale, bias), dtype -> promoted`` function, applied
        to the input and the parameters (the running statistics stay float32).
      virtual_batch_size: ghost batch normalization (statistics per group of this many
        examples along axis 0 in training); not combinable with ``axis_name``.
      unbiased_running_var: update the running variance with ``var * N / (N - 1)``.
      record_moments: sow the whole-batch moments as :class:`BatchMoments` (set by
        :func:`jaxreg.nn.recalibrate_batch_stats`).
      rngs: random keys for the initializers.
      bias_metadata, scale_metadata: metadata of the parameters (as in flax).

    Examples:
      In training mode a call normalizes with the batch statistics and moves ``mean`` from 0
      towards the batch mean; after ``.eval()`` it uses ``mean`` and ``var``:

      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxreg import nnx as jnnx
      >>> x = jnp.arange(12.0).reshape(4, 3)
      >>> layer = jnnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
      >>> [round(float(v), 3) for v in layer(x)[:, 0]]
      [-1.342, -0.447, 0.447, 1.342]
      >>> [round(float(v), 3) for v in layer.mean[...]]
      [0.45, 0.55, 0.65]
      >>> layer.eval()
      >>> [round(float(v), 3) for v in layer(x)[0]]
      [-0.316, 0.316, 0.949]
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable[..., Array] = _ZEROS,
        scale_init: Callable[..., Array] = _ONES,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = False,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        virtual_batch_size: int | None = None,
        unbiased_running_var: bool = False,
        record_moments: bool = False,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        core.check_hyperparameters(
            momentum=momentum, epsilon=epsilon, virtual_batch_size=virtual_batch_size,
            unbiased_running_var=unbiased_running_var, axis_name=axis_name,
        )
        shape = (num_features,)
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
        self.scale = (nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata)
                      if use_scale else nnx.data(None))
        self.bias = (nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
                     if use_bias else nnx.data(None))
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.virtual_batch_size = virtual_batch_size
        self.unbiased_running_var = unbiased_running_var
        self.record_moments = record_moments

    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        """Normalize ``x`` (same shape out); ``mask``: the elements that count in statistics."""
        return self._normalize(x, use_running_average, mask, renorm_bounds=None)

    def _normalize(
        self, x: Array, use_running_average: bool | None, mask: Array | None,
        renorm_bounds: tuple[Any, Any] | None,
    ) -> Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                "BatchNorm: use_running_average is None; pass it to the constructor or the "
                "call, or use .train() / .eval()"
            )
        scale = None if self.scale is None else self.scale[...]
        bias = None if self.bias is None else self.bias[...]
        x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
        stats_dtype = jnp.promote_types(jnp.result_type(x), jnp.float32)
        out = layer.call(self, x, scale, bias, self.mean[...], self.var[...],
                         use_running_average=bool(use_running_average),
                         stats_dtype=stats_dtype, mask=mask, renorm_bounds=renorm_bounds)
        if not use_running_average:
            # Replaced, not written into (`[...] =`), so that a complex mean stays complex.
            self.mean.set_value(jax.lax.stop_gradient(out.mean))
            self.var.set_value(jax.lax.stop_gradient(out.var))
            if self.record_moments:  # appended per call, like nnx's sow
                previous = getattr(self, "batch_moments", None)
                calls = () if previous is None else previous.get_value()
                self.batch_moments = BatchMoments((*calls, out.moments))
        return out.y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Sets the mode; used by ``nnx.view``, ``.train()`` and ``.eval()``.

        Args:
          use_running_average: if True, the stored batch statistics will be
            used instead of computing the batch statistics on the input.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017); see :class:`jaxreg.nn.BatchRenorm` for the maths.

    Extra arguments ``r_max`` (``>= 1``) and ``d_max`` (``>= 0``), floats or schedules
    ``step -> value`` of the int32 ``nnx.BatchStat`` ``step``: the number of training calls
    so far. With ``r_max=1, d_max=0`` it equals :class:`BatchNorm`.
    """

    def __init__(self, num_features: int, *, r_max: Any = 3.0, d_max: Any = 5.0,
                 **kwargs: Any):
        core.check_renorm_bounds(r_max, d_max)
        super().__init__(num_features, **kwargs)
        self.r_max = r_max
        self.d_max = d_max
        self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        step = self.step[...]
        y = self._normalize(x, use_running_average, mask,
                            renorm_bounds=layer.renorm_bounds(self, step))
        training = not (self.use_running_average if use_running_average is None
                        else use_running_average)
        if training:
            self.step[...] = step + 1  # the schedules' clock: one tick per training call
        return y
