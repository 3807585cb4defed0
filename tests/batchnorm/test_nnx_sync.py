"""Cross-device statistics (axis_name) of jaxreg.nnx.BatchNorm and jaxreg.nn.BatchNorm without
a mask (the pmean path) and with one (the psum of counts and sums), on 8 simulated CPU devices.

As in test_sync.py, the devices live in a subprocess; it prints one JSON line of
maximum absolute differences against one device holding the whole batch.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from tests.helpers import run_on_cpu_devices

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxreg import nn as jnn, nnx as jnnx

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("d",))
    B, T, C = 32, 5, 3
    kx, kdy, km = jax.random.split(jax.random.key(0), 3)
    x0 = 3.0 + 2.0 * jax.random.normal(kx, (B, T, C))
    dy = jax.random.normal(kdy, (B, T, C))
    p = jnp.repeat((jnp.arange(8) + 1) / 9.0, B // 8)[:, None, None]
    mask0 = (jax.random.uniform(km, (B, T, 1)) < p).at[0, 0].set(True)

    def nnx_layer(axis_name, x):
        model = jnnx.BatchNorm(C, momentum=0.9, axis_name=axis_name, rngs=nnx.Rngs(0))
        graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        def apply(params, stats, x, mask):
            m = nnx.merge(graphdef, params, stats, copy=True)
            y = m(x, mask=mask)
            return y, nnx.state(m, nnx.BatchStat)
        return apply, params, stats

    def linen_layer(axis_name, x):
        module = jnn.BatchNorm(momentum=0.9, axis_name=axis_name)
        v = module.init(jax.random.key(1), x, use_running_average=False)
        def apply(params, stats, x, mask):
            y, new = module.apply({"params": params, "batch_stats": stats}, x, mask=mask,
                                  use_running_average=False, mutable=["batch_stats"])
            return y, new["batch_stats"]
        return apply, v["params"], v["batch_stats"]

    def run(layer, sharded, x, mask):
        apply, params, stats = layer("d" if sharded else None, x)
        masks = () if mask is None else (mask,)
        f = lambda params, stats, x, *m: apply(params, stats, x, *(m or (None,)))
        if sharded:
            f = jax.shard_map(f, mesh=mesh, in_specs=(P(), P(), P("d")) + (P("d"),) * len(masks),
                              out_specs=(P("d"), P()))
        def loss(params, x, stats):
            y, new = f(params, stats, x, *masks)
            return jnp.sum(y * dy), (y, new)
        (dparams, dx), (y, new) = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(params, x, stats)
        return {"y": y, "stats": new, "dparams": dparams, "dx": dx}

    def maxdiff(a, b):
        return max(float(jnp.max(jnp.abs(u - v)) / (1 + jnp.max(jnp.abs(v)))) for u, v in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    out = {}
    for front, layer in (("nnx", nnx_layer), ("linen", linen_layer)):
        for cond, x in (("ordinary", x0), ("ill", 2e3 + x0 - 3.0)):
            for mask in (None, mask0):
                single = run(layer, False, x, mask)
                multi = run(layer, True, x, mask)
                key = f"{front}-{cond}-{'unmasked' if mask is None else 'masked'}"
                out[key] = {k: maxdiff(multi[k], single[k]) for k in single}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sync_result():
    return json.loads(run_on_cpu_devices(SCRIPT).strip().splitlines()[-1])


@pytest.mark.parametrize("front", ["nnx", "linen"])
@pytest.mark.parametrize("cond", ["ordinary", "ill"])
@pytest.mark.parametrize("masked", ["unmasked", "masked"])
def test_synced_statistics_equal_whole_batch_on_one_device(sync_result, front, cond, masked):
    """|mean|/std = 1e3 ('ill'): the recomputation's collective runs inside the cond."""
    diffs = sync_result[f"{front}-{cond}-{masked}"]
    assert max(diffs.values()) < 1e-5, diffs
