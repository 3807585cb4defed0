"""The body shared by every jaxreg transform: a masked per-leaf map of (update, param) pairs
whose hyperparameters may be optax schedules (then the state is a step count).

The mask is resolved on the params (:func:`jaxreg.masks.resolve`), not on the updates as
:func:`optax.masked` does, so ``None`` update leaves (and ``updates=None``, as
:func:`optax.add_decayed_weights` accepts) pass through as ``None``.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg.transforms import masks

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


class ScheduleState(NamedTuple):
    """State of a transform whose hyperparameters include a schedule: the step count."""

    count: jax.Array  # type: ignore[assignment]  # int32 scalar; optax's name, shadows tuple.count


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
    of each masked leaf (element, under :func:`jaxreg.raveled`), cast back to the update's
    dtype; unmasked leaves and ``None`` updates pass through. Traced hyperparameters are not
    checked (a ``checkify.debug_check`` on a vmapped strength breaks sweeps on an
    Explicit-axes mesh: its error reduction sorts over the sharded sweep axis).

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
    masks.check(mask)
    scheduled = any(callable(v) for v in hyperparams.values())

    def init_fn(params):
        # A bad mask fails at init, before any state exists. Params without leaves are not
        # checked: nothing to mask, and optax.tree.map_params calls init on such a placeholder
        # (optax.masked skips it too); a mask that does not fit real params fails at update.
        if jax.tree.leaves(params):
            masks.resolve(mask, params)
        return ScheduleState(count=jnp.zeros([], jnp.int32)) if scheduled else optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(f"jaxreg.{name} uses the current value of the parameters, but "
                             "`params` was not passed: call `tx.update(updates, state, params)`.")
        flags = masks.resolve(mask, params)
        values = {k: v(state.count) if callable(v) else v for k, v in hyperparams.items()}
        if step_values is not None:
            values.update(step_values(**extra_args))

        def leaf(u, p, keep):  # keep: a bool, or a NumPy bool array under jaxreg.raveled
            if u is None or not np.any(keep):
                return u
            new = leaf_fn(u, p, **values).astype(u.dtype)
            return new if np.all(keep) else jnp.where(keep, new, u)

        new_updates = jax.tree.map(leaf, updates, params, flags, is_leaf=lambda u: u is None)
        if scheduled:
            state = ScheduleState(count=optax.safe_increment(state.count))
        return new_updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
