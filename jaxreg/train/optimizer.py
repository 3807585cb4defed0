"""Optimizer factory: one optax chain from a name, a schedule and regularization settings.

The chain, applied to the gradient ``g`` of the mean batch loss at parameters ``w``::

    g <- g + l2 w                 (add_l2; batch_scaled: g + (l2 / B) w, B the batch size)
    g <- g + l1 sign(w)           (add_l1, unless proximal)
    u <- optimizer(g; eta_t)      (adam, sgd, momentum, adamw; eta_t warmed up, if warmup_steps)
    u <- s u                      (reduce_on_plateau's scale s, if plateau)
    u <- prox(w + u) - w          (proximal_l1: soft-threshold by s eta_t l1, if proximal)

The penalties (and ``adamw``'s decoupled weight decay) apply to kernels only unless ``mask``
says otherwise (:mod:`jaxreg.masks`). The soft threshold uses the learning rate actually
applied, ``s eta_t`` (schedule, warmup included, times plateau scale), so that with SGD the
iteration stays ISTA for ``l1 ||w||_1`` after every plateau reduction (with ``eta_t`` alone, a
reduction of the scale to 0.25 would solve the problem with ``4 l1``).

``learning_rate``, ``l2`` and ``l1`` go through :func:`optax.inject_hyperparams`, so they live
in the optimizer state (``optax.tree_utils.tree_get(opt_state, "hyperparams")`` is the dict
``{"learning_rate": ..., "l2": ..., "l1": ...}``; with a schedule, ``tree_get(opt_state,
"learning_rate")`` also finds the schedule's state): the training history reads them from
there, and a sweep can vmap over states holding different values. A scheduled learning rate
is stored as its value at the last step.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import check_choice, check_hyperparam, check_int, message, require
from jaxreg.transforms import (
    ReduceOnPlateauState,
    add_l1,
    add_l2,
    batch_scaled_l2,
    batch_scaled_strength,
    masks,
    proximal_l1,
    reduce_on_plateau,
    schedules,
)
from jaxreg.transforms import scaling as rules
from jaxreg.transforms.plateau import feed

OPTIMIZERS = {
    "adam": optax.adam,
    "adamw": optax.adamw,  # weight_decay on make_optimizer's mask (kernels only by default)
    "sgd": optax.sgd,
    "momentum": lambda learning_rate, momentum=0.9, **kw: optax.sgd(
        learning_rate, momentum=momentum, **kw
    ),
}

SCHEDULES = ("fixed", "poly", "step", "cosine")

POLY_POWER = 2.0
"""Default power ``a`` of ``schedule="poly"``, ``eta_0 (1 - t/T)^a``: the value seed 002's
"exponential" schedule is trained with in notebook 3 (``a = 1`` would be ``"step"``)."""

SCHEDULE_FORMULAS = {
    "fixed": "eta_0",
    "poly": "eta_0 (1 - t/T)^a",
    "step": "max(eta_0 (1 - t/s), floor), s = T",
    "cosine": "eta_0 (1 + cos(pi t/T)) / 2",
}
"""Each named schedule's formula at step ``t`` of ``T`` (for help texts)."""


class RunOptimizer(NamedTuple):
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


def check_optimizer_kwargs(kwargs: Any) -> None:
    """TypeError naming the first key of ``kwargs`` that neither :func:`make_optimizer` nor its
    optax constructor (``kwargs["name"]``'s) takes; the name itself is checked too."""
    name = kwargs.get("name", "adam")
    check_choice("name", name, OPTIMIZERS)
    constructor = optax.sgd if name == "momentum" else OPTIMIZERS[name]
    known = [*inspect.signature(make_optimizer).parameters,
             *inspect.signature(constructor).parameters]
    for key in kwargs:
        require(key in known and key != "optimizer_kwargs", key,
                f"a keyword argument of make_optimizer or optax.{constructor.__name__} (one of "
                + ", ".join(k for k in dict.fromkeys(known) if k != "optimizer_kwargs") + ")",
                kwargs[key], TypeError)


def learning_rate_schedule(
    learning_rate: float, schedule: str = "fixed", total_steps: int | None = None, **kwargs: Any
) -> float | optax.Schedule:
    """``schedule`` by name (formulas in :data:`SCHEDULE_FORMULAS`): ``fixed`` (the float
    itself), ``poly`` (:func:`jaxreg.schedules.poly_to_zero`, ``power=``:data:`POLY_POWER`),
    ``step`` (:func:`jaxreg.schedules.linear_step`, ``step_size=total_steps``) or ``cosine``
    (:func:`optax.cosine_decay_schedule` to 0 at ``total_steps``); ``kwargs`` override."""
    if schedule == "fixed":
        return learning_rate
    if total_steps is None:
        raise ValueError(message("total_steps", f"given for schedule={schedule!r}", total_steps))
    if schedule == "poly":
        return schedules.poly_to_zero(learning_rate, total_steps, **{"power": POLY_POWER, **kwargs})
    if schedule == "step":
        return schedules.linear_step(learning_rate, **{"step_size": total_steps, **kwargs})
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total_steps, **kwargs)
    raise ValueError(message("schedule", "one of " + ", ".join(map(repr, SCHEDULES)), schedule))


SCALED = {"adam": ("b1", "b2", "eps"), "adamw": ("b1", "b2", "eps", "weight_decay"),
          "sgd": (), "momentum": ()}
"""The optax keyword arguments a scaling rule may change, per optimizer."""


def scaled_hyperparams(name: str, learning_rate: float, l2: float, optimizer_kwargs: Mapping,
                       *, scaling: str | Sequence[str], scale_from: Any, batch_size: Any,
                       num_examples: int | None = None, epochs: int | None = None,
                       bn_momentum: float | None = None, warmup_steps: int = 0) -> dict[str, Any]:
    """The hyperparameters of a run tuned at batch ``scale_from`` (``B0``), moved to
    ``batch_size`` by the rule(s) ``scaling`` (:func:`jaxreg.scaling.scale`): ``learning_rate``,
    ``l2``, the optimizer's of :data:`SCALED` (optax's defaults unless given), ``warmup_steps``
    (the reference's, moved by the rule), and ``bn_momentum`` when given (the model's, for
    rule ``"ema"``); ``num_examples`` (``N``) and ``epochs`` (``T``) for the rules that need
    them. ValueError naming the argument (a
    rule that does not apply to the optimizer, a missing ``N``, ``B`` not a positive integer).
    """
    check_choice("name", name, OPTIMIZERS)
    check_int("scale_from", scale_from, 1, exact=True)
    optax_fn = optax.sgd if name == "momentum" else OPTIMIZERS[name]
    defaults = {k: v.default for k, v in inspect.signature(optax_fn).parameters.items()}
    kwargs = {k: optimizer_kwargs.get(k, defaults.get(k)) for k in SCALED[name]}
    recipe = rules.Recipe(
        batch_size=scale_from, learning_rate=learning_rate,
        optimizer=name, l2=l2, weight_decay=kwargs.get("weight_decay", 0.0),
        momentum=optimizer_kwargs.get("momentum", 0.9) if name == "momentum" else None,
        **{k: kwargs[k] for k in ("b1", "b2", "eps") if k in kwargs},
        bn_momentum=bn_momentum, warmup_steps=warmup_steps, epochs=epochs,
        num_examples=num_examples)
    try:
        new = rules.scale(recipe, batch_size, scaling)
    except ValueError as e:  # the argument here is `scaling`
        raise ValueError(str(e).replace("`rule`", "`scaling`").replace("got rule=", "got scaling=")
                         ) from None
    keys = ("learning_rate", "l2", *SCALED[name], "warmup_steps",
            *(() if bn_momentum is None else ("bn_momentum",)))
    return {k: getattr(new, k) for k in keys}


def _optimizer_rules(rules: str | Sequence[str]) -> list[str]:
    """The rules that change the optimizer (``"ema"`` moves the model's BatchNorm momentum:
    :func:`jaxreg.train.plan.make_plan` applies it); ``["none"]`` when none."""
    names = [rules] if isinstance(rules, str) else list(rules)
    return [r for r in names if r != "ema"] or ["none"]


def _piecewise(boundaries: Sequence[int], values: Sequence[float]) -> Any:
    """``values[i]`` from step ``boundaries[i]`` on: a float when all are equal, else an
    optax schedule of the step count."""
    if len(set(values)) == 1:
        return values[0]
    starts, table = jnp.asarray(boundaries[1:]), jnp.asarray(values, jnp.float32)
    return lambda count: table[jnp.searchsorted(starts, count, side="right")]


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
    scaling: str | Sequence[str] | None = None,
    scale_from: int | None = None,
    batch_size: int | Mapping[int, int] | None = None,
    num_examples: int | None = None,
    epochs: int | None = None,
    warmup_steps: int = 0,
    **optimizer_kwargs: Any,
) -> RunOptimizer:
    """Builds the chain in this module's docstring.

    Args:
        name: ``adam``, ``adamw``, ``sgd`` or ``momentum`` (SGD with momentum 0.9);
            ``optimizer_kwargs`` go to the optax constructor (e.g. ``b1``, ``weight_decay``).
            ``adamw``'s ``weight_decay`` (optax's default 1e-4) applies to the leaves ``mask``
            selects (kernels only by default; optax's own default would decay every leaf,
            biases and norm scales included); an explicit ``optimizer_kwargs["mask"]`` wins.
        learning_rate: the initial learning rate ``eta_0`` (> 0), or an optax schedule.
        schedule: ``fixed``, ``poly``, ``step`` or ``cosine`` (:func:`learning_rate_schedule`).
        total_steps: the run's steps ``T``, for a schedule other than ``fixed``.
        l2: strength of the L2 penalty ``l2/2 ||w||^2``, added through its gradient ``l2 w``
            before the optimizer (coupled with Adam, as Keras' kernel regularizer, whose
            ``l2(c)`` is ``l2 = 2c`` here); ``batch_scaled`` divides it by the batch size at
            each step (:func:`jaxreg.batch_scaled_l2`).
        l1: strength of ``l1 ||w||_1``: a subgradient term, or with ``proximal`` the
            soft-thresholding step of :func:`jaxreg.proximal_l1`, by the applied learning
            rate (times the plateau scale).
        mask: which parameters the penalties apply to (:mod:`jaxreg.masks`); ``None``:
            kernels only.
        batch_scaled: divide the L2 strength by the batch size at each step.
        proximal: apply L1 as a proximal step (exact zeros) instead of a subgradient.
        plateau: keyword arguments of :func:`jaxreg.reduce_on_plateau`, or ``None``.
        schedule_kwargs: keyword arguments of the schedule (e.g. ``power`` of ``poly``).
        scaling: rule(s) of :data:`jaxreg.scaling.RULES` moving the hyperparameters tuned at
            batch ``scale_from`` to ``batch_size`` (:func:`scaled_hyperparams`; ``"ema"`` is
            the model's, applied by ``fit``); ``fit`` fills in ``batch_size``,
            ``num_examples`` and ``epochs`` from the run.
        scale_from: ``B0``, the batch size the hyperparameters were tuned at.
        batch_size: ``B``, or ``{step: B}`` (a batch-size schedule): each scaled
            hyperparameter is then a piecewise-constant schedule of the step.
        num_examples, epochs: ``N`` and ``T`` of the rules that need them.
        warmup_steps: ``w``, a linear warmup multiplying the learning rate (any schedule):
            ``eta_t min(1, (t + 1) / w)`` (:func:`jaxreg.schedules.linear_warmup`); with
            ``scaling``, the reference's ``w``, moved by the rule (at the first batch size).
        **optimizer_kwargs: keyword arguments of the optax constructor.

    Raises:
        ValueError, TypeError: ``learning_rate`` not positive, ``l2`` or ``l1`` negative (or
            not numbers), ``name`` or ``schedule`` unknown, ``warmup_steps`` not an integer
            >= 0, a keyword neither this function nor the optax constructor takes.

    Examples:
      SGD at learning rate 0.1 after a batch-scaled L2 of 0.5, at batch size 10:

      >>> import jax.numpy as jnp
      >>> from jaxreg.train import make_optimizer
      >>> opt = make_optimizer("sgd", 0.1, l2=0.5, batch_scaled=True)
      >>> tx = opt.tx
      >>> params = {"kernel": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update({"kernel": jnp.zeros(2)}, tx.init(params), params, batch_size=10)
      >>> [round(float(u), 4) for u in updates["kernel"]]
      [-0.005, 0.01]
    """
    check_optimizer_kwargs({"name": name, **optimizer_kwargs})
    check_hyperparam("learning_rate", learning_rate, positive=True)  # a negative one ascends
    check_hyperparam("l2", l2)
    check_hyperparam("l1", l1)
    check_int("warmup_steps", warmup_steps, 0, exact=True)
    injected: dict[str, Any] = {}
    if scaling is not None:
        require(isinstance(learning_rate, (int, float)), "learning_rate",
                "a number (not a schedule) with scaling", learning_rate, TypeError)
        steps_and_sizes = (sorted(batch_size.items()) if isinstance(batch_size, Mapping)
                           else [(0, batch_size)])
        resolved = [scaled_hyperparams(name, learning_rate, l2, optimizer_kwargs,
                                       scaling=_optimizer_rules(scaling), scale_from=scale_from,
                                       batch_size=b, num_examples=num_examples, epochs=epochs,
                                       warmup_steps=warmup_steps)
                    for _, b in steps_and_sizes]
        warmup_steps = resolved[0]["warmup_steps"]  # the warmup is at the first batch size
        resolved = [{k: v for k, v in r.items() if k != "warmup_steps"} for r in resolved]
        starts = [s for s, _ in steps_and_sizes]
        injected = {k: _piecewise(starts, [r[k] for r in resolved]) for k in resolved[0]}
        if callable(injected["learning_rate"]) and schedule != "fixed":
            base, piece = learning_rate_schedule(1.0, schedule, total_steps,
                                                 **(schedule_kwargs or {})), injected.pop(
                                                     "learning_rate")
            injected["learning_rate"] = lambda count: base(count) * piece(count)  # type: ignore
        learning_rate, l2 = injected.pop("learning_rate"), injected.pop("l2")
        for k in list(injected):  # constants as the constructor's arguments: as if given
            optimizer_kwargs.pop(k, None)
            if not callable(injected[k]):
                optimizer_kwargs[k] = injected.pop(k)
        if callable(learning_rate):
            schedule = "fixed"  # the piecewise schedule (times the named one) is the rate
    lr = schedules.linear_warmup(learning_rate_schedule(
        learning_rate, schedule, total_steps, **(schedule_kwargs or {})), warmup_steps)
    plateau_tx = None if plateau is None else reduce_on_plateau(**plateau)
    if name == "adamw":
        optimizer_kwargs.setdefault("mask", lambda params: masks.resolve(mask, params))
    l2_on, l1_on = (
        l2 != 0,
        l1 != 0,
    )  # the chain's structure is fixed here; the values stay injectable

    def chain(learning_rate, l2, l1, b1=None, b2=None, eps=None, weight_decay=None):
        scaled = {k: v for k, v in dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay).items()
                  if v is not None}  # those of SCALED[name] when scaling
        parts = []
        if l2_on:
            parts.append(batch_scaled_l2(l2, mask) if batch_scaled else add_l2(l2, mask))
        if l1_on and not proximal:
            parts.append(add_l1(l1, mask))
        parts.append(OPTIMIZERS[name](learning_rate, **optimizer_kwargs, **scaled))
        if plateau_tx is not None and l1_on and proximal:
            parts.append(_plateau_then_proximal(plateau_tx, l1, learning_rate, mask))
        elif plateau_tx is not None:
            parts.append(plateau_tx)
        elif l1_on and proximal:
            parts.append(proximal_l1(l1, learning_rate, mask))
        return optax.chain(*parts)

    tx = optax.inject_hyperparams(chain)(learning_rate=lr, l2=l2, l1=l1, **injected)
    return RunOptimizer(tx=tx, plateau=plateau_tx, batch_scaled=batch_scaled)


def effective_l2(l2: Any, batch_size: int, batch_scaled: bool) -> Any:
    """The L2 strength the chain applies at batch size ``batch_size``:
    :func:`jaxreg.batch_scaled_strength` when ``batch_scaled``, else ``l2`` itself."""
    return batch_scaled_strength(l2, batch_size) if batch_scaled else l2


def _plateau_then_proximal(plateau_tx: optax.GradientTransformationExtraArgs, l1: Any,
                           learning_rate: Any, mask: Any) -> optax.GradientTransformationExtraArgs:
    """``chain(plateau_tx, proximal_l1(l1, s * learning_rate))`` with ``s`` the plateau scale
    of the step: the soft threshold by the learning rate actually applied."""
    def init_fn(params):
        return plateau_tx.init(params), proximal_l1(l1, learning_rate, mask).init(params)

    def update_fn(updates, state, params=None, **extra_args):
        updates, plateau_state = plateau_tx.update(updates, state[0], params, **extra_args)
        prox = proximal_l1(l1, learning_rate * plateau_state.scale, mask)
        updates, prox_state = prox.update(updates, state[1], params)
        return updates, (plateau_state, prox_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_plateau_state(s: Any) -> bool:
    return isinstance(s, ReduceOnPlateauState)


def plateau_states(opt_state: Any) -> list[ReduceOnPlateauState]:
    """Every :func:`jaxreg.reduce_on_plateau` state in ``opt_state`` (in a chain the user built,
    under ``inject_hyperparams``, ``masked``...), in pytree order.

    Raises:
        ValueError: ``opt_state`` holds an ``optax.contrib.reduce_on_plateau`` state: it needs
            ``value=`` at every step and keeps no configuration in its state, so it cannot be fed
            once per epoch; use :func:`jaxreg.reduce_on_plateau` (its ``rtol`` is ``threshold``
            with ``threshold_mode="rel"``).
    """
    contrib = optax.contrib.ReduceLROnPlateauState

    def is_leaf(s):
        return _is_plateau_state(s) or isinstance(s, contrib)

    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_leaf) if is_leaf(s)]
    if any(isinstance(s, contrib) for s in found):
        raise ValueError("optax.contrib.reduce_on_plateau cannot be fed an epoch metric by "
                         "jaxreg (it needs value= at every update and keeps its settings in a "
                         "closure): use jaxreg.reduce_on_plateau(factor, patience, ...) instead "
                         "(rtol -> threshold with threshold_mode='rel').")
    return found


def update_plateau(opt_state: Any, value: Any) -> Any:
    """``opt_state`` with every plateau state in it fed the epoch metric ``value``
    (:func:`jaxreg.transforms.plateau.feed`; the other optimizer state is untouched)."""
    return jax.tree.map(lambda s: feed(s, value) if _is_plateau_state(s) else s,
                        opt_state, is_leaf=_is_plateau_state)


def plateau_scale(opt_state: Any) -> jax.Array | float:
    """The product of the ``scale`` of every plateau state in ``opt_state`` (1 without one)."""
    scale: jax.Array | float = 1.0
    for s in plateau_states(opt_state):
        scale = scale * s.scale
    return scale
