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
  recomputes the sums around the first mean (a ``lax.cond``, see :func:`_moments`): as fast as
  flax's fast variance on ordinary activations, as accurate as its two-pass
  ``use_fast_variance=False`` (which reads ``x`` once more, always) on the rest.
* With ``axis_name`` the statistics are exact over all devices: the per-device element counts
  and sums are ``psum``-ed in one collective (and the recomputation's sums in a second one,
  when it runs). flax averages per-device means and per-device ``E[x^2]`` (``pmean``), which
  is wrong when devices hold different numbers of valid elements (masks, uneven shards; flax
  issue 2417).
* ``virtual_batch_size`` (ghost batch normalization) and ``unbiased_running_var`` are extra.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes
from jax import lax
from jax.nn import initializers

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
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"PyTorch momentum must be in (0, 1], got momentum={momentum!r}")
    return 1.0 - momentum


def momentum_from_keras(momentum: float) -> float:
    """Keras' BatchNormalization ``momentum`` -> ours: the identity.

    Keras updates ``moving = moving * momentum + batch * (1 - momentum)``, the same convention
    as flax and jaxreg (both default to 0.99); this function only validates the value.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Keras momentum must be in [0, 1), got momentum={momentum!r}")
    return float(momentum)


def _canonicalize_axes(rank: int, axes: int | Iterable[int]) -> tuple[int, ...]:
    """Sorted, deduplicated, non-negative axes; ValueError naming ``axis`` if out of range."""
    axes_tuple = tuple(axes) if isinstance(axes, Iterable) else (axes,)
    for a in axes_tuple:
        if not -rank <= a < rank:
            raise ValueError(f"axis={axes!r} is out of range for an input of rank {rank}")
    return tuple(sorted({a % rank for a in axes_tuple}))


#: The fast sums are kept when ``E[x^2] <= _CONDITION_LIMIT * var`` for every feature (that is,
#: ``|mean| / std <= sqrt(63) ~ 8``), where the relative rounding error of ``E[x^2] - E[x]^2``
#: is at most about ``64 * float_eps`` times the summation's error growth: ~4e-6 in float32.
_CONDITION_LIMIT = 64.0


def _moments(
    x: Array,
    reduction_axes: tuple[int, ...],
    *,
    dtype: Any,
    mask: Array | None,
    axis_name: str | None,
    axis_index_groups: Any,
    use_fast_variance: bool,
) -> tuple[Array, Array, Array]:
    """Count, mean and biased variance of ``x`` over ``reduction_axes`` (kept as size-1 axes).

    First, one pass over ``x`` for the plain sums ``S1 = sum(x)``, ``S2 = sum(x^2)``::

        mean = S1 / N,    var = S2 / N - mean^2

    flax's fast variance, which cancels catastrophically when ``|mean| / std`` is large (the
    relative error is ~``float_eps * (mean / std)^2``: noise or 0 at 1e4 in float32). With
    ``use_fast_variance`` that is the result. Otherwise, if any feature has ``E[x^2] >
    _CONDITION_LIMIT * var``, the statistics are recomputed around the first mean ``c``
    (accurate to ``float_eps * |mean|``, so ``|mean - c|`` is a tiny fraction of a standard
    deviation)::

        d = sum(x - c) / N,    mean = c + d,    var = sum((x - c)^2) / N - d^2

    which is accurate at any ``|mean| / std``. The recomputation is a ``lax.cond``: well-
    conditioned batches (the usual case, e.g. activations after a linear layer) cost exactly
    flax's fast variance, and only ill-conditioned ones pay the second pass. Under ``vmap`` the
    predicate is batched and ``cond`` becomes a ``select``: both are computed, results unchanged.

    Derivatives come from a ``custom_jvp`` with the exact, well-conditioned tangents
    ``dmean = sum(dx) / N`` and ``dvar = 2 sum((x - mean) dx) / N`` whichever branch ran, so
    autodiff never differentiates through the ``cond`` (which would keep XLA from fusing the
    backward pass) and derivatives of every order are exact.

    Why not always shift? A one-pass sum around a per-feature shift ``c`` (``sum(x - c)``, with
    ``c`` from a slice of the batch) costs no extra pass, but on XLA CPU the broadcast
    subtraction inside the two reductions made them ~2x slower than plain sums, ~10% of a
    BatchNorm fwd+bwd step (``benchmarks/RESULTS.md``); a two-pass mean-then-variance costs one
    more read of ``x`` on every backend.

    ``mask`` (broadcastable to ``x``) selects the elements that count. With ``axis_name``, the
    per-device (N, S1, S2) are ``psum``-ed in one collective (and the recomputation's sums in
    another, only if it runs; all devices take the same branch since the predicate is computed
    from the summed values), so the statistics are those of all devices' elements together,
    exact for unequal counts.
    """
    x = jnp.asarray(x, dtype)
    stat_shape = tuple(1 if a in reduction_axes else d for a, d in enumerate(x.shape))
    if mask is None:
        where = None
        count = jnp.full(stat_shape, x.size // math.prod(stat_shape), dtype)
    else:
        where = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
        count = jnp.sum(where, reduction_axes, keepdims=True, dtype=dtype)

    def total(v: Array, where: Array | None) -> Array:
        return jnp.sum(v, reduction_axes, keepdims=True, where=where)

    def psum(*stats: Array) -> tuple[Array, ...]:
        """Per-feature statistics summed over devices, in one collective."""
        if axis_name is None:
            return stats
        return tuple(lax.psum(jnp.stack(stats), axis_name, axis_index_groups=axis_index_groups))

    def fast(x: Array, count: Array, where: Array | None) -> tuple[Array, ...]:
        count, s1, s2 = psum(count, total(x, where), total(lax.square(x), where))
        mean = s1 / count
        # S2/N - mean^2 can round below 0.
        return count, mean, jnp.maximum(0.0, s2 / count - lax.square(mean)), s2

    if use_fast_variance:
        return fast(x, count, where)[:3]

    @jax.custom_jvp
    def stable(x: Array, count: Array, where: Array | None) -> tuple[Array, Array, Array]:
        count, mean, var, s2 = fast(x, count, where)

        def recompute(x: Array, c: Array) -> tuple[Array, Array]:
            d1, d2 = psum(total(x - c, where), total(lax.square(x - c), where))
            d = d1 / count
            return c + d, jnp.maximum(0.0, d2 / count - lax.square(d))

        ill_conditioned = jnp.any(s2 > _CONDITION_LIMIT * count * var)
        mean, var = lax.cond(ill_conditioned, recompute, lambda x, c: (c, var), x, mean)
        return count, mean, var

    @stable.defjvp
    def stable_jvp(primals, tangents):
        x, count, where = primals
        dx = tangents[0]
        count, mean, var = stable(x, count, where)
        dmean, dvar = psum(total(dx, where), total(2 * (x - mean) * dx, where))
        return (count, mean, var), (jnp.zeros_like(count), dmean / count, dvar / count)

    return stable(x, count, where)


def _normalize(
    mdl: nn.Module,
    x: Array,
    mean: Array,
    var: Array,
    feature_axes: tuple[int, ...],
    *,
    renorm: tuple[Array, Array] | None = None,
) -> Array:
    """``scale * ((x - mean) * rsqrt(var + eps) * r + d) + bias`` with params created in ``mdl``.

    ``mean``/``var`` broadcast against ``x``; ``renorm = (r, d)`` is BatchRenorm's correction
    (``None``: plain batch norm). Operation order and output dtype follow flax's ``_normalize``.
    """
    feature_shape = [x.shape[a] if a in feature_axes else 1 for a in range(x.ndim)]
    reduced_feature_shape = [x.shape[a] for a in feature_axes]
    y = x - mean
    mul = lax.rsqrt(var + mdl.epsilon)
    if renorm is not None:
        mul = mul * renorm[0]
    args = [x]
    scale = None
    if mdl.use_scale:
        scale = mdl.param("scale", mdl.scale_init, reduced_feature_shape, mdl.param_dtype)
        scale = scale.reshape(feature_shape)
        if not mdl.force_float32_reductions:
            scale = jnp.asarray(scale, mdl.param_dtype)
        mul *= scale
        args.append(scale)
    y *= mul
    if renorm is not None:
        y += renorm[1] if scale is None else renorm[1] * scale
    if mdl.use_bias:
        bias = mdl.param("bias", mdl.bias_init, reduced_feature_shape, mdl.param_dtype)
        bias = bias.reshape(feature_shape)
        if not mdl.force_float32_reductions:
            bias = jnp.asarray(bias, mdl.param_dtype)
        y += bias
        args.append(bias)
    return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=mdl.dtype))


RenormFn = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


def _batch_norm(
    mdl: BatchNorm,
    x: Array,
    use_running_average: bool | None,
    mask: Array | None,
    renorm_fn: RenormFn | None = None,
) -> Array:
    """Shared body of :class:`BatchNorm` and :class:`BatchRenorm` (see their docstrings).

    ``renorm_fn(mean, var, running_mean, running_var) -> (r, d)`` is called in training mode
    with the batch statistics and the running statistics *before* this step's update.
    """
    use_running_average = nn.merge_param(
        "use_running_average", mdl.use_running_average, use_running_average
    )
    feature_axes = _canonicalize_axes(x.ndim, mdl.axis)
    reduction_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    stats_dtype = jnp.float32 if mdl.force_float32_reductions else mdl.param_dtype
    ra_mean = mdl.variable("batch_stats", "mean", jnp.zeros, feature_shape, stats_dtype)
    ra_var = mdl.variable("batch_stats", "var", jnp.ones, feature_shape, stats_dtype)
    broadcast_shape = [x.shape[a] if a in feature_axes else 1 for a in range(x.ndim)]

    if use_running_average:
        mean, var = (jnp.reshape(v.value, broadcast_shape) for v in (ra_mean, ra_var))
        if not mdl.force_float32_reductions:
            mean, var = jnp.asarray(mean, mdl.param_dtype), jnp.asarray(var, mdl.param_dtype)
        return _normalize(mdl, x, mean, var, feature_axes)

    # Ghost batches: view the leading axis as (groups, virtual_batch_size); statistics per group.
    vbs = mdl.virtual_batch_size
    if vbs is not None:
        if 0 in feature_axes:
            raise ValueError(
                f"virtual_batch_size={vbs} splits axis 0, which must not be a feature axis "
                f"(axis={mdl.axis!r})"
            )
        if x.shape[0] % vbs:
            raise ValueError(
                f"virtual_batch_size={vbs} does not divide the batch size {x.shape[0]}"
            )
        if mdl.axis_name is not None:
            raise ValueError(
                f"virtual_batch_size={vbs} cannot be combined with axis_name={mdl.axis_name!r}: "
                "ghost batches are local sub-batches"
            )
        groups = (x.shape[0] // vbs, vbs)
        xs = x.reshape(groups + x.shape[1:])
        if mask is not None:
            mask = jnp.broadcast_to(mask, x.shape).reshape(xs.shape)
        feature_axes = tuple(a + 1 for a in feature_axes)
        reduction_axes = tuple(a + 1 for a in reduction_axes)
        broadcast_shape = [1, *broadcast_shape]
    else:
        xs = x

    running_mean = ra_mean.value.reshape(broadcast_shape)
    stats_compute_dtype = jnp.result_type(x) if mdl.dtype is None else mdl.dtype
    if mdl.force_float32_reductions:
        stats_compute_dtype = jnp.promote_types(stats_compute_dtype, jnp.float32)
    count, mean, var = _moments(
        xs,
        reduction_axes,
        dtype=stats_compute_dtype,
        mask=mask,
        axis_name=None if mdl.is_initializing() else mdl.axis_name,
        axis_index_groups=mdl.axis_index_groups,
        use_fast_variance=mdl.use_fast_variance,
    )
    renorm = None
    if renorm_fn is not None:
        renorm = renorm_fn(mean, var, running_mean, ra_var.value.reshape(broadcast_shape))

    if not mdl.is_initializing():
        running_var = var * count / (count - 1) if mdl.unbiased_running_var else var
        # Ghost batches: the running statistics move towards the mean of the group statistics.
        batch_mean, batch_var = (
            jnp.reshape(v.mean(0) if vbs is not None else v, feature_shape)
            for v in (mean, running_var)
        )
        ra_mean.value = mdl.momentum * ra_mean.value + (1 - mdl.momentum) * batch_mean
        ra_var.value = mdl.momentum * ra_var.value + (1 - mdl.momentum) * batch_var

    if not mdl.is_initializing() and mdl.is_mutable_collection(BATCH_MOMENTS):
        _sow_moments(mdl, count, mean, var, feature_shape, grouped=vbs is not None)

    y = _normalize(mdl, xs, mean, var, feature_axes, renorm=renorm)
    return y.reshape(x.shape)


def _sow_moments(
    mdl: nn.Module, count: Array, mean: Array, var: Array, feature_shape: tuple[int, ...],
    grouped: bool,
) -> None:
    """Sow the whole-batch (count, mean, M2 = count * var) for exact pooling across batches.

    Ghost-batch group moments are first pooled exactly (Chan et al.'s parallel formula).
    ``ddof`` is 1 for layers keeping an unbiased running variance, else 0.
    """
    m2 = count * var
    if grouped:
        total = count.sum(0)
        pooled_mean = (count * mean).sum(0) / total
        m2 = (m2 + count * lax.square(mean - pooled_mean)).sum(0)
        count, mean = total, pooled_mean
    mdl.sow(
        BATCH_MOMENTS,
        "moments",
        {
            "count": count.reshape(feature_shape),
            "mean": mean.reshape(feature_shape),
            "m2": m2.reshape(feature_shape),
            "ddof": jnp.asarray(1.0 if mdl.unbiased_running_var else 0.0),
        },
    )


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
      epsilon: ``> 0``, added to the variance.
      dtype: output dtype (default: inferred from input and params).
      param_dtype: dtype of ``scale``/``bias``.
      use_bias, use_scale: learn ``bias`` (beta) / ``scale`` (gamma).
      bias_init, scale_init: initializers (zeros / ones).
      axis_name: named device axis (pmap/shard_map) over which statistics are computed exactly.
      axis_index_groups: subgroups of ``axis_name`` (as in ``lax.psum``).
      use_fast_variance: ``E[x^2] - E[x]^2`` (flax's default; inaccurate when ``|mean| / std``
        is large). Default ``False``: the same sums, recomputed around the mean for the batches
        where that formula would lose digits (as fast on ordinary activations, accurate).
      force_float32_reductions: statistics in at least float32 and ``batch_stats`` in float32
        (default); if ``False``, statistics in the input dtype and ``batch_stats`` in
        ``param_dtype``, as in flax.
      virtual_batch_size: ghost batch normalization (Hoffer et al. 2017): in training, split the
        leading axis into groups of this size and normalize each with its own statistics; the
        running statistics move towards the mean over groups of the group statistics. Must
        divide the batch size; not combinable with ``axis_name``.
      unbiased_running_var: update the running variance with ``var * N / (N - 1)`` (PyTorch).
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
        if isinstance(self.momentum, numbers.Real) and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got momentum={self.momentum!r}")
        if isinstance(self.epsilon, numbers.Real) and not self.epsilon > 0.0:
            raise ValueError(f"epsilon must be > 0, got epsilon={self.epsilon!r}")
        vbs = self.virtual_batch_size
        if vbs is not None and not (isinstance(vbs, numbers.Integral) and vbs > 0):
            raise ValueError(
                f"virtual_batch_size must be a positive int or None, got virtual_batch_size={vbs!r}"
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

        def renorm(mean: Array, var: Array, ra_mean: Array, ra_var: Array) -> tuple[Array, Array]:
            r_max = self.r_max(step.value) if callable(self.r_max) else self.r_max
            d_max = self.d_max(step.value) if callable(self.d_max) else self.d_max
            sigma = jnp.sqrt(ra_var + self.epsilon)
            r = jnp.clip(jnp.sqrt(var + self.epsilon) / sigma, 1.0 / r_max, r_max)
            d = jnp.clip((mean - ra_mean) / sigma, -d_max, d_max)
            if not self.is_initializing():
                step.value = step.value + 1
            return lax.stop_gradient(r), lax.stop_gradient(d)

        return _batch_norm(self, x, use_running_average, mask, renorm_fn=renorm)
