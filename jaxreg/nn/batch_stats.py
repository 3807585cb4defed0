"""Post-training tools for batch statistics: PreciseBN recalibration and inference folding.

Both take a flax linen model's variables or a flax NNX model (:mod:`jaxreg.nnx` layers).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import meta, unfreeze

from jaxreg.nn import functional as F
from jaxreg.nn.normalization import BATCH_MOMENTS

Path = str | Sequence[str]
Array = jax.Array


def recalibrate_batch_stats(
    apply_fn: Callable[..., Any] | nnx.Module,
    variables: Mapping[str, Any] | Iterable[Any],
    batches: Iterable[Any] | None = None,
) -> Any:
    """PreciseBN (Wu & Johnson 2021): replace the EMA running statistics with population ones.

    Linen: ``recalibrate_batch_stats(apply_fn, variables, batches) -> new variables``.
    NNX: ``recalibrate_batch_stats(model, batches) -> model``, the model's
    :class:`jaxreg.nnx.BatchNorm`/``BatchRenorm`` layers updated in place: each is switched to
    training mode with ``record_moments`` on while ``model(batch)`` runs (one ``jax.jit``
    compilation), then restored; the rest of the model (dropout) keeps its mode.

    Runs ``apply_fn(variables, batch, mutable=[...])`` (jit-compiled once, called per batch) for
    every batch, in training mode, and sets each :class:`~jaxreg.nn.BatchNorm` /
    :class:`~jaxreg.nn.BatchRenorm` layer's ``batch_stats/mean`` and ``batch_stats/var`` to the
    mean and variance of that layer's inputs over *all* batches together.

    ``apply_fn`` is ``model.apply`` with the model in training mode (its BatchNorm layers
    computing batch statistics), e.g. ``lambda v, x, **kw: model.apply(v, x, train=True, **kw)``;
    it must accept and forward the ``mutable`` keyword and return ``(output, mutated)``. The
    layers ``sow`` their whole-batch (count, mean, M2) into the ``batch_moments`` collection only
    when it is mutable, so ordinary training pays nothing.

    Pooling is exact, with equal weight per element: counts, means and centred sums of squares
    are merged in float64 with Chan et al.'s parallel formula, so the result equals the
    statistics of the concatenation of all batches (masked elements excluded). Averaging the
    per-batch variances instead (detectron2's PreciseBN) omits the between-batch variance of the
    means and is biased low; averaging per-batch means weights batches of different sizes
    equally, which is wrong for a ragged last batch. Layers with ``unbiased_running_var=True``
    get ``M2 / (N - 1)``. As in PreciseBN, earlier layers normalize with their batch statistics
    while recalibrating. Layers called several times pool all their calls. Other variables
    (params, ``batch_stats/step``) are returned unchanged.

    Returns:
      A new variables dict with the recalibrated ``batch_stats``.
    """

    if isinstance(apply_fn, nnx.Module):
        return _recalibrate_nnx(apply_fn, variables)  # (model, batches)
    assert batches is not None, "linen: recalibrate_batch_stats(apply_fn, variables, batches)"

    @jax.jit
    def step(v: Any, batch: Any) -> Any:
        _, mutated = apply_fn(v, batch, mutable=["batch_stats", BATCH_MOMENTS])
        return mutated.get(BATCH_MOMENTS, {})

    pooled: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    for batch in batches:
        sown = jax.device_get(step(variables, batch))
        for path, calls in _layer_moments(sown):
            for moments in calls:
                pooled[path] = _chan_merge(pooled.get(path), moments)
    _check_pooled(pooled)
    new = _copy(variables)  # type: ignore[arg-type]
    for path, m in pooled.items():
        stats = _get(new["batch_stats"], path)
        stats["mean"], stats["var"] = _population(m, stats["mean"], stats["var"])
    return new


def _check_pooled(pooled: Mapping[Any, Any]) -> None:
    if not pooled:
        raise ValueError(
            "recalibrate_batch_stats: no batches, or no jaxreg BatchNorm layer ran in training "
            "mode (linen: does apply_fn put the model in training mode and forward `mutable`?)"
        )


def _population(m: Mapping[str, np.ndarray], mean: Any, var: Any) -> tuple[Array, Array]:
    """The pooled mean and variance ``M2 / (N - ddof)``, in the running statistics' dtypes."""
    mean_dtype = jnp.result_type(mean)
    if np.iscomplexobj(m["mean"]):  # the running mean of complex inputs is complex
        mean_dtype = jnp.promote_types(mean_dtype, jnp.complex64)
    return (jnp.asarray(m["mean"], mean_dtype),
            jnp.asarray(m["m2"] / (m["count"] - m["ddof"]), jnp.result_type(var)))


def _recalibrate_nnx(model: nnx.Module, batches: Iterable[Any]) -> nnx.Module:
    from jaxreg.nnx import BatchMoments, BatchNorm  # jaxreg.nnx imports jaxreg.nn

    layers = {path: m for path, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)}
    saved = {path: (m.use_running_average, m.record_moments) for path, m in layers.items()}
    try:
        for m in layers.values():
            m.use_running_average, m.record_moments = False, True
        graphdef, state = nnx.split(model)

        @jax.jit
        def step(state: Any, batch: Any) -> Any:
            m = nnx.merge(graphdef, state)
            m(batch)
            return nnx.state(m, BatchMoments)

        pooled: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}
        for batch in batches:
            for path, calls in nnx.to_flat_state(jax.device_get(step(state, batch))):
                for moments in calls.get_value():
                    pooled[path[:-1]] = _chan_merge(pooled.get(path[:-1]), moments)
    finally:
        for path, m in layers.items():
            m.use_running_average, m.record_moments = saved[path]
    _check_pooled(pooled)
    for path, summary in pooled.items():
        layer = layers[path]
        mean, var = _population(summary, layer.mean[...], layer.var[...])
        layer.mean.set_value(mean)  # replaced, not written into: a complex mean stays complex
        layer.var.set_value(var)
    return model


def _layer_moments(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    """(layer path, tuple of sown moment dicts) for every layer in a ``batch_moments`` tree."""
    for key, value in tree.items():
        if key == "moments":
            yield prefix, value
        else:
            yield from _layer_moments(value, prefix + (key,))


def _chan_merge(a: dict[str, np.ndarray] | None, b: Mapping[str, Any]) -> dict[str, np.ndarray]:
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


def _copy(variables: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested dicts (leaves shared) with flax boxes and FrozenDicts removed."""
    return jax.tree_util.tree_map(lambda v: v, unfreeze(meta.unbox(variables)))


def _split(path: Path) -> tuple[str, ...]:
    return tuple(path.split("/")) if isinstance(path, str) else tuple(path)


def _get(tree: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    for key in path:
        if key not in tree:
            raise KeyError(f"no variables at {'/'.join(path)!r} (missing {key!r})")
        tree = tree[key]
    return tree


def fold_batchnorm(
    variables: Mapping[str, Any] | nnx.Module,
    pairs: Iterable[tuple[Any, Any]],
    *,
    epsilon: float | None = None,
    remove_bn: bool = False,
) -> Any:
    """Fold inference-mode BatchNorm layers into the Dense/Conv layer that feeds each of them.

    With ``s = scale / sqrt(var + epsilon)`` (per output feature) the BatchNorm of the layer's
    output ``W x + b`` equals ``(W * s) x + b'``, ``b' = (b - mean) * s + bias``
    (:func:`jaxreg.nn.functional.fold_scale_shift`).

    Args:
      variables: a linen model's variables (``params`` and ``batch_stats``), or an NNX model.
      pairs: ``(layer, bn)`` pairs. Linen: paths, each a tuple of module names or a
        ``"/"``-joined string relative to the root (e.g. ``("Conv_0", "BatchNorm_0")``). NNX:
        the submodules themselves (e.g. ``(model.conv, model.bn)``). The layer's ``kernel`` has
        the output features last (``Dense``/``Linear``, ``Conv``, ``ConvTranspose``) and the
        BatchNorm normalizes that axis (``axis=-1``).
      epsilon: linen: the BatchNorm layers' ``epsilon``, required (``jaxreg.models`` use 1e-3,
        flax and jaxreg.nn default to 1e-5: a wrong value silently changes the logits). NNX:
        read from each BatchNorm module; if given it must match.
      remove_bn: what the folded model is:

        * ``False`` (default): the *same* model, applied with ``use_running_average=True``.
          The kernel becomes ``W * s``; ``b'`` goes into the layer's ``bias`` if it has one
          (and the BatchNorm's ``bias`` becomes 0), else into the BatchNorm's ``bias``; the
          BatchNorm becomes an identity (``scale = 1``, ``mean = 0``, ``var = 1 - epsilon``).
          NNX models are modified in place and returned.
        * ``True`` (linen only): variables for the model built *without* those BatchNorm
          layers and with ``use_bias=True`` on the folded layers: the BatchNorm entries are
          deleted and ``b'`` is the layer's ``bias`` (created if absent).

    Returns:
      Linen: new variables (the input is not modified). NNX: the model.
    """
    if isinstance(variables, nnx.Module):
        return _fold_nnx(variables, pairs, epsilon=epsilon, remove_bn=remove_bn)
    if epsilon is None:
        raise ValueError(
            "fold_batchnorm: pass epsilon=, the BatchNorm layers' epsilon (jaxreg.models use "
            "1e-3, flax.linen/jaxreg.nn.BatchNorm default to 1e-5)"
        )
    new = _copy(variables)
    for layer_path, bn_path in pairs:
        layer_path, bn_path = _split(layer_path), _split(bn_path)
        layer = _get(new["params"], layer_path)
        bn_params = _get(new["params"], bn_path) if _has(new["params"], bn_path) else {}
        bn_stats = _get(new["batch_stats"], bn_path)
        kernel = layer["kernel"]
        _check_fold_shapes(bn_stats["mean"].shape, kernel.shape, "/".join(bn_path),
                           "/".join(layer_path))
        s, shift = F.fold_scale_shift(layer.get("bias", 0.0), bn_params.get("scale"),
                                      bn_params.get("bias"), bn_stats["mean"], bn_stats["var"],
                                      epsilon=epsilon)
        layer["kernel"] = (kernel * s).astype(kernel.dtype)
        if remove_bn:
            layer["bias"] = shift.astype(kernel.dtype)
            _delete(new["params"], bn_path)
            _delete(new["batch_stats"], bn_path)
            continue
        if "bias" in layer:
            layer["bias"] = shift.astype(layer["bias"].dtype)
            shift = jnp.zeros_like(shift)
        elif "bias" not in bn_params:
            raise ValueError(_NO_BIAS.format(layer="/".join(layer_path), bn="/".join(bn_path)))
        if "scale" in bn_params:
            bn_params["scale"] = jnp.ones_like(bn_params["scale"])
        if "bias" in bn_params:
            bn_params["bias"] = shift.astype(bn_params["bias"].dtype)
        bn_stats["mean"] = jnp.zeros_like(bn_stats["mean"])
        bn_stats["var"] = jnp.full_like(bn_stats["var"], 1.0 - epsilon)
    return new


_NO_BIAS = ("fold_batchnorm: neither {layer} nor {bn} has a bias to hold the folded shift; use "
            "a layer with use_bias=True (linen: or remove_bn=True)")


def _check_fold_shapes(stats_shape: tuple[int, ...], kernel_shape: tuple[int, ...],
                       bn: str, layer: str) -> None:
    if stats_shape != kernel_shape[-1:]:
        raise ValueError(
            f"fold_batchnorm: {bn} has statistics of shape {stats_shape}, but {layer} has "
            f"{kernel_shape[-1]} output features"
        )


def _fold_nnx(model: nnx.Module, pairs: Iterable[tuple[Any, Any]], *, epsilon: float | None,
              remove_bn: bool) -> nnx.Module:
    """:func:`fold_batchnorm` on NNX modules, in place."""
    if remove_bn:
        raise ValueError("fold_batchnorm: remove_bn=True is for linen variables; an NNX "
                         "model's structure is its code (fold in place and keep the identity)")
    for layer, bn in pairs:
        if epsilon is not None and epsilon != bn.epsilon:
            raise ValueError(f"fold_batchnorm: epsilon={epsilon!r} but the BatchNorm module "
                             f"has epsilon={bn.epsilon!r}")
        kernel = layer.kernel[...]
        _check_fold_shapes(bn.mean[...].shape, kernel.shape, type(bn).__name__,
                           type(layer).__name__)
        layer_bias = getattr(layer, "bias", None)
        scale = None if bn.scale is None else bn.scale[...]
        bias = None if bn.bias is None else bn.bias[...]
        s, shift = F.fold_scale_shift(0.0 if layer_bias is None else layer_bias[...], scale,
                                      bias, bn.mean[...], bn.var[...], epsilon=bn.epsilon)
        layer.kernel[...] = (kernel * s).astype(kernel.dtype)
        if layer_bias is not None:
            layer_bias[...] = shift.astype(layer_bias[...].dtype)
            shift = jnp.zeros_like(shift)
        elif bn.bias is None:
            raise ValueError(_NO_BIAS.format(layer=type(layer).__name__, bn=type(bn).__name__))
        if bn.scale is not None:
            bn.scale[...] = jnp.ones_like(bn.scale[...])
        if bn.bias is not None:
            bn.bias[...] = shift.astype(bn.bias[...].dtype)
        bn.mean[...] = jnp.zeros_like(bn.mean[...])
        bn.var[...] = jnp.full_like(bn.var[...], 1.0 - bn.epsilon)
    return model


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
