"""Reduce the learning rate when a monitored metric stops improving (Keras 3 semantics).

Unlike ``optax.contrib.reduce_on_plateau``, this version maximizes as well as minimizes, and
its relative threshold is measured with ``|best|``, so it is correct for negative metrics
(negative log-likelihoods, ELBOs, rewards; optax issue/PR 1767).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import check_choice, check_int, check_real, require


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class PlateauConfig:
    """The arguments of :func:`reduce_on_plateau`, kept in its state as static pytree data (no
    leaves), so that the state alone says how to feed it (:func:`feed`)."""

    factor: float
    patience: int
    cooldown: int
    min_scale: float
    threshold: float
    threshold_mode: str
    mode: str
    accumulation_size: int


class ReduceOnPlateauState(NamedTuple):
    """State of ``reduce_on_plateau``.

    Attributes:
        scale: factor multiplying the updates (starts at 1).
        best_value: best (averaged) metric seen so far; ``+inf`` ('min') or ``-inf`` ('max')
            before the first decision.
        plateau_count: decisions since the last improvement (Keras's ``wait``).
        cooldown_count: decisions left in the cooldown after a reduction.
        count: values accumulated since the last decision, in ``[0, accumulation_size)``.
        accumulated_value: sum of those values.
        config: the transform's arguments (:class:`PlateauConfig`, static: no leaves).
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array  # type: ignore[assignment]  # optax's name, shadows tuple.count
    accumulated_value: jax.Array
    config: PlateauConfig


def _decide(state: ReduceOnPlateauState, x: jax.Array) -> ReduceOnPlateauState:
    """One decision on the (averaged) metric ``x``: the rules of :func:`reduce_on_plateau`."""
    c = state.config
    sign = 1.0 if c.mode == "min" else -1.0  # compare sign * value: 'max' becomes 'min'
    best = state.best_value
    margin = c.threshold * jnp.abs(best) if c.threshold_mode == "rel" else c.threshold
    margin = jnp.where(jnp.isfinite(best), margin, 0.0)
    improved = jnp.isfinite(x) & (sign * x < sign * best - margin)

    in_cooldown = state.cooldown_count > 0
    cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
    counting = ~improved & (cooldown_count == 0)
    plateau_count = jnp.where(
        counting, optax.safe_increment(jnp.where(in_cooldown, 0, state.plateau_count)), 0)
    reduce = counting & (plateau_count >= c.patience) & (state.scale > c.min_scale)
    with jax.enable_x64(True):  # Keras: float32(max(float(scale) * factor, min_lr))
        reduced = jnp.maximum(state.scale.astype(jnp.float64) * c.factor, c.min_scale)
        reduced = reduced.astype(state.scale.dtype)
    return state._replace(
        scale=jnp.where(reduce, reduced, state.scale),
        best_value=jnp.where(improved, x, best),
        plateau_count=jnp.where(reduce, 0, plateau_count),
        cooldown_count=jnp.where(reduce, c.cooldown, cooldown_count),
    )


def feed(state: ReduceOnPlateauState, value: Any) -> ReduceOnPlateauState:
    """``state`` after the metric ``value`` (a real scalar, concrete or traced): accumulated,
    and a decision taken every ``accumulation_size`` values. What ``update(..., value=value)``
    does to the state; the state carries its configuration, so no transform is needed (this
    is how :func:`jaxreg.train.fit` feeds every plateau it finds in an optimizer state).

    Raises:
        TypeError: ``value`` is not a real scalar (a string, a vector: the state's shapes
            would silently change).
    """
    dtype = jnp.result_type(value) if hasattr(value, "dtype") or isinstance(
        value, (int, float)) else None
    require(dtype is not None and not isinstance(value, bool) and jnp.ndim(value) == 0 and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)),
        "value", "a real scalar (reduce_on_plateau's monitored metric)", value, TypeError)
    k = state.config.accumulation_size
    acc_dtype = state.accumulated_value.dtype
    count = state.count + 1
    total = state.accumulated_value + jnp.asarray(value, acc_dtype)
    decided = _decide(state, total / k)._replace(
        count=jnp.zeros_like(count), accumulated_value=jnp.zeros_like(total))
    waiting = state._replace(count=count, accumulated_value=total)
    return jax.tree.map(lambda d, w: jnp.where(count == k, d, w), decided, waiting)


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    cooldown: int = 0,
    min_scale: float = 0.0,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    mode: str = "min",
    accumulation_size: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """Scale updates down by ``factor`` when a monitored metric has stopped improving.

    Keras 3's ``ReduceLROnPlateau`` as an optax transform, for metrics of either sign: after
    ``patience`` decisions without improvement, ``scale = max(scale * factor, min_scale)`` in
    Keras' arithmetic. A decision averages ``accumulation_size`` values fed with
    ``update(..., value=metric)``. The rules: ``docs/conventions.md``, "Reduce on plateau".

    Args:
      factor: multiplier applied to the scale on a plateau, in (0, 1).
      patience: decisions without improvement before reducing, >= 0.
      cooldown: decisions to wait after a reduction before counting again, >= 0.
      min_scale: lower bound on the scale, >= 0.
      threshold: improvement margin, >= 0, relative to ``abs(best)`` ('rel') or absolute.
      threshold_mode: 'rel' or 'abs'.
      mode: 'min' (the metric should decrease) or 'max' (it should increase).
      accumulation_size: values averaged per decision, >= 1.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; ``update(..., value=None)`` returns
      ``(scale * updates, new_state)`` (``value=None``: only scales).

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.reduce_on_plateau(factor=0.5, patience=2)
      >>> state, scales = tx.init(None), []
      >>> for value in (1.0, 0.9, 0.95, 0.95, 0.95):
      ...     updates, state = tx.update(jnp.ones(1), state, value=value)
      ...     scales.append(float(updates[0]))
      >>> scales
      [1.0, 1.0, 1.0, 0.5, 0.5]
    """
    factor = check_real("factor", factor)  # a real number, finite
    require(0.0 < factor < 1.0, "factor", "in (0, 1)", factor)
    patience = check_int("patience", patience, 0)
    cooldown = check_int("cooldown", cooldown, 0)
    accumulation_size = check_int("accumulation_size", accumulation_size, 1)
    min_scale = check_real("min_scale", min_scale)
    threshold = check_real("threshold", threshold)
    check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
    check_choice("mode", mode, ("min", "max"))
    config = PlateauConfig(factor, patience, cooldown, min_scale, threshold, threshold_mode, mode,
                           accumulation_size)

    def init_fn(params) -> ReduceOnPlateauState:
        del params
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is enabled
        return ReduceOnPlateauState(
            scale=jnp.ones((), dtype),
            best_value=jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, dtype),
            plateau_count=jnp.zeros((), jnp.int32),
            cooldown_count=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            accumulated_value=jnp.zeros((), dtype),
            config=config,
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is not None:
            state = feed(state, value)
        scale = state.scale
        updates = jax.tree.map(lambda g: (scale * g).astype(g.dtype), updates)
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
