"""Post-training tools for batch statistics: PreciseBN recalibration and inference folding."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta, unfreeze

from jaxreg.nn.normalization import BATCH_MOMENTS

Path = str | Sequence[str]


def recalibrate_batch_stats(
    apply_fn: Callable[..., Any],
    variables: Mapping[str, Any],
    batches: Iterable[Any],
) -> dict[str, Any]:
    """PreciseBN (Wu & Johnson 2021): replace the EMA running statistics with population ones.

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
    if not pooled:
        raise ValueError(
            "recalibrate_batch_stats: no batches, or no jaxreg.nn BatchNorm layer ran in training "
            "mode (does apply_fn put the model in training mode and forward `mutable`?)"
        )
    new = _copy(variables)
    for path, m in pooled.items():
        stats = _get(new["batch_stats"], path)
        var = m["m2"] / (m["count"] - m["ddof"])
        stats["mean"] = jnp.asarray(m["mean"], stats["mean"].dtype)
        stats["var"] = jnp.asarray(var, stats["var"].dtype)
    return new


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
    variables: Mapping[str, Any],
    pairs: Iterable[tuple[Path, Path]],
    *,
    epsilon: float = 1e-5,
    remove_bn: bool = False,
) -> dict[str, Any]:
    """Fold inference-mode BatchNorm layers into the Dense/Conv layer that feeds each of them.

    With ``s = scale / sqrt(var + epsilon)`` (per output feature) the BatchNorm of the layer's
    output ``W x + b`` equals ``(W * s) x + b'``, ``b' = (b - mean) * s + bias``.

    Args:
      variables: the model's variables (``params`` and ``batch_stats``).
      pairs: explicit ``(layer_path, bn_path)`` pairs, each path a tuple of module names or a
        ``"/"``-joined string relative to the root (e.g. ``("Conv_0", "BatchNorm_0")``). The
        layer's ``kernel`` has the output features last (``Dense``, ``Conv``, ``ConvTranspose``)
        and the BatchNorm normalizes that axis (``axis=-1``).
      epsilon: the BatchNorm layers' ``epsilon``.
      remove_bn: what the folded model is:

        * ``False`` (default): the *same* model, applied with ``use_running_average=True``.
          The kernel becomes ``W * s``; ``b'`` goes into the layer's ``bias`` if it has one
          (and the BatchNorm's ``bias`` becomes 0), else into the BatchNorm's ``bias``; the
          BatchNorm becomes an identity (``scale = 1``, ``mean = 0``, ``var = 1 - epsilon``).
        * ``True``: variables for the model built *without* those BatchNorm layers and with
          ``use_bias=True`` on the folded layers: the BatchNorm entries are deleted and ``b'``
          is the layer's ``bias`` (created if absent).

    Returns:
      New variables; the input is not modified.
    """
    new = _copy(variables)
    for layer_path, bn_path in pairs:
        layer_path, bn_path = _split(layer_path), _split(bn_path)
        layer = _get(new["params"], layer_path)
        bn_params = _get(new["params"], bn_path) if _has(new["params"], bn_path) else {}
        bn_stats = _get(new["batch_stats"], bn_path)
        kernel = layer["kernel"]
        if bn_stats["mean"].shape != kernel.shape[-1:]:
            raise ValueError(
                f"fold_batchnorm: {'/'.join(bn_path)} has statistics of shape "
                f"{bn_stats['mean'].shape}, but {'/'.join(layer_path)} has "
                f"{kernel.shape[-1]} output features"
            )
        dtype = kernel.dtype
        gamma = bn_params.get("scale", jnp.ones_like(bn_stats["mean"]))
        beta = bn_params.get("bias", jnp.zeros_like(bn_stats["mean"]))
        s = gamma * jax.lax.rsqrt(bn_stats["var"] + epsilon)
        shift = (layer.get("bias", 0.0) - bn_stats["mean"]) * s + beta
        layer["kernel"] = (kernel * s).astype(dtype)
        if remove_bn:
            layer["bias"] = shift.astype(dtype)
            _delete(new["params"], bn_path)
            _delete(new["batch_stats"], bn_path)
            continue
        if "bias" in layer:
            layer["bias"] = shift.astype(layer["bias"].dtype)
            shift = jnp.zeros_like(shift)
        elif "bias" not in bn_params:
            raise ValueError(
                f"fold_batchnorm: neither {'/'.join(layer_path)} nor {'/'.join(bn_path)} has a "
                "bias to hold the folded shift; use remove_bn=True with a model whose layer has "
                "use_bias=True"
            )
        if "scale" in bn_params:
            bn_params["scale"] = jnp.ones_like(bn_params["scale"])
        if "bias" in bn_params:
            bn_params["bias"] = shift.astype(bn_params["bias"].dtype)
        bn_stats["mean"] = jnp.zeros_like(bn_stats["mean"])
        bn_stats["var"] = jnp.full_like(bn_stats["var"], 1.0 - epsilon)
    return new


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
