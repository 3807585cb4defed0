"""Optimizer factory: one optax chain from a name, a schedule and regularization settings.

The chain, applied to the gradient ``g`` of the mean batch loss at parameters ``w``::

    g <- g + l2 w                 (add_l2; batch_scaled: g + (l2 / B) w, B the batch size)
    g <- g + l1 sign(w)           (add_l1, unless proximal)
    u <- optimizer(g; eta_t)      (adam, sgd, momentum, adamw)
    u <- s u                      (reduce_on_plateau's scale s, if plateau)
    u <- prox(w + u) - w          (proximal_l1: soft-threshold by eta_t l1, if proximal)

The penalties apply to kernels only unless ``mask`` says otherwise (:mod:`jaxreg.masks`). The
soft threshold uses the scheduled ``eta_t``, not ``eta_t`` times the plateau scale.

``learning_rate``, ``l2`` and ``l1`` go through :func:`optax.inject_hyperparams`, so they live
in the optimizer state (``optax.tree_utils.tree_get(opt_state, "hyperparams")`` is the dict
``{"learning_rate": ..., "l2": ..., "l1": ...}``; with a schedule, ``tree_get(opt_state,
"learning_rate")`` also finds the schedule's state): the training history reads them from
there, and a sweep can vmap over states holding different values. A scheduled learning rate
is stored as its value at the last step.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from jaxreg._validate import check_choice, message
from jaxreg.transforms import (
    ReduceOnPlateauState,
    add_l1,
    add_l2,
    batch_scaled_l2,
    batch_scaled_strength,
    proximal_l1,
    reduce_on_plateau,
    schedules,
)

OPTIMIZERS = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "momentum": lambda learning_rate, momentum=0.9, **kw: optax.sgd(learning_rate, momentum=momentum, **kw),
}

SCHEDULES = ("fixed", "poly", "step", "cosine")


class Optimizer(NamedTuple):
    """What :func:`make_optimizer` returns.

    Attributes:
        tx: the optax transformation; its update takes ``batch_size=`` (and passes ``value=``
            through to the plateau transform).
        plateau: the ``jaxreg.reduce_on_plateau`` transform inside ``tx``, or ``None``. Feed it
            an epoch metric with :func:`update_plateau`.
        batch_scaled: whether the L2 penalty is divided by the batch size at each step.
    """

    tx: optax.GradientTransformationExtraArgs
    plateau: optax.GradientTransformation | None = None
    batch_scaled: bool = False


def learning_rate_schedule(learning_rate: float, schedule: str = "fixed", total_steps: int | None = None,
                           **kwargs: Any) -> float | optax.Schedule:
    """``schedule`` by name: ``fixed`` (the float itself), ``poly``
    (:func:`jaxreg.schedules.poly_to_zero`, ``power=1``), ``step``
    (:func:`jaxreg.schedules.linear_step`, ``step_size=total_steps``) or ``cosine``
    (:func:`optax.cosine_decay_schedule` to 0 at ``total_steps``); ``kwargs`` override."""
    if schedule == "fixed":
        return learning_rate
    if total_steps is None:
        raise ValueError(message("total_steps", f"given for schedule={schedule!r}", total_steps))
    if schedule == "poly":
        return schedules.poly_to_zero(learning_rate, total_steps, **{"power": 1.0, **kwargs})
    if schedule == "step":
        return schedules.linear_step(learning_rate, **{"step_size": total_steps, **kwargs})
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total_steps, **kwargs)
    raise ValueError(message("schedule", "one of " + ", ".join(map(repr, SCHEDULES)), schedule))


def make_optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    *,
    schedule: str = "fixed",
    total_steps: int | None = None,
    l2: float = 0.0,
    l1: float = 0.0,
    batch_scaled: bool = False,
    proximal: bool = False,
    mask: Any = None,
    plateau: dict[str, Any] | None = None,
    schedule_kwargs: dict[str, Any] | None = None,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """Builds the chain in this module's docstring.

    Args:
        name: ``adam``, ``adamw``, ``sgd`` or ``momentum`` (SGD with momentum 0.9);
            ``optimizer_kwargs`` go to the optax constructor (e.g. ``b1``, ``weight_decay``).
        learning_rate: the initial learning rate ``eta_0``.
        schedule, total_steps, schedule_kwargs: see :func:`learning_rate_schedule`.
        l2: strength of the L2 penalty ``l2/2 ||w||^2``, added through its gradient ``l2 w``
            before the optimizer (coupled with Adam, as Keras' kernel regularizer, whose
            ``l2(c)`` is ``l2 = 2c`` here); ``batch_scaled`` divides it by the batch size at
            each step (:func:`jaxreg.batch_scaled_l2`).
        l1: strength of ``l1 ||w||_1``: a subgradient term, or with ``proximal`` the
            soft-thresholding step of :func:`jaxreg.proximal_l1`.
        mask: which parameters the penalties apply to (:mod:`jaxreg.masks`); ``None``:
            kernels only.
        plateau: keyword arguments of :func:`jaxreg.reduce_on_plateau`, or ``None``.
    """
    check_choice("name", name, OPTIMIZERS)
    lr = learning_rate_schedule(learning_rate, schedule, total_steps, **(schedule_kwargs or {}))
    plateau_tx = None if plateau is None else reduce_on_plateau(**plateau)
    l2_on, l1_on = l2 != 0, l1 != 0  # the chain's structure is fixed here; the values stay injectable

    def chain(learning_rate, l2, l1):
        parts = []
        if l2_on:
            parts.append(batch_scaled_l2(l2, mask) if batch_scaled else add_l2(l2, mask))
        if l1_on and not proximal:
            parts.append(add_l1(l1, mask))
        parts.append(OPTIMIZERS[name](learning_rate, **optimizer_kwargs))
        if plateau_tx is not None:
            parts.append(plateau_tx)
        if l1_on and proximal:
            parts.append(proximal_l1(l1, learning_rate, mask))
        return optax.chain(*parts)

    tx = optax.inject_hyperparams(chain)(learning_rate=lr, l2=l2, l1=l1)
    return Optimizer(tx=tx, plateau=plateau_tx, batch_scaled=batch_scaled)


def effective_l2(l2: float, batch_size: int, batch_scaled: bool) -> float:
    """The L2 strength the chain applies at batch size ``batch_size``:
    :func:`jaxreg.batch_scaled_strength` when ``batch_scaled``, else ``l2`` itself."""
    return batch_scaled_strength(l2, batch_size) if batch_scaled else l2


def _is_plateau_state(s: Any) -> bool:
    return isinstance(s, ReduceOnPlateauState)


def update_plateau(opt_state: Any, plateau: optax.GradientTransformation, value: Any) -> Any:
    """``opt_state`` with the plateau transform's state fed the epoch metric ``value``:
    ``_, s = plateau.update(None, s, value=value)``, wherever ``s`` sits in ``opt_state``."""
    return jax.tree.map(
        lambda s: plateau.update(None, s, value=value)[1] if _is_plateau_state(s) else s,
        opt_state, is_leaf=_is_plateau_state,
    )


def _plateau_scale(opt_state: Any) -> jax.Array | float:
    """The plateau transform's current ``scale`` in ``opt_state`` (1 without a plateau)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_plateau_state) if _is_plateau_state(s)]
    return found[0].scale if found else 1.0
