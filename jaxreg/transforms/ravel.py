"""Many leaves, few kernels: run a transformation over per-dtype raveled buffers.

A pytree of ``n`` arrays becomes a :class:`Raveled` pytree of one 1-D buffer per dtype, so
an elementwise chain (Adam, SGD, jaxreg's penalties and proximal steps) runs one set of
kernels instead of ``n``. jaxreg masks are resolved on the original structure
(:func:`jaxreg.masks.resolve` sees through a :class:`Raveled`), so ``kernels_only`` keeps
working. Details and which inner transforms are valid: :func:`raveled`.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg._validate import require


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each leaf of a pytree lives in a :class:`Raveled`: its structure, the buffers'
    dtypes, and per leaf ``(buffer index, offset, shape, dtype)``. Static (hashable)."""

    treedef: Any
    dtypes: tuple[str, ...]
    leaves: tuple[tuple[int, int, tuple[int, ...], str], ...]

    def skeleton(self) -> Any:
        """The original pytree with :class:`jax.ShapeDtypeStruct` leaves (for masks)."""
        return self.treedef.unflatten(
            [jax.ShapeDtypeStruct(shape, dtype) for _, _, shape, dtype in self.leaves])


@jax.tree_util.register_pytree_node_class
class Raveled:
    """A pytree of arrays as one 1-D buffer per dtype (the pytree's children), with its
    static :class:`Layout`. :func:`ravel` builds it, :func:`unravel` undoes it."""

    def __init__(self, buffers: tuple, layout: Layout):
        self.buffers, self.layout = tuple(buffers), layout

    def tree_flatten(self):
        return self.buffers, self.layout

    @classmethod
    def tree_unflatten(cls, layout, buffers):
        return cls(buffers, layout)

    def mask(self, flags: Any) -> "Raveled":
        """Per-leaf bools of the original structure -> per-buffer masks: ``True``/``False``
        where a buffer is uniform, else a NumPy bool array (static)."""
        parts: list[list[np.ndarray]] = [[] for _ in self.layout.dtypes]
        for flag, (index, _, shape, _) in zip(jax.tree.leaves(flags), self.layout.leaves,
                                              strict=True):
            parts[index].append(np.full(int(np.prod(shape)), bool(flag)))
        out = []
        for part in parts:
            buffer = np.concatenate(part)
            out.append(bool(buffer[0]) if (buffer == buffer[0]).all() else buffer)
        return Raveled(tuple(out), self.layout)


def ravel(tree: Any) -> Raveled:
    """``tree``'s leaves raveled and concatenated per dtype (dtypes in sorted order)."""
    leaves, treedef = jax.tree.flatten(tree)
    dtypes = tuple(sorted({str(jnp.result_type(leaf)) for leaf in leaves}))
    parts: list[list[jax.Array]] = [[] for _ in dtypes]
    sizes = [0] * len(dtypes)
    where = []
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        index = dtypes.index(str(leaf.dtype))
        where.append((index, sizes[index], tuple(leaf.shape), str(leaf.dtype)))
        parts[index].append(leaf.ravel())
        sizes[index] += leaf.size
    buffers = tuple(p[0] if len(p) == 1 else jnp.concatenate(p) for p in parts)
    return Raveled(buffers, Layout(treedef, dtypes, tuple(where)))


def unravel(raveled: Raveled) -> Any:
    """The pytree that :func:`ravel` raveled (leaves sliced back out of the buffers)."""
    layout = raveled.layout
    leaves = [raveled.buffers[index][offset:offset + int(np.prod(shape))].reshape(shape)
              for index, offset, shape, _ in layout.leaves]
    return layout.treedef.unflatten(leaves)


def raveled(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` run once over one buffer per dtype instead of once per leaf.

    Params and updates are raveled (:func:`ravel`), ``inner`` updates the buffers, and the
    updates are split back; extra arguments are forwarded. For elementwise transforms and
    global reductions, not per-leaf ones. Bit-identical to the per-leaf chain op by op
    (``jax.disable_jit``; one-element leaves aside under Adam) and to ``optax.flatten(inner)``
    under jit; jitted against the per-leaf chain, within a few ulps (XLA's FMA contraction and
    ``x / c -> x * (1 / c)`` rewrite differ per program): ``docs/conventions.md``, "Many leaves".

    Args:
      inner: the transformation (e.g. an :func:`optax.chain`).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> tx = jaxreg.raveled(optax.chain(jaxreg.add_l2(0.5), optax.sgd(0.1)))
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> round(float(updates["w"][0, 0]), 6), round(float(updates["b"][0]), 6)
      (-0.15, -0.1)
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return inner.init(ravel(params))

    def update_fn(updates, state, params=None, **extra_args):
        flat_params = None if params is None else ravel(params)
        if updates is None:
            return inner.update(None, state, flat_params, **extra_args)
        flat_updates = ravel(updates)
        require(flat_params is None or flat_params.layout == flat_updates.layout, "updates",
                "a pytree with the params' structure, shapes and dtypes (jaxreg.raveled)",
                jax.tree.map(jnp.shape, updates))
        new_updates, state = inner.update(flat_updates, state, flat_params, **extra_args)
        return unravel(new_updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
