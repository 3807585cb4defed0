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

from benchmarks.bench_batchnorm import inputs, repeats
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
    rows = []
    for linen_config, x, x_ill in inputs(quick):
        config = f"nnx {linen_config}"
        fns = {
            "jaxreg": _nnx_step(jnnx.BatchNorm, x, dtype=x.dtype),
            "flax": _nnx_step(nnx.BatchNorm, x, dtype=x.dtype),
            "jaxreg_ill": _nnx_step(jnnx.BatchNorm, x_ill, dtype=x.dtype),
        }
        times = interleaved_medians(fns, repeats=repeats(quick), warmup=2)
        rows.append(row("nnx_batchnorm", config, times["jaxreg"], "flax.nnx.BatchNorm",
                        times["flax"], TARGET))
        rows.append(row("nnx_batchnorm", config + " |mean|/std=1e4", times["jaxreg_ill"],
                        "flax.nnx.BatchNorm (ordinary input)", times["flax"], "info"))
    return rows
