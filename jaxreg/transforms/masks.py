"""Masks: which parameters a regularizer touches.

A mask is ``None`` (:func:`kernels_only`, the default), ``True`` or ``"all"``
(:func:`all_leaves`), a function ``params -> pytree of bools`` (e.g. :func:`by_path`), or a
pytree of bools with the params' structure or a prefix of it (as :func:`optax.masked`).
:func:`resolve` is the one place that interprets them, always on the **params**. The forms,
the errors and the :func:`optax.inject_hyperparams` pitfall: the documentation page
"Conventions", section "Masks" (``docs/conventions.md``).
"""

import re
import warnings
from collections.abc import Callable
from typing import Any, Literal, TypeGuard

import jax
import numpy as np

from jaxreg._validate import require
from jaxreg.transforms.ravel import Raveled

PyTree = Any
Mask = None | bool | Literal["all"] | PyTree | Callable[[PyTree], PyTree]

KERNEL_NAMES = frozenset({"kernel", "embedding"})
"""Leaf names that are always regularized by :func:`kernels_only`."""

NON_KERNEL_NAMES = frozenset({"bias", "scale", "mean", "var"})
"""Leaf names that :func:`kernels_only` never regularizes (biases, norm scales, batch stats)."""


def path_str(path: tuple) -> str:
    """``"/"``-joined key path of a leaf, e.g. ``"params/Dense_0/kernel"`` or ``"layers/0"``."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _leaf_name(path: tuple) -> str | None:
    """The name of a leaf: its last dict key or attribute name; ``None`` for tuple/list items."""
    # flax NNX state: a Variable (nnx.Param) flattens to its array under the attribute "value";
    # the leaf's name is the key of the Variable itself.
    if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
            path[-1].name == "value"):
        path = path[:-1]
    if not path:
        return None
    key = path[-1]
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    return None


def _is_kernel(path: tuple, leaf) -> bool:
    name = _leaf_name(path)
    if name in KERNEL_NAMES:
        return True
    if name in NON_KERNEL_NAMES:
        return False
    return np.ndim(leaf) >= 2


def kernels_only(params: PyTree) -> PyTree:
    """Mask of the weight matrices: the default mask of every jaxreg regularizer.

    Per leaf, from its name (last dict key or attribute of its path): ``kernel`` and
    ``embedding`` are ``True``; ``bias``, ``scale``, ``mean``, ``var`` are ``False``; any other
    leaf (unnamed ones included) is ``True`` iff ``ndim >= 2``, so a 1-D weight vector needs
    ``mask=True``.

    Args:
      params: a pytree of arrays (e.g. flax ``variables["params"]``).

    Returns:
      A pytree of bools with the structure of ``params``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
      ...           "BatchNorm_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}}
      >>> jaxreg.masks.kernels_only(params)
      {'BatchNorm_0': {'bias': False, 'scale': False}, 'Dense_0': {'bias': False, 'kernel': True}}
    """
    return jax.tree_util.tree_map_with_path(_is_kernel, params)


def by_path(pattern: str) -> Callable[[PyTree], PyTree]:
    """Mask function selecting the leaves whose ``"/"``-joined path matches a regex.

    The path of a leaf joins its keys with ``"/"`` (see :func:`path_str`), e.g.
    ``"Dense_0/kernel"``; the pattern is searched anywhere in it (:func:`re.search`), so anchor
    it with ``^``/``$`` for an exact match.

    Args:
      pattern: a regular expression, e.g. ``r"Dense_\\d+/kernel$"``.

    Returns:
      A callable ``params -> pytree of bools``.
    """
    regex = re.compile(pattern)

    def mask_fn(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: regex.search(path_str(path)) is not None, params
        )

    return mask_fn


def all_leaves(params: PyTree) -> PyTree:
    """Mask selecting every leaf of ``params`` (what ``mask=True`` / ``"all"`` means)."""
    return jax.tree.map(lambda _: True, params)


_INJECT_HINT = ("optax.inject_hyperparams takes a mask function for a schedule and passes its "
                "value at the step count: use optax.inject_hyperparams(f, "
                "static_args=(\"mask\",))")


def is_mask_fn(mask: Mask) -> TypeGuard[Callable[[PyTree], PyTree]]:
    """Whether ``mask`` is a mask *function* rather than a (possibly callable) pytree of bools:
    optax's rule (``optax.masked``), every leaf of ``jax.tree.map(callable, mask)`` true."""
    flags = jax.tree.leaves(jax.tree.map(callable, mask))
    return bool(flags) and all(flags)


def check(mask: Mask) -> Mask:
    """``mask``, or a ``TypeError`` if it is a string other than ``"all"``: a regex selects
    leaves through :func:`by_path` (``mask=jaxreg.masks.by_path("bias$")``), never as a bare
    string, which ``"all"`` would make ambiguous. Called when a transform is built."""
    require(not isinstance(mask, str) or mask == "all", "mask",
            'None, True, "all", a pytree of bools or a function such as '
            "jaxreg.masks.by_path(regex) (a regex string is not a mask)", mask, TypeError)
    return mask


def resolve(mask: Mask, params: PyTree) -> PyTree:
    """Turn any accepted ``mask`` argument into a full pytree of bools matching ``params``.

    A prefix mask is broadcast to the subtrees it covers.

    Args:
      mask: ``None``, ``True``, ``"all"``, a function ``params -> mask`` or a pytree of bools
        (callable or not, see :func:`is_mask_fn`).
      params: the params the mask applies to.

    Returns:
      A pytree of Python bools with exactly the structure of ``params``; for a
      :class:`~jaxreg.transforms.ravel.Raveled` ``params``, a ``Raveled`` of per-buffer masks
      (:meth:`~jaxreg.transforms.ravel.Raveled.mask`) resolved on the original structure.

    Raises:
      ValueError: the mask's structure is not the params' or a prefix of it; ``mask=False``.
      TypeError: a mask leaf is not a bool (static bools are needed); a string other than
        ``"all"`` (:func:`check`).
    """
    if isinstance(params, Raveled):  # jaxreg.raveled: resolved on the original structure
        return params.mask(resolve(mask, params.layout.skeleton()))
    if mask is None:
        tree = kernels_only(params)
        if jax.tree.leaves(params) and not any(jax.tree.leaves(tree)):
            # e.g. under optax.flatten, every parameter is one 1-D vector: silently
            # regularizing nothing would be worse than a false alarm.
            warnings.warn("the default mask (kernels_only) selects no leaf of these params, so "
                          "the regularizer does nothing; pass mask=True (all leaves), a pytree "
                          "of bools or jaxreg.masks.by_path(...)", stacklevel=2)
        return tree
    if check(mask) is True or isinstance(mask, str):  # the one string check() lets by: "all"
        return all_leaves(params)
    tree = mask(params) if is_mask_fn(mask) else mask
    if isinstance(tree, (bool, np.bool_)) and not tree:
        raise ValueError("`mask` is False: no parameter would be regularized (drop the "
                         "regularizer instead). If you passed a mask function, " + _INJECT_HINT)
    mask_def: Any = jax.tree.structure(tree)  # a jaxlib PyTreeDef, opaque to mypy (no stubs)
    try:
        subtrees = mask_def.flatten_up_to(params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "`mask` does not match the structure of the params.\n"
            f"  mask:   {mask_def}\n  params: {jax.tree.structure(params)}"
        ) from err
    flags = jax.tree.leaves(tree)
    bad = [m for m in flags if not isinstance(m, (bool, np.bool_))]
    if bad:
        raise TypeError("`mask` leaves must be Python bools (static); got "
                        f"{type(bad[0]).__name__}: {bad[0]!r}. If you passed a mask function, "
                        + _INJECT_HINT)
    return mask_def.unflatten(
        [jax.tree.map(lambda _, m=bool(m): m, sub) for m, sub in zip(flags, subtrees, strict=True)]
    )
