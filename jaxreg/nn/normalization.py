"""Batch normalization family: :class:`BatchNorm`, :class:`BatchRenorm`, ghost batches.

Maths (per feature, over the reduction axes of one batch of ``N`` valid elements)::

    mu    = (1/N) sum_i x_i
    var   = (1/N) sum_i (x_i - mu)^2                 # biased, used to normalize
    x_hat = (x - mu) / sqrt(var + epsilon)
    y     = scale * x_hat + bias                     # gamma, beta

Running statistics (``batch_stats/mean``, ``batch_stats/var``) are exponential moving averages,
updated in training mode and used in place of ``mu``/``var`` at inference
(``use_running_average=True``)::

    running = momentum * running + (1 - momentum) * batch

This is flax's (and Keras') convention. The textbook/PyTorch form
``running = (1 - alpha) * running + alpha * batch`` has ``alpha = 1 - momentum``.

==================  ===================================  ==========  ==================  =========
framework           update of the running statistics     default     running var         eps
==================  ===================================  ==========  ==================  =========
jaxreg / flax       m * running + (1 - m) * batch        m = 0.99    biased (1/N)        1e-5
Keras               m * running + (1 - m) * batch        m = 0.99    biased (1/N)        1e-3
PyTorch             (1 - a) * running + a * batch        a = 0.1     unbiased (1/(N-1))  1e-5
==================  ===================================  ==========  ==================  =========

:func:`momentum_from_torch` (``m = 1 - a``) and :func:`momentum_from_keras` (identity) convert;
``unbiased_running_var=True`` multiplies the batch variance by ``N / (N - 1)`` in the running
update only (normalization always uses the biased variance), as PyTorch does.

Differences from ``flax.linen.BatchNorm`` (same fields, call signature, variable names, shapes
and dtypes, so checkpoints load unchanged):

* ``use_fast_variance`` defaults to ``False``: the statistics are accurate at any
  ``|mean| / std``. flax's default ``E[x^2] - E[x]^2`` (kept as ``use_fast_variance=True``)
  cancels catastrophically when ``|mean| / std`` is large (at 1e4 in float32 it returns noise
  or 0). Ours takes the same one pass of plain sums, checks per feature whether ``E[x^2] >
  64 var`` (``|mean| / std`` above ~8, where that formula starts to lose digits) and only then
  recomputes the sums around the first mean (a ``lax.cond``, see
  :func:`jaxreg.nn.functional.moments`): one pass, like flax's fast variance, on ordinary
  activations; as accurate as its two-pass ``use_fast_variance=False`` (which reads ``x``
  once more, always) on the rest.
* With ``axis_name`` the statistics are exact over all devices: the per-device element counts
  and sums are ``psum``-ed in one collective (and the recomputation's sums in a second one,
  when it runs). flax averages per-device means and per-device ``E[x^2]`` (``pmean``), which
  is wrong when devices hold different numbers of valid elements (masks, uneven shards; flax
  issue 2417).
* ``virtual_batch_size`` (ghost batch normalization) and ``unbiased_running_var`` are extra.
* A batch (or ghost batch, or feature) with too few valid elements for its statistics (an
  all-False mask; one element with ``unbiased_running_var``) leaves the running statistics
  unchanged instead of making them NaN; shapes without statistics (an empty batch, ``axis``
  covering every dimension) raise at trace time.

Complex inputs follow flax: ``mean`` complex, ``var = E|x - mean|^2`` real (also in the stable
recomputation); the running mean becomes complex, the running variance stays real.

All the maths is in :mod:`jaxreg.nn.functional`, shared with :mod:`jaxreg.nnx`; this module
only creates and stores the linen variables.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes
from jax.nn import initializers

from jaxreg._validate import require
from jaxreg.nn import functional as F

Array = jax.Array
Schedule = Callable[[Array], Any]

#: Collection into which BatchNorm layers ``sow`` their whole-batch moments (count, mean, M2)
#: when, and only when, it is passed as mutable; read by :func:`jaxreg.nn.recalibrate_batch_stats`.
BATCH_MOMENTS = "batch_moments"


def momentum_from_torch(momentum: float) -> float:
    """PyTorch's BatchNorm ``momentum`` (weight of the *new* batch, default 0.1) -> ours.

    PyTorch updates ``running = (1 - a) * running + a * batch``; ours is
    ``running = m * running + (1 - m) * batch``, so ``m = 1 - a`` (``0.1 -> 0.9``). For the
    full PyTorch behaviour also set ``unbiased_running_var=True``.
    """
    require(0.0 < momentum <= 1.0, "momentum", "a PyTorch momentum in (0, 1]", momentum)
    return 1.0 - momentum


def momentum_from_keras(momentum: float) -> float:
    """Keras' BatchNormalization ``momentum`` -> ours: the identity.

    Keras updates ``moving = moving * momentum + batch * (1 - momentum)``, the same convention
    as flax and jaxreg (both default to 0.99); this function only validates the value.
    """
    require(0.0 <= momentum < 1.0, "momentum", "a Keras momentum in [0, 1)", momentum)
    return float(momentum)


def _batch_norm(
    mdl: BatchNorm,
    x: Array,
    use_running_average: bool | None,
    mask: Array | None,
    renorm_bounds: tuple[Any, Any] | None = None,
) -> Array:
    """Shared body of :class:`BatchNorm` and :class:`BatchRenorm`: variables around the core.

    Creates/reads the variables, calls :func:`jaxreg.nn.functional.batch_norm` and stores the
    new running statistics (not at initialization, where flax's modules leave them as created,
    and where there is no device axis to reduce over).
    """
    use_running_average = nn.merge_param(
        "use_running_average", mdl.use_running_average, use_running_average
    )
    feature_axes = F.canonicalize_axes(x.ndim, mdl.axis)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    f32 = mdl.force_float32_reductions
    ra_mean = mdl.variable("batch_stats", "mean", jnp.zeros, feature_shape,
                           jnp.float32 if f32 else mdl.param_dtype)
    ra_var = mdl.variable("batch_stats", "var", jnp.ones, feature_shape,
                          jnp.float32 if f32 else mdl.param_dtype)
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
    out = F.batch_norm(
        x, scale, bias, running_mean, running_var,
        axis=feature_axes,
        use_running_average=bool(use_running_average),
        momentum=mdl.momentum,
        epsilon=mdl.epsilon,
        stats_dtype=stats_dtype,
        mask=mask,
        axis_name=None if initializing else mdl.axis_name,
        axis_index_groups=mdl.axis_index_groups,
        use_fast_variance=mdl.use_fast_variance,
        virtual_batch_size=mdl.virtual_batch_size,
        unbiased_running_var=mdl.unbiased_running_var,
        renorm_bounds=renorm_bounds,
        update_stats=not initializing,
    )
    if not use_running_average and not initializing:
        ra_mean.value, ra_var.value = out.mean, out.var
        if mdl.is_mutable_collection(BATCH_MOMENTS):
            ddof = jnp.asarray(1.0 if mdl.unbiased_running_var else 0.0)
            mdl.sow(BATCH_MOMENTS, "moments", {**(out.moments or {}), "ddof": ddof})
    args = [a for a in (x, scale, bias) if a is not None]
    return jnp.asarray(out.y, dtypes.canonicalize_dtype(*args, dtype=mdl.dtype))


class BatchNorm(nn.Module):
    """Batch normalization, a drop-in replacement for ``flax.linen.BatchNorm``.

    Same fields, call signature and variables (``params/scale``, ``params/bias``,
    ``batch_stats/mean``, ``batch_stats/var``) as flax 0.12; see the module docstring for the
    maths, the momentum convention and what differs (stable variance by default, exact
    cross-device statistics).

    Attributes:
      use_running_average: use ``batch_stats`` instead of the statistics of the input.
      axis: feature axis or axes (statistics are per feature, over all other axes).
      momentum: in ``[0, 1)``; ``running = momentum * running + (1 - momentum) * batch``.
      epsilon: finite and ``> 0``, added to the variance.
      dtype: output dtype (default: inferred from input and params).
      param_dtype: dtype of ``scale``/``bias``.
      use_bias, use_scale: learn ``bias`` (beta) / ``scale`` (gamma).
      bias_init, scale_init: initializers (zeros / ones).
      axis_name: named device axis (pmap/shard_map) over which statistics are computed exactly.
      axis_index_groups: subgroups of ``axis_name`` (as in ``lax.psum``).
      use_fast_variance: ``E[x^2] - E[x]^2`` (flax's default; inaccurate when ``|mean| / std``
        is large). Default ``False``: the same sums, recomputed around the mean for the batches
        where that formula would lose digits (one pass on ordinary activations, accurate).
      force_float32_reductions: statistics in at least float32 and ``batch_stats`` in float32
        (default); if ``False``, statistics in the input dtype and ``batch_stats`` in
        ``param_dtype``, as in flax.
      virtual_batch_size: ghost batch normalization (Hoffer et al. 2017): in training, split the
        leading axis into groups of this size and normalize each with its own statistics; the
        running statistics move towards the mean over groups of the group statistics. Must
        divide the batch size; not combinable with ``axis_name``.
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
        F.check_hyperparameters(
            momentum=self.momentum, epsilon=self.epsilon,
            virtual_batch_size=self.virtual_batch_size,
            unbiased_running_var=self.unbiased_running_var,
            r_max=getattr(self, "r_max", None), d_max=getattr(self, "d_max", None),
            axis_name=self.axis_name,
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
        return _batch_norm(self, x, use_running_average, mask)


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): BatchNorm corrected towards the running statistics.

    In training, with batch statistics ``mu_B, sigma_B = sqrt(var_B + eps)`` and running
    statistics ``mu, sigma = sqrt(var + eps)`` (before this step's update)::

        r = stop_gradient(clip(sigma_B / sigma, 1 / r_max, r_max))
        d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
        y = scale * (x_hat * r + d) + bias

    Inference and the running-statistics update are BatchNorm's. With ``r_max=1, d_max=0`` it
    equals :class:`BatchNorm` exactly (outputs, gradients, running statistics).

    ``r_max``/``d_max`` are floats or schedules ``step -> value`` (e.g.
    ``optax.linear_schedule(1.0, 3.0, 5000)``) of the number of training steps taken so far,
    kept as int32 ``batch_stats/step`` (incremented per training call, not at init).
    """

    r_max: float | Schedule = 3.0
    d_max: float | Schedule = 5.0

    @nn.compact
    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        step = self.variable("batch_stats", "step", lambda: jnp.zeros((), jnp.int32))
        r_max = self.r_max(step.value) if callable(self.r_max) else self.r_max
        d_max = self.d_max(step.value) if callable(self.d_max) else self.d_max
        y = _batch_norm(self, x, use_running_average, mask, renorm_bounds=(r_max, d_max))
        training = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if training and not self.is_initializing():
            step.value = step.value + 1  # the schedules' clock: one tick per training call
        return y
