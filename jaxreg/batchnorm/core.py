"""The batch normalization maths as pure functions of arrays: the one core of both front ends.

``jaxreg.batchnorm.linen`` and ``jaxreg.batchnorm.nnx`` only create and store variables;
every number comes from here (public name: :mod:`jaxreg.nn.functional`). Nothing in this
module knows about flax modules. Per feature, over the reduction axes of a batch of ``N``
valid elements::

    mean  = (1/N) sum_i x_i
    var   = (1/N) sum_i |x_i - mean|^2                  # biased; real for complex x
    y     = scale * (x - mean) / sqrt(var + epsilon) + bias
    running <- momentum * running + (1 - momentum) * batch

(the momentum convention, PyTorch's and Keras': ``docs/conventions.md``). Entry points:
:func:`batch_norm` (statistics, normalization, new running statistics in one call), its pieces
and :func:`check_hyperparameters`, :func:`check_renorm_bounds` (the constructors' checks),
:func:`momentum_from_torch`, :func:`momentum_from_keras`.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxreg._validate import message, require

Array = jax.Array

#: The fast sums are kept when ``E[|x|^2] <= CONDITION_LIMIT * var`` for every feature (that is,
#: ``|mean| / std <= sqrt(63) ~ 8``), where the relative rounding error of ``E[x^2] - E[x]^2``
#: is at most about ``64 * float_eps`` times the summation's error growth: ~4e-6 in float32.
CONDITION_LIMIT = 64.0


# --- validation ------------------------------------------------------------------------------


def _concrete(name: str, value: Any) -> float | None:
    """``value`` as a Python float, or None when it is traced (checked at run time by nobody).

    Arrays are accepted (flax allows them) but must be scalars; their values are checked like
    floats, so ``momentum=jnp.array(1.5)`` is rejected as ``momentum=1.5`` is.
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real | np.ndarray | jax.Array):
        raise TypeError(message(name, "a real number", value))
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "fiu":
        raise TypeError(message(name, "a real scalar", value))
    return float(array)


def check_hyperparameters(
    *,
    momentum: Any,
    epsilon: Any,
    virtual_batch_size: Any = None,
    unbiased_running_var: bool = False,
    axis_name: Any = None,
) -> None:
    """Raise a ValueError/TypeError naming the argument for any invalid hyperparameter.

    ``momentum`` in ``[0, 1)``; ``epsilon`` finite and ``> 0`` (``inf`` would map every output
    to 0); ``virtual_batch_size`` a positive int (not a bool), and ``> 1`` with
    ``unbiased_running_var`` (the ``N / (N - 1)`` correction of one element is ``1 / 0``);
    not combined with ``axis_name``. Traced values are not checked.
    """
    m = _concrete("momentum", momentum)
    require(m is None or 0.0 <= m < 1.0, "momentum", "in [0, 1)", m)
    e = _concrete("epsilon", epsilon)
    require(e is None or 0.0 < e < math.inf, "epsilon", "finite and > 0", e)
    vbs = virtual_batch_size
    if vbs is not None:
        require(not isinstance(vbs, bool) and isinstance(vbs, numbers.Integral) and int(vbs) >= 1,
                "virtual_batch_size", "a positive int or None", vbs)
        require(axis_name is None, "virtual_batch_size",
                f"None with axis_name={axis_name!r} (ghost batches are local sub-batches)", vbs)
        require(not (unbiased_running_var and vbs == 1), "virtual_batch_size",
                "> 1 with unbiased_running_var=True (the unbiased variance of one element is "
                "N / (N - 1) = 1 / 0)", vbs)


def check_renorm_bounds(r_max: Any, d_max: Any) -> None:
    """BatchRenorm's ``r_max >= 1`` (``[1 / r_max, r_max]`` is otherwise empty) and
    ``d_max >= 0``, unless they are schedules (callables, evaluated per step) or traced."""
    if not callable(r_max):
        r = _concrete("r_max", r_max)
        # ``not r >= 1`` also rejects NaN
        require(r is None or r >= 1.0, "r_max", ">= 1 (r is clipped to [1/r_max, r_max])", r)
    if not callable(d_max):
        d = _concrete("d_max", d_max)
        require(d is None or d >= 0.0, "d_max", ">= 0 (d is clipped to [-d_max, d_max])", d)


def momentum_from_torch(momentum: float) -> float:
    """PyTorch's BatchNorm ``momentum`` ``a`` (the weight of the batch) -> ours: ``1 - a``.

    ``0.1 -> 0.9``; for PyTorch's running variance also set ``unbiased_running_var=True``
    (the conventions: ``docs/conventions.md``).
    """
    require(0.0 < momentum <= 1.0, "momentum", "a PyTorch momentum in (0, 1]", momentum)
    return 1.0 - momentum


def momentum_from_keras(momentum: float) -> float:
    """Keras' BatchNormalization ``momentum`` -> ours: the identity (the same convention,
    ``docs/conventions.md``); it only validates the value."""
    require(0.0 <= momentum < 1.0, "momentum", "a Keras momentum in [0, 1)", momentum)
    return float(momentum)


def canonicalize_axes(rank: int, axes: int | Iterable[int]) -> tuple[int, ...]:
    """Sorted, deduplicated, non-negative feature axes.

    Raises:
      ValueError: naming ``axis`` if an axis is out of range, or if the axes cover every
        dimension (nothing left to reduce: every element would be its own mean, output 0).
    """
    axes_tuple = tuple(axes) if isinstance(axes, Iterable) else (axes,)
    for a in axes_tuple:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral) or not -rank <= a < rank:
            raise ValueError(f"axis={axes!r} is out of range for an input of rank {rank}")
    feature_axes = tuple(sorted({a % rank for a in axes_tuple}))
    if len(feature_axes) == rank:
        raise ValueError(
            f"axis={axes!r} covers every dimension of an input of rank {rank}: no axis is left "
            "to compute batch statistics over"
        )
    return feature_axes


# --- statistics ------------------------------------------------------------------------------


def abs_sq(x: Array) -> Array:
    """``|x|^2`` elementwise, real for complex ``x`` (flax's ``_abs_sq``)."""
    if jnp.iscomplexobj(x):
        return lax.square(lax.real(x)) + lax.square(lax.imag(x))
    return lax.square(x)


def _group_size(axis_name: Any, axis_index_groups: Any) -> int:
    """The number of devices a collective over ``axis_name`` (and its groups) reduces over."""
    return len(axis_index_groups[0]) if axis_index_groups else lax.axis_size(axis_name)


def _psum(stats: tuple[Array, ...], axis_name: Any, axis_index_groups: Any) -> tuple[Array, ...]:
    """Per-feature statistics summed over devices in ONE collective.

    They are stacked into one array (complex ones as their real and imaginary parts).
    """
    if axis_name is None:
        return stats
    parts = []
    for s in stats:
        parts += [lax.real(s), lax.imag(s)] if jnp.iscomplexobj(s) else [s]
    stacked = jnp.stack([p.astype(jnp.result_type(*parts)) for p in parts])
    summed = iter(lax.psum(stacked, axis_name, axis_index_groups=axis_index_groups))
    return tuple(
        lax.complex(next(summed), next(summed)) if jnp.iscomplexobj(s)
        else next(summed).astype(s.dtype)
        for s in stats
    )


def moments(
    x: Array,
    reduction_axes: tuple[int, ...],
    *,
    mask: Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
) -> tuple[Array, Array, Array]:
    """Count, mean and biased variance of ``x`` over ``reduction_axes`` (kept as size-1 axes).

    Computed in ``x``'s dtype (cast it first). First, one pass for the means of ``x`` and
    ``|x|^2``::

        mean = E[x],    var = E[|x|^2] - |mean|^2

    flax's fast variance, which cancels catastrophically when ``|mean| / std`` is large (the
    relative error is ~``float_eps * (mean / std)^2``: noise or 0 at 1e4 in float32). With
    ``use_fast_variance`` that is the result. Otherwise, if any feature has ``E[|x|^2] >
    CONDITION_LIMIT * var``, the statistics are recomputed around the first mean ``c``
    (accurate to ``float_eps * |mean|``, so ``|mean - c|`` is a tiny fraction of a standard
    deviation)::

        d = E[x - c],    mean = c + d,    var = E[|x - c|^2] - |d|^2

    which is accurate at any ``|mean| / std``. The recomputation is a ``lax.cond``: well-
    conditioned batches (the usual case) cost exactly flax's fast variance and only ill-
    conditioned ones pay the second pass. Under ``vmap`` the predicate is batched and ``cond``
    becomes a ``select``: both are computed, results unchanged.

    Derivatives come from a ``custom_jvp`` with the exact, well-conditioned tangents
    ``dmean = E[dx]`` and ``dvar = 2 E[Re(conj(x - mean) dx)]`` whichever branch ran, so
    autodiff never differentiates through the ``cond`` (which would keep XLA from fusing the
    backward pass) and derivatives of every order are exact.

    The expectations: without ``mask``, ``jnp.mean`` over the axes as flax computes them (bit
    for bit), averaged over ``axis_name`` with one ``pmean``: every device holds the same
    number of elements, so the mean of the device means is the mean over all elements. With
    ``mask`` (broadcastable to ``x``: the elements that count), the per-device element counts
    and sums are ``psum``-ed together in one collective, so the statistics are exact for
    unequal counts (flax's ``pmean`` of masked means is not; flax issue 2417). All devices take
    the same ``cond`` branch since the predicate is computed from reduced values.

    Returns:
      ``(count, mean, var)`` with ``x.ndim`` axes; ``count`` and ``var`` real, ``mean`` of
      ``x``'s dtype. A feature without valid elements has ``count = 0`` and NaN statistics.

    Raises:
      ValueError: if the reduction axes hold no element (an empty batch).
    """
    stat_shape = tuple(1 if a in reduction_axes else d for a, d in enumerate(x.shape))
    real_dtype = jnp.finfo(x.dtype).dtype
    local_n = math.prod(x.shape[a] for a in reduction_axes)
    if local_n == 0:
        raise ValueError(
            f"moments: an input of shape {x.shape} has no element along the reduction axes "
            f"{reduction_axes}: batch statistics of an empty batch are undefined"
        )
    where = None if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)

    def expectations(
        where: Array | None, *values: Array, count: Array | None = None
    ) -> tuple[Array, ...]:
        """The global count and the means of ``values`` (over the axes, devices and mask).

        A known ``count`` is reused: the tangents' sums must not share a collective with it
        (the count would become linear in the tangents, and dividing by it not transposable).
        """
        if where is None:
            means = tuple(jnp.mean(v, reduction_axes, keepdims=True) for v in values)
            n = local_n
            if axis_name is not None:  # pmean with a static divisor (a traced one is not linear)
                devices = _group_size(axis_name, axis_index_groups)
                n *= devices
                means = tuple(m / devices for m in _psum(means, axis_name, axis_index_groups))
            return (jnp.full(stat_shape, n, real_dtype), *means)
        sums = tuple(jnp.sum(v, reduction_axes, keepdims=True, where=where) for v in values)
        if count is None:
            count = jnp.sum(where, reduction_axes, keepdims=True, dtype=real_dtype)
            count, *summed = _psum((count, *sums), axis_name, axis_index_groups)
            sums = tuple(summed)
        else:
            sums = _psum(sums, axis_name, axis_index_groups)
        return (count, *(s / count for s in sums))

    def fast(x: Array, where: Array | None) -> tuple[Array, Array, Array, Array]:
        count, mean, mean_sq = expectations(where, x, abs_sq(x))
        # E|x|^2 - |mean|^2 can round below 0.
        return count, mean, jnp.maximum(0.0, mean_sq - abs_sq(mean)), mean_sq

    if use_fast_variance:
        return fast(x, where)[:3]

    # `where` is an argument, not a closure: custom_jvp must see it when vmapped or traced.
    @jax.custom_jvp
    def stable(x: Array, where: Array | None) -> tuple[Array, Array, Array]:
        count, mean, var, mean_sq = fast(x, where)

        def recompute(x: Array, c: Array) -> tuple[Array, Array]:
            _, d, d_sq = expectations(where, x - c, abs_sq(x - c), count=count)
            return c + d, jnp.maximum(0.0, d_sq - abs_sq(d))

        ill_conditioned = jnp.any(mean_sq > CONDITION_LIMIT * var)
        mean, var = lax.cond(ill_conditioned, recompute, lambda x, c: (c, var), x, mean)
        return count, mean, var

    @stable.defjvp
    def stable_jvp(primals, tangents):
        (x, where), dx = primals, tangents[0]
        count, mean, var = stable(x, where)
        _, dmean, dvar = expectations(where, dx, 2 * jnp.real(jnp.conj(x - mean) * dx),
                                      count=count)
        return (count, mean, var), (jnp.zeros_like(count), dmean, dvar)

    return stable(x, where)


# --- ghost batches ---------------------------------------------------------------------------


def ghost_batches(
    x: Array, mask: Array | None, virtual_batch_size: int, feature_axes: tuple[int, ...]
) -> tuple[Array, Array | None, tuple[int, ...]]:
    """The view of ghost batch normalization: axis 0 split into ``(groups, virtual_batch_size)``.

    Statistics over the view's reduction axes (all but axis 0 and the feature axes) are then
    per group of ``virtual_batch_size`` consecutive examples. Returns the view of ``x``, of the
    mask (broadcast to ``x`` first) and the feature axes in the view (shifted by one).
    """
    if 0 in feature_axes:
        raise ValueError(
            f"virtual_batch_size={virtual_batch_size} splits axis 0, which must not be a "
            f"feature axis (feature axes {feature_axes})"
        )
    if x.shape[0] % virtual_batch_size:
        raise ValueError(
            f"virtual_batch_size={virtual_batch_size} does not divide the batch size "
            f"{x.shape[0]}"
        )
    view = (x.shape[0] // virtual_batch_size, virtual_batch_size, *x.shape[1:])
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape).reshape(view)
    return x.reshape(view), mask, tuple(a + 1 for a in feature_axes)


# --- normalization ---------------------------------------------------------------------------


def normalize(
    x: Array,
    mean: Array,
    var: Array,
    scale: Array | None,
    bias: Array | None,
    *,
    epsilon: Any,
    renorm: tuple[Array, Array] | None = None,
) -> Array:
    """``scale * ((x - mean) * rsqrt(var + epsilon) * r + d) + bias`` in flax's operation order.

    ``mean``/``var``/``scale``/``bias`` broadcast against ``x`` (``scale``/``bias`` may be
    None: absent). ``renorm = (r, d)`` is BatchRenorm's correction (None: plain batch norm).
    The result has the promoted dtype of the operands; the front ends cast it.
    """
    y = x - mean
    mul = lax.rsqrt(var + epsilon)
    if renorm is not None:
        mul = mul * renorm[0]
    if scale is not None:
        mul *= scale
    y *= mul
    if renorm is not None:
        y += renorm[1] if scale is None else renorm[1] * scale
    if bias is not None:
        y += bias
    return y


def renorm_correction(
    mean: Array, var: Array, running_mean: Array, running_var: Array, *,
    epsilon: Any, r_max: Any, d_max: Any,
) -> tuple[Array, Array]:
    """Batch renormalization's ``(r, d)`` (Ioffe 2017), constants for autodiff::

        r = clip(sqrt(var + eps) / sqrt(running_var + eps), 1 / r_max, r_max)
        d = clip((mean - running_mean) / sqrt(running_var + eps), -d_max, d_max)
    """
    sigma = jnp.sqrt(running_var + epsilon)
    r = jnp.clip(jnp.sqrt(var + epsilon) / sigma, 1.0 / r_max, r_max)
    d = jnp.clip((mean - running_mean) / sigma, -d_max, d_max)
    return lax.stop_gradient(r), lax.stop_gradient(d)


# --- running statistics ----------------------------------------------------------------------


def update_running_stats(
    running_mean: Array, running_var: Array, count: Array, mean: Array, var: Array, *,
    momentum: Any, unbiased: bool = False, grouped: bool = False,
) -> tuple[Array, Array]:
    """``momentum * running + (1 - momentum) * batch`` for the mean and the variance.

    ``count``/``mean``/``var`` come from :func:`moments` (any shape reshaping to the running
    statistics' shape, with a leading group axis when ``grouped``). ``unbiased`` uses
    ``var * N / (N - 1)`` (PyTorch's running variance). Ghost batches (``grouped``): the batch
    value is the average over groups of the group statistics. Groups or features with too few
    valid elements (``N <= 1`` unbiased, ``N = 0`` otherwise: an all-False mask) are left out;
    a feature with none left keeps its running statistics unchanged instead of becoming NaN.
    """
    ddof = 1 if unbiased else 0
    valid = count > ddof
    batch_var = var * count / (count - ddof) if unbiased else var
    # Invalid entries are NaN or inf; select them away (not multiplied by 0, which keeps NaN).
    mean, batch_var = jnp.where(valid, mean, 0), jnp.where(valid, batch_var, 0)
    if grouped:
        groups = jnp.sum(valid, 0)
        mean, batch_var, valid = mean.sum(0) / groups, batch_var.sum(0) / groups, groups > 0
    shape = running_mean.shape
    mean, batch_var, valid = (jnp.reshape(v, shape) for v in (mean, batch_var, valid))
    new_mean = momentum * running_mean + (1 - momentum) * mean
    new_var = momentum * running_var + (1 - momentum) * batch_var
    return jnp.where(valid, new_mean, running_mean), jnp.where(valid, new_var, running_var)


def pooled_moments(
    count: Array, mean: Array, var: Array, feature_shape: tuple[int, ...], *, grouped: bool
) -> dict[str, Array]:
    """Whole-batch ``(count, mean, M2 = count * var)`` per feature, for exact pooling.

    Ghost-batch group moments (leading group axis, ``grouped``) are first pooled exactly with
    Chan et al.'s parallel formula ``M2 = sum_g M2_g + sum_g N_g |mean_g - mean|^2``.
    """
    m2 = count * var
    if grouped:
        total = count.sum(0)
        pooled_mean = (count * mean).sum(0) / total
        m2 = (m2 + count * abs_sq(mean - pooled_mean)).sum(0)
        count, mean = total, pooled_mean
    return {k: v.reshape(feature_shape) for k, v in (("count", count), ("mean", mean),
                                                      ("m2", m2))}


# --- one call --------------------------------------------------------------------------------


class BatchNormOutput(NamedTuple):
    """What :func:`batch_norm` returns.

    Attributes:
      y: the normalized input, ``x``'s shape, in the operands' promoted dtype.
      mean, var: the new running statistics (the old ones in inference mode or when
        ``update_stats`` is False).
      moments: the whole-batch ``{"count", "mean", "m2"}`` (:func:`pooled_moments`) in
        training mode, else None.
    """

    y: Array
    mean: Array
    var: Array
    moments: dict[str, Array] | None


def batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    running_mean: Array,
    running_var: Array,
    *,
    axis: int | Iterable[int] = -1,
    use_running_average: bool,
    momentum: Any = 0.99,
    epsilon: Any = 1e-5,
    stats_dtype: Any = None,
    mask: Array | None = None,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = False,
    virtual_batch_size: int | None = None,
    unbiased_running_var: bool = False,
    renorm_bounds: tuple[Any, Any] | None = None,
    update_stats: bool = True,
) -> BatchNormOutput:
    """Batch normalization of ``x`` with feature-shaped ``scale``, ``bias`` and running stats.

    Training (``use_running_average=False``): the statistics of ``x`` (:func:`moments`, in
    ``stats_dtype``, default ``x``'s dtype; per group with ``virtual_batch_size``, see
    :func:`ghost_batches`) normalize it, corrected by BatchRenorm's ``(r, d)`` when
    ``renorm_bounds = (r_max, d_max)`` (against the running statistics before the update),
    and the running statistics move towards them (:func:`update_running_stats`) unless
    ``update_stats`` is False (flax's initialization). Inference: the running statistics
    normalize ``x``. Feature-shaped arrays have the shape of ``x`` along ``axis``.
    """
    feature_axes = canonicalize_axes(x.ndim, axis)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    xs, grouped = x, False
    if not use_running_average and virtual_batch_size is not None:
        check_hyperparameters(momentum=momentum, epsilon=epsilon,
                              virtual_batch_size=virtual_batch_size, axis_name=axis_name)
        xs, mask, feature_axes = ghost_batches(x, mask, virtual_batch_size, feature_axes)
        grouped = True
    # In the ghost view, axis 0 indexes the groups: statistics are per group.
    reduction_axes = tuple(a for a in range(int(grouped), xs.ndim) if a not in feature_axes)
    broadcast_shape = tuple(xs.shape[a] if a in feature_axes else 1 for a in range(xs.ndim))

    def broadcast(v: Array | None) -> Array | None:
        return None if v is None else jnp.reshape(v, broadcast_shape)

    scale, bias = broadcast(scale), broadcast(bias)
    if use_running_average:
        y = normalize(x, jnp.reshape(running_mean, broadcast_shape),
                      jnp.reshape(running_var, broadcast_shape), scale, bias, epsilon=epsilon)
        return BatchNormOutput(y, running_mean, running_var, None)

    dtype = jnp.result_type(x) if stats_dtype is None else stats_dtype
    count, mean, var = moments(
        jnp.asarray(xs, dtype), reduction_axes, mask=mask, axis_name=axis_name,
        axis_index_groups=axis_index_groups, use_fast_variance=use_fast_variance,
    )
    renorm = None
    if renorm_bounds is not None:
        renorm = renorm_correction(mean, var, jnp.reshape(running_mean, broadcast_shape),
                                   jnp.reshape(running_var, broadcast_shape),
                                   epsilon=epsilon, r_max=renorm_bounds[0],
                                   d_max=renorm_bounds[1])
    y = normalize(xs, mean, var, scale, bias, epsilon=epsilon, renorm=renorm).reshape(x.shape)
    new_mean, new_var = running_mean, running_var
    if update_stats:
        new_mean, new_var = update_running_stats(
            running_mean, running_var, count, mean, var, momentum=momentum,
            unbiased=unbiased_running_var, grouped=grouped,
        )
    return BatchNormOutput(y, new_mean, new_var,
                           pooled_moments(count, mean, var, feature_shape, grouped=grouped))


def fold_scale_shift(
    layer_bias: Array | float, scale: Array | None, bias: Array | None, mean: Array,
    var: Array, *, epsilon: Any,
) -> tuple[Array, Array]:
    """Inference BatchNorm after an affine layer ``W x + b`` as ``(W * s) x + shift``.

    ``s = scale / sqrt(var + epsilon)``, ``shift = (b - mean) * s + bias`` (per output
    feature; absent ``scale``/``bias`` are 1/0). Returns ``(s, shift)``.
    """
    s = lax.rsqrt(var + epsilon)
    if scale is not None:
        s = scale * s
    shift = (layer_bias - mean) * s
    return s, shift if bias is None else shift + bias
