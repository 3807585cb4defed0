"""Proximal steps for L1 and elastic-net penalties: exact zeros, unlike subgradients.

Placed last in a chain, after the optimizer's update ``u = -lr * g``, they replace the step
``w + u`` by ``w' = S(w + u, lr * l1) / (1 + lr * l2)``, with ``S(z, t) = sign(z) * max(abs(z)
- t, 0)`` the soft-thresholding operator (ISTA with ``optax.sgd(lr)`` before it). Which ``lr``
to pass, exact zeros, adaptive optimizers and scikit-learn's equivalents: the documentation
page "Conventions", section "Proximal steps" (``docs/conventions.md``).
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
    """Proximal step for ``l1 * sum abs(w) + l2/2 * sum w^2``; put it last in the chain.

    ``w' = S(w + u, lr * l1) / (1 + lr * l2)``, returned as the update ``w' - w``.

    Args:
      l1: L1 strength ``>= 0``, a float or a schedule ``count -> value``.
      l2: L2 strength ``>= 0``, a float or a schedule.
      learning_rate: the optimizer's step size, the same float or schedule.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` that requires ``params``.

    Examples:
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
    """Proximal step for ``strength * sum abs(w)``; put it last in the chain.

    ``w' = S(w + u, lr * strength)``, returned as the update ``w' - w``: exact zeros.

    Args:
      strength: ``>= 0``, a float or a schedule ``count -> value``.
      learning_rate: the optimizer's step size, the same float or schedule.
      mask: which leaves to regularize (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` that requires ``params``.

    Examples:
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
