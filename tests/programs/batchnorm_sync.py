"""Cross-device jaxreg.nn.BatchNorm statistics on 8 simulated CPU devices, against one device
holding the whole batch: prints one JSON line of maximum absolute differences.

Run by tests/batchnorm/test_sync.py as ``python -m tests.programs.batchnorm_sync`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (tests/helpers.py's ``run_module``).
"""
from __future__ import annotations

import functools
import json
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxreg.nn import BatchNorm
from tests.helpers import masked_sync_inputs

B, T, C = 32, 5, 3  # 4 examples per device


def train(module: Any, params: Any, stats: Any, x: jax.Array, mask: jax.Array) -> Any:
    y, new = module.apply({"params": params, "batch_stats": stats}, x,
                          use_running_average=False, mask=mask, mutable=["batch_stats"])
    return y, new["batch_stats"]


def maxdiff(a: Any, b: Any) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def main() -> None:
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("d",))
    x, dy, mask = masked_sync_inputs((B, T, C))  # very unequal counts per device

    def run(module: Any, sharded: bool, x: jax.Array = x) -> dict[str, Any]:
        variables = module.init(jax.random.key(1), x, use_running_average=False)
        f: Any = functools.partial(train, module)
        if sharded:
            f = jax.shard_map(f, mesh=mesh, in_specs=(P(), P(), P("d"), P("d")),
                              out_specs=(P("d"), P()))

        def loss(params: Any, x: jax.Array) -> Any:
            y, stats = f(params, variables["batch_stats"], x, mask)
            return jnp.sum(y * dy), (y, stats)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
        (dparams, dx), (y, stats) = grad(variables["params"], x)
        return {"y": y, "stats": stats, "dparams": dparams, "dx": dx}

    single = run(BatchNorm(momentum=0.9), sharded=False)
    out: dict[str, Any] = {"counts": [int(c) for c in mask.reshape(8, -1).sum(1)]}
    for name, module in {
        "stable": BatchNorm(momentum=0.9, axis_name="d"),
        "fast": BatchNorm(momentum=0.9, axis_name="d", use_fast_variance=True),
        "flax": fnn.BatchNorm(momentum=0.9, axis_name="d"),
    }.items():
        multi = run(module, sharded=True)
        out[name] = {k: maxdiff(multi[k], single[k]) for k in single}

    # |mean| / std = 1e3: the recomputation around the first mean runs inside shard_map
    x_ill = 1e3 * 2.0 + x - 3.0
    single = run(BatchNorm(momentum=0.9), sharded=False, x=x_ill)
    multi = run(BatchNorm(momentum=0.9, axis_name="d"), sharded=True, x=x_ill)
    out["stable_ill"] = {k: maxdiff(multi[k], single[k]) for k in single}
    m = np.broadcast_to(np.asarray(mask), x.shape).reshape(-1, C)
    xs = np.asarray(x_ill, np.float64).reshape(-1, C)
    ref_var = np.array([xs[m[:, c], c].var() for c in range(C)])
    out["stable_ill_var_rel_err"] = float(np.max(np.abs(
        np.asarray(multi["stats"]["var"]) - (0.1 * ref_var + 0.9)) / (0.1 * ref_var + 0.9)))

    # axis_index_groups (pmap only): two groups of 4 devices = one-device BN on each half
    grouped_bn = BatchNorm(momentum=0.9, axis_name="d",
                           axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]])
    v = grouped_bn.init(jax.random.key(1), x, use_running_average=False)
    grouped_y, _ = jax.pmap(functools.partial(train, grouped_bn), axis_name="d",
                            in_axes=(None, None, 0, 0))(
        v["params"], v["batch_stats"], x.reshape(8, -1, T, C), mask.reshape(8, -1, T, 1))
    halves = []
    for lo in (0, B // 2):
        half = BatchNorm(momentum=0.9)
        v = half.init(jax.random.key(1), x, use_running_average=False)
        y, _ = train(half, v["params"], v["batch_stats"], x[lo:lo + B // 2], mask[lo:lo + B // 2])
        halves.append(y)
    out["groups_y"] = float(jnp.max(jnp.abs(grouped_y.reshape(B, T, C) - jnp.concatenate(halves))))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
