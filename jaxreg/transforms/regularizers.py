"""Penalty gradients as optax gradient transformations.

Each transform adds the gradient of a weight penalty ``R(w)`` to the incoming updates, so that
``optax.chain(jaxreg.add_l2(s), optax.sgd(lr))`` minimizes ``L(w) + R(w)`` from the gradient of
``L`` alone. The penalty of every transform is written with the unit penalties of
:mod:`jaxreg.penalties` (``l2 = sum w^2``, ``l1 = sum |w|``):

=================================================  =========================  ==================
transform                                          penalty ``R(w)``           gradient added
=================================================  =========================  ==================
``add_l2(s)``                                      ``s/2 * l2``               ``s * w``
``add_l1(s)``                                      ``s * l1``                 ``s * sign(w)``
``data_scaled_l2(s, m)``                           ``s/(2m) * l2``            ``s/m * w``
``data_scaled_l1(s, m)``                           ``s/m * l1``               ``s/m * sign(w)``
``batch_scaled_l2(s)`` with ``batch_size=b``       ``s/(2b) * l2``            ``s/b * w``
``batch_scaled_l2(s, convention="seed")``          ``s/b * l2``               ``2 s/b * w``
=================================================  =========================  ==================

Shared behaviour:

* ``mask`` (default ``None``: :func:`jaxreg.masks.kernels_only`) picks the regularized leaves;
  see :mod:`jaxreg.masks`. It is resolved on the params (so ``None`` update leaves, and
  ``updates=None``, pass through as in :func:`optax.add_decayed_weights`); a mask that does not
  match the params raises ``ValueError`` at ``init`` and at ``update``, before any state
  changes (``init`` does not check params without leaves, the placeholder of
  :func:`optax.tree.map_params`). A callable pytree of bools is a pytree mask, as in
  :func:`optax.masked`.
* Strengths are a non-negative float or an optax schedule ``count -> value``; with a schedule
  the state keeps the step ``count`` (:class:`ScheduleState`) and step ``t`` uses
  ``schedule(t)``. Negative/NaN/Inf strengths raise ``ValueError``, non-numbers ``TypeError``,
  at construction. Traced strengths (``jax.vmap``, ``optax.inject_hyperparams``) are accepted;
  they are checked only when concrete (a traced ``batch_size`` is checked under
  :func:`jax.experimental.checkify.checkify`, see :func:`batch_scaled_l2`). With
  ``optax.inject_hyperparams`` pass a mask function through ``static_args=("mask",)``:
  inject_hyperparams takes callables for schedules, and the value it would pass instead raises
  a ``ValueError``/``TypeError`` that says so (never a silent no-op).
* Updates keep their dtype (bfloat16 stays bfloat16); ``params`` are required. This is what
  :func:`optax.add_decayed_weights` does with a Python float strength; with a float32 *array*
  strength (``inject_hyperparams``, a schedule) optax promotes bfloat16 updates to float32,
  while jaxreg computes in float32 and rounds back to the update's dtype (the values equal
  optax's rounded to bfloat16). ``optax.apply_updates`` casts to the param dtype either way.
* All return :class:`optax.GradientTransformationExtraArgs`, so they work inside
  :func:`optax.chain`, which forwards extra keyword arguments such as ``batch_size``.
"""

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from jax.experimental import checkify

from jaxreg._validate import check_choice, check_hyperparam, require
from jaxreg.transforms import masks
from jaxreg.transforms._leafwise import ScalarOrSchedule, leafwise


def _add_penalty_gradient(name: str, direction: Callable[[jax.Array], jax.Array],
                          strength: ScalarOrSchedule, mask: masks.Mask, factor: Any = 1.0):
    """``updates + strength * factor * direction(params)``."""
    def leaf(g, p, strength):
        return g + (strength * factor) * direction(p)

    return leafwise(name, leaf, {"strength": strength}, mask)


def add_l2(strength: ScalarOrSchedule, mask: masks.Mask = None
           ) -> optax.GradientTransformationExtraArgs:
    """Add ``strength * w``: the gradient of the L2 penalty ``strength/2 * sum w^2``.

    Seeds 000/003 write the regularized objective ``J(w) = L(w) + lambda/2 * R(w)`` with
    ``R(w) = sum w^2`` (:func:`jaxreg.penalties.l2`), so ``grad J = grad L + lambda * w``:
    this transform with ``strength = lambda``. Same maths as :func:`optax.add_decayed_weights`,
    with jaxreg's mask default (kernels only) and input validation.

    Args:
      strength: ``lambda >= 0``, a float or a schedule ``count -> value``.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      The gradient gains ``strength * w`` on the kernel; the bias is not regularized:

      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0])}
      >>> grads = {"kernel": jnp.zeros(2), "bias": jnp.zeros(1)}
      >>> tx = jaxreg.add_l2(0.1)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> [round(float(u), 3) for u in updates["kernel"]], [float(u) for u in updates["bias"]]
      ([0.1, -0.2], [0.0])
    """
    check_hyperparam("strength", strength)
    return _add_penalty_gradient("add_l2", lambda w: w, strength, mask)


def add_l1(strength: ScalarOrSchedule, mask: masks.Mask = None
           ) -> optax.GradientTransformationExtraArgs:
    """Add ``strength * sign(w)``: a subgradient of the L1 penalty ``strength * sum |w|``.

    ``sign(0) = 0``, so weights at exactly zero get no push. Subgradient steps hover around
    zero rather than reach it; for exact zeros use :func:`jaxreg.proximal_l1`. Arguments and
    result as for :func:`add_l2`.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"kernel": jnp.array([1.5, 0.0, -0.2])}
      >>> tx = jaxreg.add_l1(0.1)
      >>> updates, _ = tx.update({"kernel": jnp.zeros(3)}, tx.init(params), params)
      >>> [round(float(u), 3) for u in updates["kernel"]]
      [0.1, 0.0, -0.1]
    """
    check_hyperparam("strength", strength)
    return _add_penalty_gradient("add_l1", jnp.sign, strength, mask)


def _data_scaled(name: str, direction: Callable[[jax.Array], jax.Array], strength: ScalarOrSchedule,
                 num_examples: int, mask: masks.Mask) -> optax.GradientTransformationExtraArgs:
    """``updates + strength / num_examples * direction(params)`` (seed 002's ``lambda/m`` forms)."""
    check_hyperparam("strength", strength)
    check_hyperparam("num_examples", num_examples, schedule=False, positive=True, integer=True)
    return _add_penalty_gradient(name, direction, strength, mask, factor=1.0 / num_examples)


def data_scaled_l2(strength: ScalarOrSchedule, num_examples: int, mask: masks.Mask = None
                   ) -> optax.GradientTransformationExtraArgs:
    """Seed 002's L2 term ``lambda/(2m) * sum w^2``: adds ``lambda/m * w``.

    ``m`` is the number of training examples, so the penalty weighs like one more example
    of a mean loss over the data set.

    Args:
      strength: ``lambda >= 0``, a float or a schedule ``count -> value``.
      num_examples: ``m > 0``, the training set size.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      With ``lambda = 2`` and ``m = 100`` training examples the gradient gains ``0.02 * w``:

      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"kernel": jnp.array([1.0, -3.0])}
      >>> tx = jaxreg.data_scaled_l2(2.0, num_examples=100)
      >>> updates, _ = tx.update({"kernel": jnp.zeros(2)}, tx.init(params), params)
      >>> [round(float(u), 4) for u in updates["kernel"]]
      [0.02, -0.06]
    """
    return _data_scaled("data_scaled_l2", lambda w: w, strength, num_examples, mask)


def data_scaled_l1(strength: ScalarOrSchedule, num_examples: int, mask: masks.Mask = None
                   ) -> optax.GradientTransformationExtraArgs:
    """Seed 002's L1 term ``lambda/m * sum |w|``: adds ``lambda/m * sign(w)``. Arguments and
    result as for :func:`data_scaled_l2`.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"kernel": jnp.array([1.0, 0.0, -3.0])}
      >>> tx = jaxreg.data_scaled_l1(2.0, num_examples=100)
      >>> updates, _ = tx.update({"kernel": jnp.zeros(3)}, tx.init(params), params)
      >>> [round(float(u), 4) for u in updates["kernel"]]
      [0.02, 0.0, -0.02]
    """
    return _data_scaled("data_scaled_l1", jnp.sign, strength, num_examples, mask)


_CONVENTION_FACTOR = {"half": 1.0, "seed": 2.0}


def batch_scaled_strength(strength: Any, batch_size: Any, convention: str = "half") -> Any:
    """The L2 strength :func:`batch_scaled_l2` applies at batch size ``b``: the gradient it adds
    is ``batch_scaled_strength(lambda, b) * w``, ``lambda / b`` (``"half"``) or ``2 lambda / b``
    (``"seed"``). The one place this formula lives; the training engine's histories and sweeps
    call it too.

    Args:
      strength: ``lambda``, a number or an array.
      batch_size: ``b``, a number or an array.
      convention: ``"half"`` or ``"seed"`` (see :func:`batch_scaled_l2`).

    Examples:
      >>> import jaxreg
      >>> jaxreg.batch_scaled_strength(0.5, 100), jaxreg.batch_scaled_strength(0.5, 100, "seed")
      (0.005, 0.01)
    """
    return _CONVENTION_FACTOR[convention] * strength / batch_size


_INT32_MAX = 2**31 - 1


def _step_batch_size(batch_size=None, **extra_args):
    """The ``batch_size`` keyword of ``update``, validated: an integer scalar, in
    ``[1, 2^31)`` when concrete, ``>= 1`` under :func:`jax.experimental.checkify.checkify`
    when traced."""
    del extra_args
    if batch_size is None:
        raise TypeError("batch_scaled_l2 needs the batch size at every step: call "
                        "`tx.update(updates, state, params, batch_size=b)` (optax.chain "
                        "forwards it). flax.training.train_state.TrainState.apply_gradients "
                        "does not forward extra arguments (flax issue 4471): use "
                        "jaxreg.train.TrainState.apply_gradients(tx, grads, batch_size=b), or "
                        "tx.update(grads, opt_state, params, batch_size=b) directly.")
    dtype = getattr(batch_size, "dtype", None)
    integral = (isinstance(batch_size, int) and not isinstance(batch_size, bool)) or (
        dtype is not None and jnp.issubdtype(dtype, jnp.integer))
    require(integral and jnp.ndim(batch_size) == 0, "batch_size",
            "an integer scalar (a Python int or an integer array)", batch_size, TypeError)
    if isinstance(batch_size, jax.core.Tracer):
        checkify.debug_check(batch_size >= 1, "`batch_size` must be >= 1; got batch_size={}",
                             batch_size)
    else:
        require(1 <= batch_size <= _INT32_MAX, "batch_size", "in [1, 2^31) (it must fit in int32)",
                batch_size)
    return batch_size


def batch_scaled_l2(strength: ScalarOrSchedule, mask: masks.Mask = None, *,
                    convention: Literal["half", "seed"] = "half"
                    ) -> optax.GradientTransformationExtraArgs:
    """Seed 000's batch regularization: L2 with strength ``lambda_b = lambda / b`` per batch.

    The batch size ``b`` is given at every step, ``tx.update(grads, state, params,
    batch_size=b)``, as a Python int or a (traced) array: a jitted step does not recompile when
    ``b`` changes (pass it as an array argument). Seed 000 writes the step as
    ``theta <- theta - eta * grad(L + lambda_b * sum w^2)``; the convention picks the penalty:

    ==================  ===========================  ====================  =====================
    ``convention``      penalty added to batch loss  gradient added        same as
    ==================  ===========================  ====================  =====================
    ``"half"`` default  ``lambda_b/2 * sum w^2``     ``lambda/b * w``      ``add_l2(lambda/b)``
    ``"seed"``          ``lambda_b * sum w^2``       ``2 * lambda/b * w``  ``add_l2(2*lambda/b)``
    ==================  ===========================  ====================  =====================

    ``"half"`` matches the ``lambda/2 * R`` convention of :func:`add_l2`; ``"seed"`` reproduces
    seed 000's update literally.

    Args:
      strength: ``lambda >= 0``, a float or a schedule ``count -> value``.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).
      convention: ``"half"`` or ``"seed"``, see the table.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; its ``update`` requires the keyword
      ``batch_size``: an integer scalar (``TypeError`` if missing, a float, a bool or not a
      scalar; ``ValueError`` if a concrete value is ``< 1``). A traced ``batch_size`` (an
      argument of a jitted step) can only be checked when the step runs under
      :func:`jax.experimental.checkify.checkify`, which then reports a value ``< 1``
      (``checkify.debug_check``)::

          err, out = checkify.checkify(jax.jit(step))(state, batch, b)
          err.throw()

    Examples:
      The batch size comes with every ``update``; chained with SGD it is forwarded:

      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"kernel": jnp.array([1.0, -2.0])}
      >>> tx = jaxreg.batch_scaled_l2(0.5)
      >>> state = tx.init(params)
      >>> for b in (10, 50):
      ...     updates, state = tx.update({"kernel": jnp.zeros(2)}, state, params, batch_size=b)
      ...     print(b, [round(float(u), 3) for u in updates["kernel"]])
      10 [0.05, -0.1]
      50 [0.01, -0.02]
      >>> sgd = optax.chain(jaxreg.batch_scaled_l2(0.5), optax.sgd(1.0))
      >>> updates, _ = sgd.update({"kernel": jnp.zeros(2)}, sgd.init(params), params, batch_size=10)
      >>> [round(float(u), 3) for u in updates["kernel"]]
      [-0.05, 0.1]
    """
    check_hyperparam("strength", strength)
    check_choice("convention", convention, _CONVENTION_FACTOR)

    def leaf(g, w, strength, batch_size):
        return g + batch_scaled_strength(strength, batch_size, convention) * w

    return leafwise("batch_scaled_l2", leaf, {"strength": strength}, mask,
                    lambda **extra_args: {"batch_size": _step_batch_size(**extra_args)})
