"""Proximal steps for L1 and elastic-net penalties: exact zeros, unlike subgradients.

optax has no proximal operator (optax issues #237 and #738 ask for one), so these transforms
provide it. Placed LAST in a chain, after the optimizer has produced its update
``u = -lr * g``, they replace the plain step ``w + u`` by the proximal step

    ``w' = prox(w + u)``,   returned as the update ``w' - w``

with the soft-thresholding operator ``S(z, t) = sign(z) * max(|z| - t, 0)``:

* :func:`proximal_l1`: ``w' = S(w + u, lr * l1)``, the proximal map of ``l1 * sum |w|``;
* :func:`proximal_elastic_net`: ``w' = S(w + u, lr * l1) / (1 + lr * l2)``, the proximal map
  of ``l1 * sum |w| + l2/2 * sum w^2`` (:func:`jaxreg.penalties.elastic_net`).

With ``optax.sgd(lr)`` before it and the same ``lr`` this is ISTA (proximal gradient descent),
which converges to the minimizer of ``L(w) + penalty(w)``. ``lr`` must be the step size
actually applied: after a ``reduce_on_plateau`` with scale ``s``, ``s * lr``, else the problem
solved has ``l1 / s`` (``jaxreg.train.make_optimizer`` passes ``s * lr``). Coordinates that the
threshold clears come out exactly ``0.0`` (the update is ``-w``, and ``w + (-w) == 0`` exactly in
floating point when updates and params share a dtype). With adaptive optimizers (Adam, ...) the
scalar ``lr`` here is the base learning rate, and the step is the usual proximal heuristic.

Example: ``optax.chain(optax.sgd(lr), jaxreg.proximal_l1(alpha, lr))``.
"""

import jax.numpy as jnp
import optax

from jaxreg._validate import check_hyperparam
from jaxreg.transforms import masks
from jaxreg.transforms._leafwise import ScalarOrSchedule, leafwise


def _prox_elastic_net(u, w, l1, l2, learning_rate):
    z = w + u
    shrunk = jnp.sign(z) * jnp.maximum(jnp.abs(z) - learning_rate * l1, 0)
    return shrunk / (1 + learning_rate * l2) - w


def proximal_elastic_net(l1: ScalarOrSchedule, l2: ScalarOrSchedule,
                         learning_rate: ScalarOrSchedule, mask: masks.Mask = None
                         ) -> optax.GradientTransformationExtraArgs:
    """Proximal step for ``l1 * sum |w| + l2/2 * sum w^2``; put it last in the chain.

    ``w' = S(w + u, lr * l1) / (1 + lr * l2)`` with ``S`` the soft-thresholding operator.
    scikit-learn's ``ElasticNet(alpha, l1_ratio)`` penalty is
    ``alpha * l1_ratio * |w|_1 + alpha * (1 - l1_ratio)/2 * |w|^2``, i.e.
    ``l1 = alpha * l1_ratio`` and ``l2 = alpha * (1 - l1_ratio)``.

    Args:
      l1: L1 strength ``>= 0``, a float or a schedule ``count -> value``.
      l2: L2 strength ``>= 0``, a float or a schedule.
      learning_rate: the step size of the optimizer before it: the same float or schedule
        (both count steps from 0, so they stay in step).
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` that requires ``params``.

    Examples:
      ``prox(w) = soft_threshold(w, eta l1) / (1 + eta l2)``, here with ``eta = 0.1``:

      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"kernel": jnp.array([1.0, 0.05, -0.5])}
      >>> tx = optax.chain(optax.sgd(0.1), jaxreg.proximal_elastic_net(1.0, 1.0, learning_rate=0.1))
      >>> updates, _ = tx.update({"kernel": jnp.zeros(3)}, tx.init(params), params)
      >>> [round(float(w), 4) for w in optax.apply_updates(params, updates)["kernel"]]
      [0.8182, 0.0, -0.3636]
    """
    for name, value in (("l1", l1), ("l2", l2), ("learning_rate", learning_rate)):
        check_hyperparam(name, value)
    return leafwise("proximal_elastic_net", _prox_elastic_net,
                    {"l1": l1, "l2": l2, "learning_rate": learning_rate}, mask)


def proximal_l1(strength: ScalarOrSchedule, learning_rate: ScalarOrSchedule,
                mask: masks.Mask = None) -> optax.GradientTransformationExtraArgs:
    """Proximal step for ``strength * sum |w|``; put it last in the chain.

    ``w' = S(w + u, lr * strength)``. scikit-learn's ``Lasso(alpha)`` minimizes
    ``1/(2n) |y - Xw|^2 + alpha |w|_1``: with the loss ``1/(2n) |y - Xw|^2``, take
    ``strength = alpha``.

    Args:
      strength: ``>= 0``, a float or a schedule ``count -> value``.
      learning_rate: the step size of the optimizer before it: the same float or schedule
        (both count steps from 0, so they stay in step).
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` that requires ``params``.

    Examples:
      After a plain SGD step, soft-thresholding by ``strength * learning_rate = 0.1`` sets the
      small weight to exactly zero and shrinks the others:

      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"kernel": jnp.array([1.0, 0.05, -0.5])}
      >>> tx = optax.chain(optax.sgd(0.1), jaxreg.proximal_l1(1.0, learning_rate=0.1))
      >>> updates, _ = tx.update({"kernel": jnp.zeros(3)}, tx.init(params), params)
      >>> [round(float(w), 3) for w in optax.apply_updates(params, updates)["kernel"]]
      [0.9, 0.0, -0.4]
    """
    check_hyperparam("strength", strength)
    check_hyperparam("learning_rate", learning_rate)
    return leafwise("proximal_l1",
                    lambda u, w, strength, learning_rate: _prox_elastic_net(
                        u, w, strength, 0.0, learning_rate),
                    {"strength": strength, "learning_rate": learning_rate}, mask)
