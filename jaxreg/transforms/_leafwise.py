"""The body shared by every jaxreg transform: a masked per-leaf map of (update, param) pairs
whose hyperparameters may be optax schedules (then the state is a step count)."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.transforms import masks

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


class ScheduleState(NamedTuple):
    """State of a transform whose hyperparameters include a schedule: the step count."""

    count: jax.Array  # int32 scalar


def leafwise(
    name: str,
    leaf_fn: Callable[..., jax.Array],
    hyperparams: dict[str, ScalarOrSchedule],
    mask: masks.Mask,
    step_values: Callable[..., dict[str, Any]] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The body shared by every jaxreg transform: a per-leaf map of (update, param) pairs.

    At each step the schedules in ``hyperparams`` are evaluated at the step count, then
    ``leaf_fn(update, param, **hyperparams, **step_values(**extra_args))`` gives the new update
    of each masked leaf, cast back to the update's dtype. Unmasked leaves pass through.

    Args:
      name: the public transform's name, for error messages.
      leaf_fn: ``(update, param, **values) -> new update``.
      hyperparams: name -> number or schedule; a schedule adds a step count to the state.
      mask: any mask accepted by :func:`jaxreg.masks.resolve`.
      step_values: optional ``(**extra_args) -> dict`` of per-step values taken from the extra
        keyword arguments of ``update`` (e.g. ``batch_size``), validated there.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` that requires ``params``.
    """
    scheduled = any(callable(v) for v in hyperparams.values())

    def init_fn(params):
        del params
        return ScheduleState(count=jnp.zeros([], jnp.int32)) if scheduled else optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"jaxreg.{name} uses the current value of the parameters, but "
                             "`params` was not passed: call `tx.update(updates, state, params)`.")
        values = {k: v(state.count) if callable(v) else v for k, v in hyperparams.items()}
        if step_values is not None:
            values.update(step_values(**extra_args))
        new_updates = jax.tree.map(
            lambda u, p: leaf_fn(u, p, **values).astype(u.dtype), updates, params)
        if scheduled:
            state = ScheduleState(count=optax.safe_increment(state.count))
        return new_updates, state

    return optax.masked(optax.GradientTransformationExtraArgs(init_fn, update_fn),
                        lambda tree: masks.resolve(mask, tree))
