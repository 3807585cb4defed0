"""Cross-device BatchNorm statistics (axis_name) on 8 simulated CPU devices.

The devices run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` so
this pytest process keeps its single device. The subprocess prints one JSON line of maximum
absolute differences against the single-device result on the whole (concatenated) batch.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from tests.helpers import run_on_cpu_devices

SCRIPT = textwrap.dedent(
    """
    import functools, json
    import flax.linen as fnn
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxreg.nn import BatchNorm

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("d",))
    B, T, C = 32, 5, 3  # 4 examples per device
    kx, kdy, km = jax.random.split(jax.random.key(0), 3)
    x = 3.0 + 2.0 * jax.random.normal(kx, (B, T, C))
    dy = jax.random.normal(kdy, (B, T, C))
    # device i keeps each (example, step) with probability (i + 1) / 9: very unequal counts
    p = jnp.repeat((jnp.arange(8) + 1) / 9.0, B // 8)[:, None, None]
    mask = (jax.random.uniform(km, (B, T, 1)) < p).at[0, 0].set(True)

    def train(module, params, stats, x, mask):
        y, new = module.apply({"params": params, "batch_stats": stats}, x,
                              use_running_average=False, mask=mask, mutable=["batch_stats"])
        return y, new["batch_stats"]

    def run(module, sharded, x=x):
        variables = module.init(jax.random.key(1), x, use_running_average=False)
        f = functools.partial(train, module)
        if sharded:
            f = jax.shard_map(f, mesh=mesh, in_specs=(P(), P(), P("d"), P("d")),
                              out_specs=(P("d"), P()))
        def loss(params, x):
            y, stats = f(params, variables["batch_stats"], x, mask)
            return jnp.sum(y * dy), (y, stats)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
        (dparams, dx), (y, stats) = grad(variables["params"], x)
        return {"y": y, "stats": stats, "dparams": dparams, "dx": dx}

    def maxdiff(a, b):
        return max(float(jnp.max(jnp.abs(u - v))) for u, v in
                   zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    single = run(BatchNorm(momentum=0.9), sharded=False)
    out = {"counts": [int(c) for c in mask.reshape(8, -1).sum(1)]}
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
        module = BatchNorm(momentum=0.9)
        v = module.init(jax.random.key(1), x, use_running_average=False)
        y, _ = train(module, v["params"], v["batch_stats"], x[lo:lo + B // 2], mask[lo:lo + B // 2])
        halves.append(y)
    out["groups_y"] = float(jnp.max(jnp.abs(grouped_y.reshape(B, T, C) - jnp.concatenate(halves))))
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sync_result():
    return json.loads(run_on_cpu_devices(SCRIPT).strip().splitlines()[-1])


def test_devices_hold_unequal_numbers_of_valid_elements(sync_result):
    counts = sync_result["counts"]
    assert min(counts) >= 1 and max(counts) >= 3 * min(counts), counts


@pytest.mark.parametrize("variance", ["stable", "fast"])
def test_synced_statistics_equal_whole_batch_on_one_device(sync_result, variance):
    diffs = sync_result[variance]
    assert diffs["y"] < 1e-5 and diffs["stats"] < 1e-5, diffs
    assert diffs["dx"] < 1e-5 and diffs["dparams"] < 1e-4, diffs


def test_synced_statistics_exact_when_ill_conditioned(sync_result):
    """At |mean|/std = 1e3 the recomputation (a cond with a psum inside) runs on every device."""
    diffs = sync_result["stable_ill"]
    assert diffs["y"] < 1e-5 and diffs["stats"] < 1e-4, diffs
    assert diffs["dx"] < 1e-5 and diffs["dparams"] < 1e-4, diffs
    # flax's E[x^2] - E[x]^2 would be ~ float_eps * 1e6 = 6% off here
    assert sync_result["stable_ill_var_rel_err"] < 1e-5, sync_result["stable_ill_var_rel_err"]


def test_flax_pmean_of_means_is_wrong_for_unequal_counts(sync_result):
    """flax averages per-device means (flax issue 2417): documents why ours differs."""
    assert sync_result["flax"]["stats"] > 1e-2, sync_result["flax"]


def test_axis_index_groups_normalize_each_group_separately(sync_result):
    assert sync_result["groups_y"] < 1e-5, sync_result["groups_y"]
