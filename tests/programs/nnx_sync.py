"""Cross-device statistics of jaxreg.nnx.BatchNorm and jaxreg.nn.BatchNorm, without a mask (the
pmean path) and with one (the psum of counts and sums), on 8 simulated CPU devices against one
device holding the whole batch: prints one JSON line of maximum relative differences.

Run by tests/batchnorm/test_nnx_sync.py as ``python -m tests.programs.nnx_sync`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (tests/helpers.py's ``run_module``).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxreg import nn as jnn
from jaxreg import nnx as jnnx
from tests.helpers import masked_sync_inputs

B, T, C = 32, 5, 3
Layer = Callable[[Any, jax.Array], tuple[Callable[..., Any], Any, Any]]


def nnx_layer(axis_name: str | None, x: jax.Array) -> tuple[Callable[..., Any], Any, Any]:
    model = jnnx.BatchNorm(C, momentum=0.9, axis_name=axis_name, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)  # type: ignore[misc]

    def apply(params: Any, stats: Any, x: jax.Array, mask: Any) -> Any:
        m = nnx.merge(graphdef, params, stats, copy=True)
        y = m(x, mask=mask)
        return y, nnx.state(m, nnx.BatchStat)

    return apply, params, stats


def linen_layer(axis_name: str | None, x: jax.Array) -> tuple[Callable[..., Any], Any, Any]:
    module = jnn.BatchNorm(momentum=0.9, axis_name=axis_name)
    v = module.init(jax.random.key(1), x, use_running_average=False)

    def apply(params: Any, stats: Any, x: jax.Array, mask: Any) -> Any:
        y, new = module.apply({"params": params, "batch_stats": stats}, x, mask=mask,
                              use_running_average=False, mutable=["batch_stats"])
        return y, new["batch_stats"]

    return apply, v["params"], v["batch_stats"]


def maxdiff(a: Any, b: Any) -> float:
    return max(float(jnp.max(jnp.abs(u - v)) / (1 + jnp.max(jnp.abs(v)))) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main() -> None:
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("d",))
    x0, dy, mask0 = masked_sync_inputs((B, T, C))

    def run(layer: Layer, sharded: bool, x: jax.Array, mask: Any) -> dict[str, Any]:
        apply, params, stats = layer("d" if sharded else None, x)
        masks = () if mask is None else (mask,)

        def f(params: Any, stats: Any, x: jax.Array, *m: Any) -> Any:
            return apply(params, stats, x, *(m or (None,)))

        g: Any = f
        if sharded:
            g = jax.shard_map(f, mesh=mesh, in_specs=(P(), P(), P("d")) + (P("d"),) * len(masks),
                              out_specs=(P("d"), P()))

        def loss(params: Any, x: jax.Array, stats: Any) -> Any:
            y, new = g(params, stats, x, *masks)
            return jnp.sum(y * dy), (y, new)

        (dparams, dx), (y, new) = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(params, x, stats)
        return {"y": y, "stats": new, "dparams": dparams, "dx": dx}

    out = {}
    layers: tuple[tuple[str, Layer], ...] = (("nnx", nnx_layer), ("linen", linen_layer))
    for front, layer in layers:
        for cond, x in (("ordinary", x0), ("ill", 2e3 + x0 - 3.0)):
            for mask in (None, mask0):
                single = run(layer, False, x, mask)
                multi = run(layer, True, x, mask)
                key = f"{front}-{cond}-{'unmasked' if mask is None else 'masked'}"
                out[key] = {k: maxdiff(multi[k], single[k]) for k in single}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
