"""BatchRenorm, ghost batches, recalibrate_batch_stats and fold_batchnorm vs NumPy references."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.nn import BatchNorm, BatchRenorm, fold_batchnorm, recalibrate_batch_stats
from tests.helpers import EPS, matmul_tolerance, np_batchnorm, random_inputs, train_step

# --- BatchRenorm ------------------------------------------------------------------------------


def _with_stats(module, x, gamma, beta, mean, var):
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    variables["params"] = {"scale": gamma, "bias": beta}
    variables["batch_stats"].update(mean=mean, var=var)
    return variables


def test_renorm_with_unit_limits_is_batchnorm():
    shape = (8, 3, 3, 4)
    x, dy, gamma, beta = random_inputs(shape, -1)
    mean, var = jnp.linspace(-1, 1, 4), jnp.linspace(0.5, 3, 4)
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, shape[:-1] + (1,))
    renorm, bn = BatchRenorm(r_max=1.0, d_max=0.0, momentum=0.9), BatchNorm(momentum=0.9)
    v_renorm = _with_stats(renorm, x, gamma, beta, mean, var)
    v_bn = _with_stats(bn, x, gamma, beta, mean, var)
    y_r, stats_r, dp_r, dx_r = train_step(renorm, v_renorm, x, dy, mask)
    y_b, stats_b, dp_b, dx_b = train_step(bn, v_bn, x, dy, mask)
    for a, b in [(y_r, y_b), (stats_r["mean"], stats_b["mean"]), (stats_r["var"], stats_b["var"]),
                 (dp_r["scale"], dp_b["scale"]), (dp_r["bias"], dp_b["bias"]), (dx_r, dx_b)]:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # equal up to XLA fusion rounding
    assert stats_r["step"] == 1


@pytest.mark.parametrize("r_max, d_max", [(1e3, 1e3), (1.2, 0.3)])
def test_renorm_matches_numpy_reference(r_max, d_max):
    """y = gamma * (x_hat * r + d) + beta with clipped r, d, and grads with r, d held constant."""
    x, dy, gamma, beta = random_inputs((16, 2, 2, 4), -1, loc=1.0, scale=1.5)
    mean, var = jnp.array([0.0, 1.0, 2.0, -1.0]), jnp.array([0.5, 2.0, 4.0, 1.0])
    renorm = BatchRenorm(r_max=r_max, d_max=d_max, momentum=0.9)
    variables = _with_stats(renorm, x, gamma, beta, mean, var)
    y, stats, dparams, dx = train_step(renorm, variables, x, dy)

    ref = np_batchnorm(x, -1, np.ones(4), np.zeros(4), dy)
    sigma = np.sqrt(np.asarray(var, np.float64) + EPS)
    r = np.clip(np.sqrt(ref["var"] + EPS) / sigma, 1 / r_max, r_max)
    d = np.clip((ref["mean"] - np.asarray(mean)) / sigma, -d_max, d_max)
    g, b = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    np.testing.assert_allclose(y, g * (ref["y"] * r + d) + b, atol=1e-5, rtol=1e-5)
    if r_max > 100:  # no clipping: training output is the input normalized by the running stats
        np.testing.assert_allclose(y, g * (np.asarray(x) - np.asarray(mean)) / sigma + b,
                                   atol=1e-4, rtol=1e-4)
    # r and d are constants for autodiff: the BatchNorm backprop with upstream dy * gamma * r
    ref_r = np_batchnorm(x, -1, np.ones(4), np.zeros(4), np.asarray(dy) * g * r)
    np.testing.assert_allclose(dx, ref_r["dx"], atol=1e-4, rtol=1e-4)
    dgamma = (np.asarray(dy) * (ref["y"] * r + d)).sum((0, 1, 2))
    np.testing.assert_allclose(dparams["scale"], dgamma, rtol=1e-4)
    np.testing.assert_allclose(dparams["bias"], ref["dbeta"], rtol=1e-5)
    # running statistics as in BatchNorm
    np.testing.assert_allclose(stats["mean"], 0.9 * mean + 0.1 * ref["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 * var + 0.1 * ref["var"], rtol=1e-5)


def test_renorm_schedules_follow_the_step_counter():
    x, dy, gamma, beta = random_inputs((8, 4), -1, loc=3.0)
    renorm = BatchRenorm(r_max=optax.linear_schedule(1.0, 3.0, 2),
                         d_max=optax.linear_schedule(0.0, 4.0, 2), momentum=0.9)
    variables = _with_stats(renorm, x, gamma, beta, jnp.zeros(4), jnp.ones(4))
    step = variables["batch_stats"]["step"]
    assert step == 0 and step.dtype == jnp.int32
    y0, stats, _, _ = train_step(renorm, variables, x, dy)
    y_bn, _, _, _ = train_step(BatchNorm(momentum=0.9), variables, x, dy)
    np.testing.assert_allclose(y0, y_bn, rtol=1e-6, atol=1e-6)  # step 0: r_max = 1, d_max = 0
    assert stats["step"] == 1
    y1, stats, _, _ = train_step(renorm, {**variables, "batch_stats": stats}, x, dy)
    assert stats["step"] == 2
    assert np.abs(np.asarray(y1) - np.asarray(y0)).max() > 0.1  # now r_max = 2, d_max = 2
    _, evaluated = renorm.apply({**variables, "batch_stats": stats}, x, use_running_average=True,
                                mutable=["batch_stats"])
    assert evaluated["batch_stats"]["step"] == 2  # inference does not count


# --- ghost batch normalization ----------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_ghost_batches_equal_per_sub_batch_batchnorm(masked):
    shape, vbs = (12, 3, 2, 4), 4
    x, dy, gamma, beta = random_inputs(shape, -1)
    mask = jax.random.bernoulli(jax.random.key(1), 0.7, shape[:-1] + (1,)).at[:, 0].set(True)
    mask = mask if masked else None
    ghost = BatchNorm(virtual_batch_size=vbs, momentum=0.9)
    variables = _with_stats(ghost, x, gamma, beta, jnp.zeros(4), jnp.ones(4))
    y, stats, dparams, dx = train_step(ghost, variables, x, dy, mask)
    refs = [np_batchnorm(x[i:i + vbs], -1, gamma, beta, dy[i:i + vbs],
                         None if mask is None else np.asarray(mask[i:i + vbs]))
            for i in range(0, shape[0], vbs)]
    np.testing.assert_allclose(y, np.concatenate([r["y"] for r in refs]), atol=2e-5)
    np.testing.assert_allclose(dx, np.concatenate([r["dx"] for r in refs]), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dparams["scale"], sum(r["dgamma"] for r in refs), rtol=1e-4)
    # running statistics move towards the mean of the sub-batch statistics
    np.testing.assert_allclose(stats["mean"], 0.1 * np.mean([r["mean"] for r in refs], 0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * np.mean([r["var"] for r in refs], 0),
                               rtol=1e-5)
    # inference ignores virtual_batch_size
    y_eval = ghost.apply({**variables, "batch_stats": stats}, x, use_running_average=True)
    y_plain = BatchNorm().apply({**variables, "batch_stats": stats}, x, use_running_average=True)
    np.testing.assert_array_equal(y_eval, y_plain)


# --- recalibrate_batch_stats ------------------------------------------------------------------


class Net(fnn.Module):
    """conv -> norm0 -> relu -> dense -> norm1, or the same without norms (``use_bn=False``)."""

    norm0: Callable[..., Any] = BatchNorm
    norm1: Callable[..., Any] = BatchNorm
    use_bn: bool = True

    @fnn.compact
    def __call__(self, x, train: bool = False):
        x = fnn.Conv(6, (3, 3), name="conv")(x)
        if self.use_bn:
            x = self.norm0(use_running_average=not train, momentum=0.9, name="bn0")(x)
        x = fnn.relu(x)
        x = fnn.Dense(5, use_bias=not self.use_bn, name="dense")(x)
        if self.use_bn:
            x = self.norm1(use_running_average=not train, momentum=0.9, name="bn1")(x)
        return x


@pytest.mark.usefixtures("highest_precision")  # the reference is a float64 conv's output
def test_recalibration_equals_population_statistics():
    model = Net(norm0=functools.partial(BatchRenorm, r_max=2.0, d_max=1.0),
                norm1=functools.partial(BatchNorm, unbiased_running_var=True))
    keys = jax.random.split(jax.random.key(0), 3)
    batches = [
        2.0 + 3.0 * jax.random.normal(k, (n, 5, 5, 2)) for k, n in zip(keys, (8, 8, 5), strict=True)
    ]
    variables = model.init(jax.random.key(1), batches[0])  # EMA stats at their init values

    def apply_fn(v, x, **kw):
        return model.apply(v, x, train=True, **kw)

    new = recalibrate_batch_stats(apply_fn, variables, batches)

    # independent reference: each layer's inputs over all batches, in training mode, float64
    inputs = {"bn0": [], "bn1": []}
    for x in batches:
        _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                               mutable=["batch_stats", "intermediates"])
        inputs["bn0"].append(state["intermediates"]["conv"]["__call__"][0])
        inputs["bn1"].append(state["intermediates"]["dense"]["__call__"][0])
    for name, ddof in (("bn0", 0), ("bn1", 1)):
        h = np.concatenate([np.asarray(a, np.float64) for a in inputs[name]])
        h = h.reshape(-1, h.shape[-1])
        np.testing.assert_allclose(
            new["batch_stats"][name]["mean"], h.mean(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(new["batch_stats"][name]["var"], h.var(0, ddof=ddof), rtol=1e-5)
        assert new["batch_stats"][name]["var"].dtype == jnp.float32
    # the first layer's inputs do not depend on normalization: check against x @ W + b directly
    conv = fnn.Conv(6, (3, 3))
    conv_params = {"params": variables["params"]["conv"]}
    h0 = np.concatenate([np.asarray(conv.apply(conv_params, x), np.float64) for x in batches])
    np.testing.assert_allclose(
        new["batch_stats"]["bn0"]["mean"], h0.reshape(-1, 6).mean(0), rtol=1e-5
    )
    # params and the renorm step counter are untouched; the input is not modified
    assert new["batch_stats"]["bn0"]["step"] == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, new["params"], variables["params"])
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["mean"], np.zeros(5))


def test_recalibration_pools_ghost_groups_masks_and_repeated_calls():
    class Shared(fnn.Module):
        @fnn.compact
        def __call__(self, x, mask, train: bool = True):
            bn = BatchNorm(use_running_average=not train, virtual_batch_size=2)
            return bn(x, mask=mask) + bn(2.0 * x + 1.0)  # one layer, two calls

    keys = jax.random.split(jax.random.key(3), 6)
    batches = [(1.0 + jax.random.normal(keys[i], (n, 3, 4)),
                jax.random.bernoulli(keys[i + 3], 0.6, (n, 3, 1)).at[:, 0].set(True))
               for i, n in enumerate((6, 4, 2))]
    model = Shared()
    variables = model.init(jax.random.key(0), *batches[0])
    new = recalibrate_batch_stats(lambda v, b, **kw: model.apply(v, *b, **kw), variables, batches)
    values = []
    for x, mask in batches:
        x = np.asarray(x, np.float64)
        values += [x[np.broadcast_to(np.asarray(mask), x.shape)].reshape(-1, 4),
                   (2.0 * x + 1.0).reshape(-1, 4)]
    h = np.concatenate(values)
    np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["mean"], h.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["var"], h.var(0), rtol=1e-5)


def test_recalibration_without_batchnorm_raises():
    model = Net(use_bn=False)
    x = jnp.ones((2, 5, 5, 2))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batch_stats(lambda v, b, **kw: model.apply(v, b, **kw), variables, [x])


# --- fold_batchnorm ---------------------------------------------------------------------------


def _trained_variables(model, x):
    variables = model.init(jax.random.key(0), x)
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)
    ]
    variables = jax.tree_util.tree_unflatten(treedef, noisy)
    for name in ("bn0", "bn1"):  # positive variances
        variables["batch_stats"][name]["var"] = 0.5 + jnp.abs(variables["batch_stats"][name]["var"])
    return variables


def test_fold_batchnorm_same_model_and_model_without_bn():
    x = jax.random.normal(jax.random.key(2), (4, 6, 6, 2))
    model = Net()
    variables = _trained_variables(model, x)
    expected = model.apply(variables, x)  # eval mode
    pairs = [("conv", "bn0"), ("dense", "bn1")]

    folded = fold_batchnorm(variables, pairs, epsilon=1e-5)
    tol = matmul_tolerance(1e-5)  # at the default precision: TF32 on GPU rounds W and W * s
    np.testing.assert_allclose(model.apply(folded, x), expected, atol=tol, rtol=tol)
    # conv had a bias: the shift went there; dense had none: the shift is bn1's bias
    np.testing.assert_array_equal(folded["params"]["bn0"]["bias"], np.zeros(6))
    assert "bias" not in folded["params"]["dense"]
    np.testing.assert_array_equal(folded["params"]["bn1"]["scale"], np.ones(5))

    bare = fold_batchnorm(variables, [("conv", "bn0"), ("dense", "bn1")], epsilon=1e-5,
                          remove_bn=True)
    assert set(bare["params"]) == {"conv", "dense"} and bare["batch_stats"] == {}
    np.testing.assert_allclose(Net(use_bn=False).apply(bare, x), expected, atol=tol, rtol=tol)
    # the input is not modified
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"],
                                  _trained_variables(model, x)["params"]["bn1"]["scale"])


def test_fold_batchnorm_nested_string_paths():
    class Outer(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return Net(name="block")(x)

    x = jax.random.normal(jax.random.key(2), (3, 5, 5, 2))
    variables = Outer().init(jax.random.key(0), x)
    variables["batch_stats"]["block"]["bn0"]["var"] = jnp.full((6,), 3.0)
    variables["batch_stats"]["block"]["bn0"]["mean"] = jnp.full((6,), -0.5)
    folded = fold_batchnorm(variables, [("block/conv", "block/bn0"), ("block/dense", "block/bn1")],
                            epsilon=1e-5)
    np.testing.assert_allclose(Outer().apply(folded, x), Outer().apply(variables, x),
                               atol=matmul_tolerance(1e-5))


def test_fold_batchnorm_rejects_mismatched_pairs():
    x = jnp.ones((2, 5, 5, 2))
    variables = Net().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="bn1 has statistics of shape \\(5,\\), but conv has 6"):
        fold_batchnorm(variables, [("conv", "bn1")], epsilon=1e-5)
    with pytest.raises(KeyError, match="missing 'nope'"):
        fold_batchnorm(variables, [("nope", "bn0")], epsilon=1e-5)
