"""Weight penalties as functions of the params: the ``R(w)`` that the transforms differentiate.

Seed 003 writes the regularized objective as ``J(w) = L(w) + lambda/2 * R(w)`` with
``R(w) = sum w^2``; these functions are the unit penalties, without strength:

* :func:`l2`: ``sum w^2`` over the masked leaves (so ``jax.grad`` of ``s/2 * l2`` is
  ``s * w``, what :func:`jaxreg.add_l2` ``(s)`` adds);
* :func:`l1`: ``sum |w|`` (``s * l1`` is what :func:`jaxreg.add_l1` ``(s)`` differentiates);
* :func:`elastic_net`: ``l1_strength * sum |w| + l2_strength/2 * sum w^2``, the penalty of
  :func:`jaxreg.proximal_elastic_net` and of ``add_l1(l1_strength) + add_l2(l2_strength)``.

``mask`` is resolved by :func:`jaxreg.masks.resolve` (default: kernels only). Sums are taken in
the default float dtype (float32, float64 under x64), so bfloat16 params are summed in float32
and the result is a float32 (float64) scalar. Pure functions: jit, grad and vmap safe.
"""

import jax
import jax.numpy as jnp

from jaxreg.transforms import masks


def _masked_sum(fn, params, mask) -> jax.Array:
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    flags = jax.tree.leaves(masks.resolve(mask, params))
    total = jnp.zeros([], dtype)
    for keep, w in zip(flags, jax.tree.leaves(params)):
        if keep:
            total = total + jnp.sum(fn(jnp.asarray(w).astype(dtype)))
    return total


def l2(params, mask: masks.Mask = None) -> jax.Array:
    """``R(w) = sum w^2`` over the masked leaves (seed 003's ``R``; no factor 1/2).

    Args:
      params: a pytree of arrays.
      mask: which leaves count (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      A scalar in the default float dtype.
    """
    return _masked_sum(jnp.square, params, mask)


def l1(params, mask: masks.Mask = None) -> jax.Array:
    """``sum |w|`` over the masked leaves; arguments and result as for :func:`l2`."""
    return _masked_sum(jnp.abs, params, mask)


def elastic_net(params, l1_strength, l2_strength, mask: masks.Mask = None) -> jax.Array:
    """``l1_strength * sum |w| + l2_strength/2 * sum w^2`` over the masked leaves.

    The L2 half carries the same ``1/2`` as ``lambda/2 * R`` in :func:`l2`'s convention, so
    scikit-learn's ``ElasticNet(alpha, l1_ratio)`` penalty is
    ``elastic_net(params, alpha * l1_ratio, alpha * (1 - l1_ratio))``.

    Args:
      params: a pytree of arrays.
      l1_strength: weight of ``sum |w|``.
      l2_strength: weight of ``sum w^2 / 2``.
      mask: which leaves count (:mod:`jaxreg.masks`; default kernels only).

    Returns:
      A scalar in the default float dtype.
    """
    return l1_strength * l1(params, mask) + l2_strength / 2 * l2(params, mask)
