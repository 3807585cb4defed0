"""Learning-rate and batch-size schedules (``docs/formulas.md``, the three schedules).

A schedule is a function ``step -> value`` (``optax.Schedule``); pass it as ``learning_rate=``
to any optax optimizer. Where optax already computes a formula, the optax schedule is returned
unchanged; why the others are written out: ``docs/conventions.md``, section "Schedules". The
tests check each one against its formula in float64.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax.numpy as jnp
import optax

from jaxreg._validate import check_int, check_real, require


def fixed(learning_rate: float) -> optax.Schedule:
    r"""Constant learning rate, :math:`\eta_t = \eta_0`.

    Args:
        learning_rate: the value :math:`\eta_0 \ge 0` returned at every step.

    Returns:
        ``optax.constant_schedule(learning_rate)``.

    Examples:
      >>> import jaxreg
      >>> schedule = jaxreg.schedules.fixed(0.1)
      >>> [round(float(schedule(t)), 6) for t in (0, 1000)]
      [0.1, 0.1]
    """
    return optax.constant_schedule(check_real("learning_rate", learning_rate))


def poly_to_zero(init_value: float, total_steps: float, power: float) -> optax.Schedule:
    r"""Polynomial decay to zero at ``total_steps`` (the seeds' "exponential" schedule).

    :math:`\eta_t = \eta_0 (1 - t/T)^a` for :math:`0 \le t \le T`, 0 after, :math:`\eta_0`
    before 0; the base is clamped at 0, so no NaN under ``jit`` (where
    ``optax.polynomial_schedule`` gives NaN past :math:`T` for a fractional :math:`a`).

    Args:
        init_value: :math:`\eta_0 \ge 0`.
        total_steps: :math:`T > 0`, the step at which the value reaches 0.
        power: :math:`a > 0` (for a step to 0, use ``optax.piecewise_constant_schedule``).

    Returns:
        An ``optax.Schedule``.

    Examples:
      >>> import jaxreg
      >>> schedule = jaxreg.schedules.poly_to_zero(0.1, total_steps=100, power=2.0)
      >>> [round(float(schedule(t)), 6) for t in (0, 50, 100, 150)]
      [0.1, 0.025, 0.0, 0.0]
    """
    init_value = check_real("init_value", init_value)
    total_steps = check_real("total_steps", total_steps, positive=True)
    power = check_real("power", power, positive=True)

    def schedule(count):
        frac = jnp.clip(1 - count / total_steps, 0.0, 1.0)
        return init_value * frac**power

    return schedule


def linear_step(init_value: float, step_size: float, floor: float = 0.0) -> optax.Schedule:
    r"""Linear decay with slope :math:`\eta_0 / s`, clipped below at ``floor``.

    :math:`\eta_t = \max(\eta_0 (1 - t/s), \eta_{\min})` (the seeds' "step" schedule;
    ``optax.linear_schedule`` equals it only in exact arithmetic).

    Args:
        init_value: :math:`\eta_0 \ge 0`.
        step_size: :math:`s > 0`, the step at which the unclipped line reaches 0.
        floor: :math:`0 \le \eta_{\min} \le \eta_0`, the lower bound.

    Returns:
        An ``optax.Schedule``.

    Examples:
      >>> import jaxreg
      >>> schedule = jaxreg.schedules.linear_step(0.1, step_size=100, floor=0.01)
      >>> [round(float(schedule(t)), 6) for t in (0, 50, 95, 200)]
      [0.1, 0.05, 0.01, 0.01]
    """
    init_value = check_real("init_value", init_value)
    step_size = check_real("step_size", step_size, positive=True)
    floor = check_real("floor", floor)
    require(floor <= init_value, "floor", f"at most init_value={init_value}", floor)

    def schedule(count):
        return jnp.maximum(init_value * (1 - count / step_size), floor)

    return schedule


def linear_warmup(schedule: float | optax.Schedule, warmup_steps: int) -> float | optax.Schedule:
    r"""``schedule`` (a float or an ``optax.Schedule``) times a linear warmup over ``w`` steps.

    :math:`\eta'_t = \eta_t \min(1, (t + 1) / w)` for :math:`w` = ``warmup_steps`` > 0: the
    first step already moves (PyTorch's ``LinearLR(start_factor=1/w)``, not optax's
    ``warmup_*`` schedules, which start at 0), and from step :math:`w - 1` on it is
    :math:`\eta_t`. Any schedule, whatever its formula (Goyal et al. 2017's gradual warmup).

    Args:
        schedule: :math:`\eta_t`, a number or ``step -> value``.
        warmup_steps: :math:`w \ge 0`; 0 returns ``schedule`` itself.

    Returns:
        An ``optax.Schedule``, or ``schedule`` unchanged when ``warmup_steps`` is 0.

    Examples:
      >>> import jaxreg
      >>> s = jaxreg.schedules.linear_warmup(0.1, warmup_steps=4)
      >>> [round(float(s(t)), 6) for t in (0, 1, 3, 100)]
      [0.025, 0.05, 0.1, 0.1]
    """
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps == 0:
        return schedule
    base = schedule if callable(schedule) else optax.constant_schedule(schedule)

    def warmed(count):
        return base(count) * jnp.minimum(1.0, (count + 1) / warmup_steps)

    return warmed


class BatchSizeSchedule(NamedTuple):
    """What ``batch_size_schedule`` returns.

    Attributes:
        batch_size: host-side ``step -> int``, the batch size to draw at ``step``.
        learning_rate: ``optax.Schedule``, the learning rate to use with that batch size.
    """

    batch_size: Callable[[int], int]
    learning_rate: optax.Schedule


def batch_size_schedule(
    init_batch_size: int,
    boundaries_and_scales: Mapping[int, float],
    max_batch_size: int | None = None,
    init_value: float = 1.0,
) -> BatchSizeSchedule:
    r"""Increase the batch size instead of decaying the learning rate (Smith et al., 2017).

    Where ``optax.piecewise_constant_schedule(init_value, boundaries_and_scales)`` multiplies
    :math:`\eta` by :math:`f_i` at step :math:`b_i`, the batch size is multiplied by
    :math:`1/f_i`: :math:`B_t = \min(\operatorname{round}(B_0 \prod_{b_i \le t} f_i^{-1}),
    B_{\max})` and :math:`\eta_t = \eta_0 \prod_{b_i \le t} f_i \cdot B_t / B_0`, so
    :math:`\eta_t / B_t` follows the decayed schedule (``docs/conventions.md``, "Schedules").

    Args:
        init_batch_size: :math:`B_0 \ge 1`.
        boundaries_and_scales: ``{b_i: f_i}``, the learning-rate decay being replaced, with the
            meaning of ``optax.piecewise_constant_schedule`` (``f_i`` applies from step ``b_i`` on);
            each ``f_i`` in ``(0, 1]``.
        max_batch_size: :math:`B_{\max} \ge B_0`, or ``None`` for no cap (then the batch size
            must stay below :math:`2^{31}`: tiny factors raise ``ValueError``).
        init_value: :math:`\eta_0`; the default 1.0 makes ``learning_rate`` a multiplier.

    Returns:
        A ``BatchSizeSchedule(batch_size, learning_rate)``.

    Examples:
      >>> import jaxreg
      >>> s = jaxreg.schedules.batch_size_schedule(64, {100: 0.5, 200: 0.5, 300: 0.5},
      ...                                          max_batch_size=256, init_value=0.1)
      >>> [(s.batch_size(t), round(float(s.learning_rate(t)), 4)) for t in (0, 100, 200, 300)]
      [(64, 0.1), (128, 0.1), (256, 0.1), (256, 0.05)]
    """
    init_batch_size = check_int("init_batch_size", init_batch_size, 1)
    if max_batch_size is not None:
        max_batch_size = check_int("max_batch_size", max_batch_size, init_batch_size)
    init_value = check_real("init_value", init_value)
    require(isinstance(boundaries_and_scales, Mapping), "boundaries_and_scales",
            "a dict {step: factor}", boundaries_and_scales, TypeError)
    for boundary, scale in boundaries_and_scales.items():
        check_int("boundaries_and_scales step", boundary, 0)
        name = f"boundaries_and_scales[{boundary}]"
        require(isinstance(scale, numbers.Real) and not isinstance(scale, bool), name,
                "a number in (0, 1]", scale, TypeError)
        require(0 < scale <= 1, name, "in (0, 1]", scale)  # also rejects NaN

    boundaries = sorted(boundaries_and_scales)
    sizes = [init_batch_size]  # sizes[k]: batch size once the first k boundaries passed
    lr_scales = {}  # residual learning-rate factor at each boundary
    decay = 1.0
    for b in boundaries:
        decay *= boundaries_and_scales[b]
        size = init_batch_size / decay if decay > 0 else math.inf
        if max_batch_size is not None:
            size = min(size, max_batch_size)
        if not math.isfinite(size) or size > 2**31 - 1:
            raise ValueError(
                f"`boundaries_and_scales`: the factors up to step {b} (product {decay:.3g}) give "
                f"a batch size {init_batch_size} / {decay:.3g} beyond int32; pass "
                "max_batch_size to cap it")
        size = round(size)
        lr_scales[b] = boundaries_and_scales[b] * size / sizes[-1]
        sizes.append(size)

    def batch_size(step: int) -> int:
        return sizes[bisect.bisect_right(boundaries, step)]

    return BatchSizeSchedule(batch_size, optax.piecewise_constant_schedule(init_value, lr_scales))
