"""Weight penalties as functions of the params: the ``R(w)`` that the transforms differentiate.

Unit penalties, without strength: ``l2 = sum w^2`` (no factor 1/2: ``J = L + lambda/2 * l2``
has the gradient :func:`jaxreg.add_l2` adds), ``l1 = sum abs(w)``, and ``elastic_net``. The
one table of penalties is in ``docs/conventions.md``. ``mask`` is resolved by
:func:`jaxreg.masks.resolve` (default: kernels only); sums are taken in the default float
dtype. Pure functions: jit, grad and vmap safe.
"""

import jax
import jax.numpy as jnp

from jaxreg.transforms import masks


def _masked_sum(fn, params, mask) -> jax.Array:
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    flags = jax.tree.leaves(masks.resolve(mask, params))
    total = jnp.zeros([], dtype)
    for keep, w in zip(flags, jax.tree.leaves(params), strict=True):
        if keep:
            total = total + jnp.sum(fn(jnp.asarray(w).astype(dtype)))
    return total


def l2(params, mask: masks.Mask = None) -> jax.Array:
    """``R(w) = sum w^2`` over the masked leaves (no factor 1/2).

    Args:
      params: a pytree of arrays.
      mask: which leaves count (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      A scalar in the default float dtype.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0])}
      >>> float(jaxreg.penalties.l2(params)), float(jaxreg.penalties.l2(params, mask="all"))
      (5.0, 14.0)
    """
    return _masked_sum(jnp.square, params, mask)


def l1(params, mask: masks.Mask = None) -> jax.Array:
    """``sum abs(w)`` over the masked leaves; arguments and result as for
    :func:`jaxreg.penalties.l2`."""
    return _masked_sum(jnp.abs, params, mask)


def elastic_net(params, l1_strength, l2_strength, mask: masks.Mask = None) -> jax.Array:
    """``l1_strength * sum abs(w) + l2_strength/2 * sum w^2`` over the masked leaves.

    The L2 half carries the same ``1/2`` as ``lambda/2 * R`` in :func:`l2`'s convention, so
    scikit-learn's ``ElasticNet(alpha, l1_ratio)`` penalty is
    ``elastic_net(params, alpha * l1_ratio, alpha * (1 - l1_ratio))``.

    Args:
      params: a pytree of arrays.
      l1_strength: weight of ``sum abs(w)``.
      l2_strength: weight of ``sum w^2 / 2``.
      mask: which leaves count (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      A scalar in the default float dtype.
    """
    return l1_strength * l1(params, mask) + l2_strength / 2 * l2(params, mask)
