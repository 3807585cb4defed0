"""Penalty gradients as optax gradient transformations.

Each transform adds the gradient of a weight penalty ``R(w)`` to the incoming updates, so that
``optax.chain(jaxreg.add_l2(s), optax.sgd(lr))`` minimizes ``L(w) + R(w)`` from the gradient of
``L`` alone. The penalties are tabled once, with the behaviour every transform shares (masks,
schedules, validation, dtypes), in the documentation page "Conventions"
(``docs/conventions.md``); their sources in "The formulas and their sources"
(``docs/formulas.md``).
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

    The maths of :func:`optax.add_decayed_weights`, with jaxreg's mask default (kernels
    only) and input validation (``docs/formulas.md``, the regularized objective).

    Args:
      strength: ``lambda >= 0``, a float or a schedule ``count -> value``.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> params = {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0])}
      >>> tx = jaxreg.add_l2(0.1)  # the bias is not regularized (kernels only)
      >>> updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
      >>> [round(float(u), 3) for u in updates["kernel"]], float(updates["bias"][0])
      ([0.1, -0.2], 0.0)
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
    """``updates + strength / num_examples * direction(params)`` (the ``lambda/m`` forms)."""
    check_hyperparam("strength", strength)
    check_hyperparam("num_examples", num_examples, schedule=False, positive=True, integer=True)
    return _add_penalty_gradient(name, direction, strength, mask, factor=1.0 / num_examples)


def data_scaled_l2(strength: ScalarOrSchedule, num_examples: int, mask: masks.Mask = None
                   ) -> optax.GradientTransformationExtraArgs:
    """Add ``lambda/m * w``: the gradient of ``lambda/(2m) * sum w^2``, ``m`` the training set size.

    It weighs like one more example of a mean loss over the data set (``docs/formulas.md``).

    Args:
      strength: ``lambda >= 0``, a float or a schedule ``count -> value``.
      num_examples: ``m > 0``, the training set size.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Examples:
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
    """Add ``lambda/m * sign(w)``: a subgradient of ``lambda/m * sum abs(w)``.

    Arguments and result as for :func:`data_scaled_l2`.

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
    """The L2 strength :func:`batch_scaled_l2` applies at batch size ``b``.

    ``lambda / b`` (``"half"``) or ``2 lambda / b`` (``"seed"``): the gradient added is this
    times ``w``. The one home of the formula (the engine's histories and sweeps call it).

    Args:
      strength: ``lambda``, a number or an array.
      batch_size: ``b``, a number or an array.
      convention: ``"half"`` or ``"seed"`` (see :func:`batch_scaled_l2`).

    Returns:
      ``lambda / b`` or ``2 lambda / b``, a number or an array.

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
    """L2 with strength ``lambda_b = lambda / b`` at each step, ``b`` the batch size.

    Adds ``(lambda/b) w``, the gradient of ``lambda_b/2 * sum w^2`` (``"half"``), or
    ``2 (lambda/b) w`` (``"seed"``: ``docs/formulas.md``). ``b`` comes with every
    ``update(..., batch_size=b)``, an int or a traced integer array (``docs/conventions.md``).

    Args:
      strength: ``lambda >= 0``, a float or a schedule ``count -> value``.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).
      convention: ``"half"`` or ``"seed"``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` needs ``batch_size``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"kernel": jnp.array([1.0, -2.0])}
      >>> tx = optax.chain(jaxreg.batch_scaled_l2(0.5), optax.sgd(1.0))
      >>> updates, _ = tx.update({"kernel": jnp.zeros(2)}, tx.init(params), params, batch_size=10)
      >>> [round(float(u), 3) for u in updates["kernel"]]
      [-0.05, 0.1]
    """
    check_hyperparam("strength", strength)
    check_choice("convention", convention, _CONVENTION_FACTOR)

    def leaf(g, w, strength, batch_size):
        return g + batch_scaled_strength(strength, batch_size, convention) * w

    return leafwise("batch_scaled_l2", leaf, {"strength": strength}, mask,
                    lambda **extra_args: {"batch_size": _step_batch_size(**extra_args)})
