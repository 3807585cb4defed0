"""NNX BatchNorm forward+backward: jaxreg.nnx.BatchNorm vs flax.nnx.BatchNorm.

The same step as ``bench_batchnorm`` (one training call of the layer alone, gradients with
respect to the params and the input, running statistics updated, NHWC input, statistics over
N, H, W), written the NNX way: ``nnx.split`` once, then a ``jax.jit`` of ``value_and_grad``
that merges the state, calls the layer and returns the new ``BatchStat`` state. jaxreg uses its
default stable variance, flax its default fast variance; the target is at most 5% slower. Info
row: jaxreg at ``|mean| / std = 1e4`` (where it recomputes the sums around the mean).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.bench_batchnorm import _sizes
from benchmarks.timing import interleaved_medians, row
from jaxreg import nnx as jnnx

TARGET = "<= 1.05"


def _nnx_step(cls: type, x: jax.Array, **kwargs: Any) -> Callable[[], Any]:
    layer = cls(x.shape[-1], rngs=nnx.Rngs(0), **kwargs)
    graphdef, params, *rest = nnx.split(layer, nnx.Param, nnx.BatchStat)
    (stats,) = rest
    w = jax.random.normal(jax.random.key(1), x.shape, x.dtype)

    def loss(params, xx, stats):
        model = nnx.merge(graphdef, params, stats, copy=True)
        y = model(xx)
        return jnp.sum(y.astype(jnp.float32) * w), nnx.state(model, nnx.BatchStat)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    return lambda: step(params, x, stats)


def run(quick: bool) -> list[dict[str, Any]]:
    shape = _sizes(quick)
    repeats = 51 if quick else 41
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16):
        name = jnp.dtype(dtype).name
        config = f"nnx fwd+bwd train {'x'.join(map(str, shape))} {name}"
        z = jax.random.normal(jax.random.key(2), shape)
        x = (z * 3 + 1).astype(dtype)
        fns = {
            "jaxreg": _nnx_step(jnnx.BatchNorm, x, dtype=dtype),
            "flax": _nnx_step(nnx.BatchNorm, x, dtype=dtype),
            "jaxreg_ill": _nnx_step(jnnx.BatchNorm, (z + 1e4).astype(dtype), dtype=dtype),
        }
        times = interleaved_medians(fns, repeats=repeats, warmup=2)
        rows.append(row("nnx_batchnorm", config, times["jaxreg"], "flax.nnx.BatchNorm",
                        times["flax"], TARGET))
        rows.append(row("nnx_batchnorm", config + " |mean|/std=1e4", times["jaxreg_ill"],
                        "flax.nnx.BatchNorm (ordinary input)", times["flax"], "info"))
    return rows
