"""Post-training tools for batch statistics: PreciseBN recalibration and inference folding.

Both are written once over :class:`Arrays`, the named arrays of one layer (``kernel``,
``bias``, ``scale``, ``mean``, ``var``), read from a flax linen model's variables
(:func:`linen_arrays`) or a flax NNX module's attributes (:func:`nnx_arrays`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import meta, unfreeze

from jaxreg._validate import require
from jaxreg.batchnorm import core, linen
from jaxreg.batchnorm import nnx as bnnnx

Path = str | Sequence[str]
Array = jax.Array
Moments = Mapping[str, Any]
STATISTICS = ("mean", "var")


class Arrays(NamedTuple):
    """The named arrays of one layer: ``get(name)`` (None if absent), ``set(name, value)``."""

    name: str
    get: Callable[[str], Any]
    set: Callable[[str, Any], None]


def linen_arrays(variables: dict[str, Any], path: Path) -> Arrays:
    """The arrays of the linen layer at ``path``: ``mean``/``var`` in ``batch_stats``, the
    others in ``params`` (a missing ``params`` entry reads as empty)."""
    path = tuple(path.split("/")) if isinstance(path, str) else tuple(path)

    def home(name: str) -> dict[str, Any]:
        collection = variables["batch_stats" if name in STATISTICS else "params"]
        if name in (*STATISTICS, "kernel") or _has(collection, path):
            return _get(collection, path)  # a KeyError naming the path if absent
        return {}

    return Arrays("/".join(path), lambda name: home(name).get(name),
                  lambda name, value: home(name).__setitem__(name, value))


def nnx_arrays(module: nnx.Module) -> Arrays:
    """The arrays of an NNX module, its ``nnx.Variable`` attributes (replaced when set, so a
    complex running mean stays complex)."""

    def get(name: str) -> Any:
        variable = getattr(module, name, None)
        return None if variable is None else variable[...]

    return Arrays(type(module).__name__, get,
                  lambda name, value: getattr(module, name).set_value(value))


@overload
def recalibrate_batch_stats(model: nnx.Module, batches: Iterable[Any], /) -> nnx.Module: ...


@overload
def recalibrate_batch_stats(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
                            batches: Iterable[Any], /) -> dict[str, Any]: ...


def recalibrate_batch_stats(model: Any, /, *args: Any) -> Any:
    """PreciseBN (Wu & Johnson 2021): replace the running statistics with population ones.

    NNX: ``recalibrate_batch_stats(model, batches) -> model``, updated in place (its BatchNorm
    layers run in training mode meanwhile; the rest keeps its mode). Linen:
    ``recalibrate_batch_stats(apply_fn, variables, batches) -> new variables``, where
    ``apply_fn(variables, batch, mutable=...)`` applies the model in training mode and forwards
    ``mutable`` (e.g. ``lambda v, x, **kw: model.apply(v, x, train=True, **kw)``). Each
    :class:`~jaxreg.nn.BatchNorm` layer's ``mean``/``var`` become those of its inputs over all
    batches and calls together (masked elements excluded), ``var = M2 / (N - ddof)``: pooled
    exactly in float64 with Chan et al.'s ``M2 = M2_a + M2_b + delta^2 N_a N_b / N``. One
    ``jax.jit`` compilation; other variables are unchanged.

    Returns:
      NNX: the model. Linen: new variables.
    """
    nnx_model = isinstance(model, nnx.Module)
    require(len(args) == (1 if nnx_model else 2), "arguments",
            "(model, batches) for an NNX model, (apply_fn, variables, batches) for linen",
            f"({type(model).__name__}, {len(args)} more)")
    if nnx_model:
        return _recalibrate_nnx(model, args[0])
    apply_fn, (variables, batches) = model, args

    @jax.jit
    def step(v: Any, batch: Any) -> Any:
        _, mutated = apply_fn(v, batch, mutable=["batch_stats", linen.BATCH_MOMENTS])
        return mutated.get(linen.BATCH_MOMENTS, {})

    new = _copy(variables)
    pooled = _pool(_layer_moments(jax.device_get(step(variables, batch))) for batch in batches)
    _write_population(pooled, lambda path: linen_arrays(new, path))
    return new


def _recalibrate_nnx(model: nnx.Module, batches: Iterable[Any]) -> nnx.Module:
    layers = {path: m for path, m in nnx.iter_modules(model) if isinstance(m, bnnnx.BatchNorm)}
    saved = {path: (m.use_running_average, m.record_moments) for path, m in layers.items()}
    try:
        for m in layers.values():
            m.use_running_average, m.record_moments = False, True
        graphdef, state = nnx.split(model)

        @jax.jit
        def step(state: Any, batch: Any) -> Any:
            m = nnx.merge(graphdef, state)
            m(batch)
            return nnx.state(m, bnnnx.BatchMoments)

        pooled = _pool(((path[:-1], calls.get_value()) for path, calls in
                        nnx.to_flat_state(jax.device_get(step(state, batch))))
                       for batch in batches)
    finally:
        for path, m in layers.items():
            m.use_running_average, m.record_moments = saved[path]
    _write_population(pooled, lambda path: nnx_arrays(layers[path]))
    return model


def _pool(per_batch: Iterable[Iterable[tuple[Any, Sequence[Moments]]]]
          ) -> dict[Any, dict[str, np.ndarray]]:
    """Each layer's moments over all batches and calls: ``{path: (count, mean, m2, ddof)}``."""
    pooled: dict[Any, dict[str, np.ndarray]] = {}
    for layers in per_batch:
        for path, calls in layers:
            for moments in calls:
                pooled[path] = _chan_merge(pooled.get(path), moments)
    if not pooled:
        raise ValueError(
            "recalibrate_batch_stats: no batches, or no jaxreg BatchNorm layer ran in training "
            "mode (linen: does apply_fn put the model in training mode and forward `mutable`?)"
        )
    return pooled


def _write_population(pooled: Mapping[Any, Moments], arrays: Callable[[Any], Arrays]) -> None:
    """Sets each layer's running statistics to ``mean`` and ``M2 / (N - ddof)``, in their
    dtypes (a complex mean stays complex)."""
    for path, m in pooled.items():
        layer = arrays(path)
        mean_dtype = jnp.result_type(layer.get("mean"))
        if np.iscomplexobj(m["mean"]):
            mean_dtype = jnp.promote_types(mean_dtype, jnp.complex64)
        layer.set("mean", jnp.asarray(m["mean"], mean_dtype))
        layer.set("var", jnp.asarray(m["m2"] / (m["count"] - m["ddof"]),
                                     jnp.result_type(layer.get("var"))))


def _layer_moments(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
                   ) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(layer path, tuple of sown moment dicts) for every layer in a ``batch_moments`` tree."""
    for key, value in tree.items():
        if key == "moments":
            yield prefix, value
        else:
            yield from _layer_moments(value, prefix + (key,))


def _chan_merge(a: dict[str, np.ndarray] | None, b: Moments) -> dict[str, np.ndarray]:
    """Exact merge of two (count, mean, M2) summaries in float64."""
    b = {k: np.asarray(v, np.float64) for k, v in b.items()}
    if a is None:
        return b
    count = a["count"] + b["count"]
    delta = b["mean"] - a["mean"]
    return {
        "count": count,
        "mean": a["mean"] + delta * (b["count"] / count),
        "m2": a["m2"] + b["m2"] + delta**2 * (a["count"] * b["count"] / count),
        "ddof": b["ddof"],
    }


def fold_batchnorm(
    variables: Mapping[str, Any] | nnx.Module,
    pairs: Iterable[tuple[Any, Any]],
    *,
    epsilon: float | None = None,
    remove_bn: bool = False,
) -> Any:
    """Fold inference-mode BatchNorm layers into the Dense/Conv layer that feeds each of them.

    With ``s = scale / sqrt(var + epsilon)`` per output feature, the BatchNorm of ``W x + b``
    is ``(W * s) x + b'``, ``b' = (b - mean) * s + bias``
    (:func:`jaxreg.batchnorm.core.fold_scale_shift`).

    Args:
      variables: a linen model's variables (``params`` and ``batch_stats``), or an NNX model
        in ``.eval()`` mode (the folded model is only right in inference).
      pairs: ``(layer, bn)`` pairs; linen: paths (tuples of names or ``"/"``-joined strings,
        e.g. ``("Conv_0", "BatchNorm_0")``); NNX: the submodules (``(model.conv, model.bn)``).
        The layer's ``kernel`` has the output features last; the BatchNorm has ``axis=-1``.
      epsilon: linen: the BatchNorm layers' ``epsilon``, required (``jaxreg.models`` use
        1e-3, flax 1e-5). NNX: read from each layer; if given it must match.
      remove_bn: ``False``: the same model, each BatchNorm an identity (``scale = 1``,
        ``mean = 0``, ``var = 1 - epsilon``), ``b'`` in the layer's ``bias`` if it has one,
        else in the BatchNorm's. ``True`` (linen only): variables for the model built without
        those BatchNorm layers and with ``use_bias=True`` on the folded layers.

    Returns:
      Linen: new variables (the input is unchanged). NNX: the model, folded in place.
    """
    pairs = list(pairs)
    model: Any
    if isinstance(variables, nnx.Module):
        require(not remove_bn, "remove_bn", "False for an NNX model, whose structure is its "
                "code (remove_bn=True is for linen variables)", remove_bn)
        for i, (_, bn) in enumerate(pairs):
            require(bn.use_running_average is True, f"pairs[{i}][1].use_running_average",
                    "True (call model.eval() before folding: the folded model is only right "
                    "in inference)", bn.use_running_average)
            require(epsilon is None or epsilon == bn.epsilon, "epsilon",
                    f"the BatchNorm module's epsilon={bn.epsilon!r} (or None)", epsilon)
        model = variables
        folds = [(nnx_arrays(layer), nnx_arrays(bn), bn.epsilon) for layer, bn in pairs]
    else:
        require(epsilon is not None, "epsilon",
                "the BatchNorm layers' epsilon (jaxreg.models use 1e-3, flax.linen/jaxreg.nn."
                "BatchNorm default to 1e-5); pass epsilon=", epsilon)
        model = _copy(variables)
        folds = [(linen_arrays(model, layer), linen_arrays(model, bn), epsilon)
                 for layer, bn in pairs]
    for layer, bn, _ in folds:  # every pair is checked before anything changes
        stats, kernel = bn.get("mean").shape, layer.get("kernel").shape
        if stats != kernel[-1:]:
            raise ValueError(f"fold_batchnorm: {bn.name} has statistics of shape {stats}, but "
                             f"{layer.name} has {kernel[-1]} output features")
        if not remove_bn and layer.get("bias") is None and bn.get("bias") is None:
            raise ValueError(
                f"fold_batchnorm: neither {layer.name} nor {bn.name} has a bias to hold the "
                "folded shift; use a layer with use_bias=True (linen: or remove_bn=True)")
    for layer, bn, eps in folds:
        _fold(layer, bn, eps, remove_bn)
    if remove_bn:
        for _, bn, _ in folds:
            for collection in ("params", "batch_stats"):
                _delete(model[collection], tuple(bn.name.split("/")))
    return model


def _fold(layer: Arrays, bn: Arrays, epsilon: float, remove_bn: bool) -> None:
    """One pair of :func:`fold_batchnorm`: the folded kernel and shift, the BatchNorm made an
    identity (unless it is removed)."""
    kernel, layer_bias, bn_bias = layer.get("kernel"), layer.get("bias"), bn.get("bias")
    scale = bn.get("scale")
    s, shift = core.fold_scale_shift(0.0 if layer_bias is None else layer_bias, scale, bn_bias,
                                     bn.get("mean"), bn.get("var"), epsilon=epsilon)
    layer.set("kernel", (kernel * s).astype(kernel.dtype))
    if remove_bn:
        layer.set("bias", shift.astype(kernel.dtype))
        return
    if layer_bias is not None:
        layer.set("bias", shift.astype(layer_bias.dtype))
        shift = jnp.zeros_like(shift)
    if scale is not None:
        bn.set("scale", jnp.ones_like(scale))
    if bn_bias is not None:
        bn.set("bias", shift.astype(bn_bias.dtype))
    mean, var = bn.get("mean"), bn.get("var")
    bn.set("mean", jnp.zeros_like(mean))
    bn.set("var", jnp.full_like(var, 1.0 - epsilon))


def _copy(variables: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested dicts (leaves shared) with flax boxes and FrozenDicts removed."""
    return jax.tree_util.tree_map(lambda v: v, unfreeze(meta.unbox(variables)))


def _get(tree: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    for key in path:
        if key not in tree:
            raise KeyError(f"no variables at {'/'.join(path)!r} (missing {key!r})")
        tree = tree[key]
    return tree


def _has(tree: Mapping[str, Any], path: Sequence[str]) -> bool:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return False
        tree = tree[key]
    return True


def _delete(tree: dict[str, Any], path: Sequence[str]) -> None:
    """Remove ``path`` from a nested dict, and parents left empty by the removal."""
    if not _has(tree, path):
        return
    *parents, last = path
    del _get(tree, parents)[last]
    if parents and not _get(tree, parents):
        _delete(tree, parents)
