"""Flax linen :class:`BatchNorm` and :class:`BatchRenorm`: drop-ins for ``flax.linen.BatchNorm``.

Same fields, call signature, variables (``params/scale``, ``params/bias``, ``batch_stats/mean``,
``batch_stats/var``), shapes and dtypes as flax 0.12, so checkpoints load unchanged. Per
feature, over a batch of ``N`` valid elements::

    y = scale * (x - mean) / sqrt(var + epsilon) + bias,   var = (1/N) sum_i |x_i - mean|^2
    running = momentum * running + (1 - momentum) * batch

The maths is :mod:`jaxreg.batchnorm.core`; this module creates and stores the variables. The
momentum convention and what differs from flax (stable variance by default, exact
cross-device statistics, degenerate batches) are in ``docs/conventions.md``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.nn import initializers

from jaxreg.batchnorm import core, layer

Array = jax.Array
Schedule = Callable[[Array], Any]

#: Collection into which BatchNorm layers ``sow`` their whole-batch moments (count, mean, M2)
#: when, and only when, it is passed as mutable; read by :func:`jaxreg.nn.recalibrate_batch_stats`.
BATCH_MOMENTS = "batch_moments"


def _batch_norm(
    mdl: BatchNorm, x: Array, use_running_average: bool, mask: Array | None,
    renorm_bounds: tuple[Any, Any] | None = None,
) -> Array:
    """The body of :class:`BatchNorm` and :class:`BatchRenorm`: the linen variables around
    :func:`jaxreg.batchnorm.layer.call`."""
    feature_axes = core.canonicalize_axes(x.ndim, mdl.axis)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    f32 = mdl.force_float32_reductions
    stats_param_dtype = jnp.float32 if f32 else mdl.param_dtype
    ra_mean = mdl.variable("batch_stats", "mean", jnp.zeros, feature_shape, stats_param_dtype)
    ra_var = mdl.variable("batch_stats", "var", jnp.ones, feature_shape, stats_param_dtype)
    scale = bias = None
    if mdl.use_scale:
        scale = mdl.param("scale", mdl.scale_init, feature_shape, mdl.param_dtype)
    if mdl.use_bias:
        bias = mdl.param("bias", mdl.bias_init, feature_shape, mdl.param_dtype)
    running_mean, running_var = ra_mean.value, ra_var.value
    if use_running_average and not f32:
        # flax normalizes in param_dtype here (our float32 statistics are cast the same way).
        running_mean = jnp.asarray(running_mean, mdl.param_dtype)
        running_var = jnp.asarray(running_var, mdl.param_dtype)
    stats_dtype = jnp.result_type(x) if mdl.dtype is None else mdl.dtype
    if f32:
        stats_dtype = jnp.promote_types(stats_dtype, jnp.float32)
    initializing = mdl.is_initializing()
    out = layer.call(mdl, x, scale, bias, running_mean, running_var,
                     use_running_average=use_running_average, stats_dtype=stats_dtype,
                     mask=mask, renorm_bounds=renorm_bounds, initializing=initializing)
    if not use_running_average and not initializing:
        ra_mean.value, ra_var.value = out.mean, out.var
        if mdl.is_mutable_collection(BATCH_MOMENTS):
            mdl.sow(BATCH_MOMENTS, "moments", out.moments)
    return out.y


class BatchNorm(nn.Module):
    """Batch normalization, a drop-in replacement for ``flax.linen.BatchNorm``.

    Attributes:
      use_running_average: use ``batch_stats`` instead of the statistics of the input.
      axis: feature axis or axes (statistics are per feature, over all other axes).
      momentum: in ``[0, 1)``, the weight of the running statistics in their update.
      epsilon: finite and ``> 0``, added to the variance.
      dtype: output dtype (default: inferred from input and params).
      param_dtype: dtype of ``scale``/``bias``.
      use_bias, use_scale: learn ``bias`` (beta) / ``scale`` (gamma).
      bias_init, scale_init: initializers (zeros / ones).
      axis_name: named device axis (pmap/shard_map) over which statistics are computed exactly.
      axis_index_groups: subgroups of ``axis_name`` (as in ``lax.psum``).
      use_fast_variance: ``E[x^2] - E[x]^2`` only (flax's default; inaccurate when
        ``|mean| / std`` is large). Default ``False``: recomputed around the mean when needed.
      force_float32_reductions: statistics in at least float32 and ``batch_stats`` in float32
        (default); if ``False``, as in flax (input dtype, ``param_dtype``).
      virtual_batch_size: ghost batch normalization (Hoffer et al. 2017): in training,
        statistics per group of this many examples along axis 0 (must divide the batch size;
        not with ``axis_name``).
      unbiased_running_var: update the running variance with ``var * N / (N - 1)`` (PyTorch).

    Examples:
      In training the output is normalized with the batch statistics, and the running mean
      moves from 0 towards the batch mean by ``1 - momentum``:

      >>> import jax, jax.numpy as jnp
      >>> from jaxreg.nn import BatchNorm
      >>> x = jnp.arange(12.0).reshape(4, 3)
      >>> bn = BatchNorm(use_running_average=False, momentum=0.9)
      >>> variables = bn.init(jax.random.key(0), x)
      >>> y, updates = bn.apply(variables, x, mutable=["batch_stats"])
      >>> [round(float(v), 3) for v in y[:, 0]]
      [-1.342, -0.447, 0.447, 1.342]
      >>> [round(float(v), 3) for v in updates["batch_stats"]["mean"]]
      [0.45, 0.55, 0.65]
    """

    use_running_average: bool | None = None
    axis: int | Sequence[int] = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable[..., Array] = initializers.zeros
    scale_init: Callable[..., Array] = initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = False
    force_float32_reductions: bool = True
    virtual_batch_size: int | None = None
    unbiased_running_var: bool = False

    def __post_init__(self) -> None:
        core.check_hyperparameters(
            momentum=self.momentum, epsilon=self.epsilon,
            virtual_batch_size=self.virtual_batch_size,
            unbiased_running_var=self.unbiased_running_var, axis_name=self.axis_name,
        )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        """Normalize ``x`` (same shape out).

        Args:
          x: input.
          use_running_average: overrides the field of the same name (one of them must be set).
          mask: boolean array broadcastable to ``x``: the elements that count in the statistics
            (all elements are normalized).
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        return _batch_norm(self, x, bool(use_running_average), mask)


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): BatchNorm corrected towards the running statistics.

    In training, with batch statistics ``mu_B, sigma_B = sqrt(var_B + eps)`` and running
    statistics ``mu, sigma = sqrt(var + eps)`` (before this step's update)::

        r = stop_gradient(clip(sigma_B / sigma, 1 / r_max, r_max))
        d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
        y = scale * (x_hat * r + d) + bias

    Inference and the running-statistics update are BatchNorm's; ``r_max=1, d_max=0`` is
    :class:`BatchNorm` exactly. ``r_max`` (``>= 1``) and ``d_max`` (``>= 0``) are floats or
    schedules ``step -> value`` (e.g. ``optax.linear_schedule(1.0, 3.0, 5000)``) of the int32
    ``batch_stats/step``: the number of training calls so far (not counting ``init``).
    """

    r_max: float | Schedule = 3.0
    d_max: float | Schedule = 5.0

    def __post_init__(self) -> None:
        core.check_renorm_bounds(self.r_max, self.d_max)
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        training = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        step = self.variable("batch_stats", "step", lambda: jnp.zeros((), jnp.int32))
        y = _batch_norm(self, x, not training, mask,
                        renorm_bounds=layer.renorm_bounds(self, step.value))
        if training and not self.is_initializing():
            step.value = step.value + 1  # the schedules' clock: one tick per training call
        return y
