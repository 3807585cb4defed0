"""jaxreg.nn.BatchNorm against NumPy float64 references and against flax.linen.BatchNorm."""
from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxreg.nn import BatchNorm, momentum_from_keras, momentum_from_torch
from tests.helpers import EPS, np_batchnorm, random_inputs, train_step


@pytest.mark.parametrize("axis, masked", [(-1, False), (1, True), ((1, 2), True), ((0, 3), False)])
def test_matches_numpy_float64_reference(axis, masked):
    shape = (6, 5, 4, 3)
    x, dy, gamma, beta = random_inputs(shape, axis)
    mask = None
    if masked:  # broadcastable, and leaves every feature at least 2 valid elements
        mask = jax.random.bernoulli(jax.random.key(7), 0.6, (6, 5, 4, 1)).at[:2].set(True)
    bn = BatchNorm(axis=axis, momentum=0.9)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)
    variables = {**variables, "params": {"scale": gamma, "bias": beta}}
    y, stats, dparams, dx = train_step(bn, variables, x, dy, mask)
    ref = np_batchnorm(x, axis, gamma, beta, dy, None if mask is None else np.asarray(mask))
    np.testing.assert_allclose(y, ref["y"], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(dx, ref["dx"], atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(dparams["scale"], ref["dgamma"], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(dparams["bias"], ref["dbeta"], atol=1e-4, rtol=1e-5)
    # running = m * running + (1 - m) * batch, from mean 0 and var 1
    np.testing.assert_allclose(stats["mean"], 0.1 * ref["mean"], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * ref["var"], atol=1e-6, rtol=1e-5)


def test_inference_uses_running_statistics():
    x, _, gamma, beta = random_inputs((8, 4), -1)
    mean, var = jnp.arange(4.0), jnp.linspace(0.5, 2.0, 4)
    variables = {"params": {"scale": gamma, "bias": beta},
                 "batch_stats": {"mean": mean, "var": var}}
    y = BatchNorm(use_running_average=True).apply(variables, x)
    ref = np.asarray(gamma) * (np.asarray(x) - mean) / np.sqrt(np.asarray(var) + EPS) + beta
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_unbiased_running_var_matches_pytorch_convention():
    x, dy, _, _ = random_inputs((5, 3, 3, 2), -1)
    m_torch = 0.1
    bn = BatchNorm(momentum=momentum_from_torch(m_torch), unbiased_running_var=True)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)
    y, stats, _, _ = train_step(bn, variables, x, dy)
    ref = np_batchnorm(x, -1, np.ones(2), np.zeros(2), dy)
    n = ref["n"]
    # PyTorch: running_var = (1 - a) * running_var + a * var * n / (n - 1); output uses biased var
    np.testing.assert_allclose(stats["var"], 0.9 + m_torch * ref["var"] * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(stats["mean"], m_torch * ref["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y, ref["y"], atol=2e-5)


def test_momentum_converters():
    assert momentum_from_torch(0.1) == pytest.approx(0.9)
    assert momentum_from_torch(1.0) == 0.0
    assert momentum_from_keras(0.99) == 0.99
    with pytest.raises(ValueError, match="momentum=0.0"):
        momentum_from_torch(0.0)
    with pytest.raises(ValueError, match="momentum=1.0"):
        momentum_from_keras(1.0)


# --- parity with flax.linen.BatchNorm (well-conditioned inputs) ---------------------------------

F32, BF16 = jnp.float32, jnp.bfloat16
PARITY = [  # (module kwargs, masked, input dtype)
    (dict(axis=-1), False, F32),
    (dict(axis=1), True, F32),
    (dict(axis=(1, 2)), True, F32),
    (dict(axis=-1, use_scale=False), True, F32),
    (dict(axis=-1, use_bias=False, force_float32_reductions=False), True, F32),
    (dict(axis=-1, use_scale=False, use_bias=False), False, BF16),
    (dict(axis=-1), True, BF16),
    (dict(axis=-1, dtype=BF16), False, BF16),
    (dict(axis=-1, param_dtype=BF16), True, F32),
    (dict(axis=-1, force_float32_reductions=False), False, BF16),
    (dict(axis=-1, use_fast_variance=True), True, F32),
]


def _id(case):
    kwargs, masked, dtype = case
    parts = [f"{k}={v}" for k, v in kwargs.items()]
    return ",".join(parts + [f"mask={masked}", jnp.dtype(dtype).name])


@pytest.mark.parametrize("case", PARITY, ids=_id)
def test_parity_with_flax(case):
    kwargs, masked, in_dtype = case
    shape = (8, 6, 5, 4)
    x, dy, _, _ = random_inputs(shape, kwargs["axis"], seed=3)
    x = x.astype(in_dtype)
    mask = jax.random.bernoulli(jax.random.key(5), 0.7, shape[:-1] + (1,)) if masked else None
    ours, theirs = BatchNorm(momentum=0.8, **kwargs), fnn.BatchNorm(momentum=0.8, **kwargs)
    v_ours = ours.init(jax.random.key(0), x, use_running_average=False)
    v_theirs = theirs.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_theirs)
    flax_spec = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), v_theirs)
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), v_ours) == flax_spec
    out_ours = train_step(ours, v_ours, x, dy, mask)
    out_theirs = train_step(theirs, v_theirs, x, dy, mask)
    low = in_dtype == jnp.bfloat16 or kwargs.get("dtype") == jnp.bfloat16 or (
        kwargs.get("param_dtype") == jnp.bfloat16)
    tol = dict(atol=2e-2, rtol=2e-2) if low else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(out_ours), jax.tree_util.tree_leaves(out_theirs),
                    strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
    # inference mode, with the updated statistics
    stats = out_ours[1]
    evaluate = jax.jit(lambda m, v: m.apply(v, x, use_running_average=True), static_argnums=0)
    y_ours = evaluate(ours, {**v_ours, "batch_stats": stats})
    y_theirs = evaluate(theirs, {**v_theirs, "batch_stats": stats})
    assert y_ours.dtype == y_theirs.dtype
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32),
                               **tol)


class ConvNet(fnn.Module):
    """A flax model parameterized by its BatchNorm class, to swap the import."""

    norm: type = fnn.BatchNorm

    @fnn.compact
    def __call__(self, x, train: bool):
        x = fnn.Conv(8, (3, 3))(x)
        x = self.norm(use_running_average=not train, momentum=0.9)(x)
        x = fnn.relu(x)
        x = fnn.Conv(4, (3, 3), use_bias=False)(x)
        x = self.norm(use_running_average=not train, momentum=0.9, axis=(1, 2, 3))(x)
        return fnn.Dense(3)(x.mean((1, 2)))


def test_flax_model_swaps_import_and_loads_checkpoint():
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
    flax_model, our_model = ConvNet(fnn.BatchNorm), ConvNet(BatchNorm)
    variables = jax.jit(flax_model.init, static_argnames="train")(jax.random.key(1), x, train=False)
    # the flax checkpoint loads as is: same tree, shapes and dtypes as our own init
    ours_init = jax.eval_shape(lambda: our_model.init(jax.random.key(1), x, train=False))
    spec = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    assert spec(ours_init) == spec(variables)
    train = jax.jit(lambda m, v: m.apply(v, x, train=True, mutable=["batch_stats"]),
                    static_argnums=0)
    evaluate = jax.jit(lambda m, v: m.apply(v, x, train=False), static_argnums=0)
    (y_f, new_f), (y_o, new_o) = train(flax_model, variables), train(our_model, variables)
    np.testing.assert_allclose(y_o, y_f, atol=1e-5, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                           new_o, new_f)
    trained = {**variables, **new_o}
    np.testing.assert_allclose(evaluate(our_model, trained), evaluate(flax_model, trained),
                               atol=1e-5, rtol=1e-5)


# --- numerical stability ----------------------------------------------------------------------


def test_stable_variance_at_large_mean_over_std():
    """|mean|/std = 1e4 in float32: ours is within 1e-3 of float64; flax's fast variance is not.

    E[x^2] - E[x]^2 subtracts two numbers ~1e8 whose difference is ~1: float32 keeps ~7 digits,
    so the result is rounding noise (often clipped to 0, which makes the output explode).
    """
    k1, k2 = jax.random.split(jax.random.key(0))
    shape = (64, 4, 4, 8)
    std = 1.0 + jax.random.uniform(k2, (8,))
    x = (1e4 * std + std * jax.random.normal(k1, shape)).astype(jnp.float32)
    x64 = np.asarray(x, np.float64)
    mu, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    assert np.all(np.abs(mu) / np.sqrt(var) > 0.9e4)
    dy = jnp.ones(shape)
    ref = np_batchnorm(x, -1, np.ones(8), np.zeros(8), dy)

    bn = BatchNorm(momentum=0.0)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)
    y, stats, _, _ = train_step(bn, variables, x, dy)
    np.testing.assert_allclose(stats["mean"], mu, rtol=1e-6)
    np.testing.assert_allclose(stats["var"], var, rtol=1e-3)
    np.testing.assert_allclose(y, ref["y"], atol=2e-3)

    flax_bn = fnn.BatchNorm(momentum=0.0)  # use_fast_variance=True by default
    _, flax_stats, _, _ = train_step(flax_bn, variables, x, dy)
    rel_err = np.abs(np.asarray(flax_stats["var"]) - var) / var
    assert rel_err.max() > 0.5, rel_err  # documents why the default differs from flax
    # and our opt-in to flax's formula reproduces it
    fast_bn = BatchNorm(momentum=0.0, use_fast_variance=True)
    _, fast_stats, _, _ = train_step(fast_bn, variables, x, dy)
    np.testing.assert_allclose(fast_stats["var"], flax_stats["var"], rtol=1e-6)


def test_stable_variance_with_masks_and_ghost_batches():
    """The statistics are those of the unmasked elements, and per ghost batch."""
    k1, k2 = jax.random.split(jax.random.key(1))
    shape = (16, 10, 3)
    x = (-2e4 + 2.0 * jax.random.normal(k1, shape)).astype(jnp.float32)
    mask = jax.random.bernoulli(k2, 0.7, shape[:2] + (1,)).at[:, 0].set(False)  # slice 0 masked
    ref = np_batchnorm(x, -1, np.ones(3), np.zeros(3), np.zeros(shape), np.asarray(mask))
    bn = BatchNorm(momentum=0.0)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)
    y, stats, _, _ = train_step(bn, variables, x, jnp.zeros(shape), mask)
    np.testing.assert_allclose(stats["var"], ref["var"], rtol=1e-3)
    np.testing.assert_allclose(y, ref["y"], atol=2e-3)
    ghost = BatchNorm(momentum=0.0, virtual_batch_size=4)
    y, stats, _, _ = train_step(ghost, variables, x, jnp.zeros(shape))
    refs = [np_batchnorm(x[i:i + 4], -1, np.ones(3), np.zeros(3), np.zeros((4, 10, 3)))
            for i in range(0, 16, 4)]
    np.testing.assert_allclose(stats["var"], np.mean([r["var"] for r in refs], 0), rtol=1e-3)


_COND_SHAPE = (48, 5, 4)


@jax.jit
def _train_outputs(x, dy):
    """Batch statistics and d(sum(y * dy))/dx of a default BatchNorm (unit scale, zero bias)."""
    bn = BatchNorm(momentum=0.0)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)

    def loss(x):
        y, new = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        return jnp.sum(y * dy), new["batch_stats"]

    dx, stats = jax.grad(loss, has_aux=True)(x)
    return stats["mean"], stats["var"], dx


@given(log_ratio=st.floats(-2.0, 4.5), sign=st.sampled_from([-1.0, 1.0]),
       sort=st.booleans(), seed=st.integers(0, 2**16))
def test_statistics_and_gradients_accurate_at_any_mean_over_std(log_ratio, sign, sort, seed):
    """float32 statistics within 1e-3 of float64 for |mean|/std from 1e-2 to 3e4, sorted or not.

    Covers both sides of the switch from the plain sums to the recomputation around the first
    mean (E[x^2] > 64 var), and batches sorted along the batch axis.
    """
    kx, kdy, ks = jax.random.split(jax.random.key(seed), 3)
    std = 0.5 + jax.random.uniform(ks, (_COND_SHAPE[-1],))
    z = jax.random.normal(kx, _COND_SHAPE)
    if sort:
        z = jnp.sort(z, axis=0)
    x = (sign * 10.0**log_ratio * std + std * z).astype(jnp.float32)
    dy = jax.random.normal(kdy, _COND_SHAPE)
    ref = np_batchnorm(x, -1, np.ones(4), np.zeros(4), dy)
    mean, var, dx = _train_outputs(x, dy)
    mean_err = np.abs(np.asarray(mean, np.float64) - ref["mean"])
    ulp_of_mean = np.abs(ref["mean"]) * np.finfo(np.float32).eps
    assert np.all(mean_err <= 2 * ulp_of_mean + 1e-6 * np.sqrt(ref["var"])), (mean_err, ulp_of_mean)
    np.testing.assert_allclose(var, ref["var"], rtol=1e-3)
    # x itself is rounded to float32 at ~|mean| * eps: x_hat (and so dx) cannot be better
    atol = 5e-4 + 4 * (10.0**log_ratio) * float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(dx, ref["dx"], atol=atol * np.abs(ref["dx"]).max())


def test_stable_statistics_under_vmap_with_mixed_conditioning():
    """Under vmap the recomputation's cond becomes a select: each instance stays accurate."""
    kx, kdy = jax.random.split(jax.random.key(3))
    z = jax.random.normal(kx, (2, *_COND_SHAPE))
    x = jnp.stack([1.0 + z[0], 3e4 + z[1]])
    dy = jax.random.normal(kdy, x.shape)
    mean, var, dx = jax.vmap(_train_outputs)(x, dy)
    for i in range(2):
        ref = np_batchnorm(x[i], -1, np.ones(4), np.zeros(4), dy[i])
        np.testing.assert_allclose(var[i], ref["var"], rtol=1e-3)
        np.testing.assert_allclose(dx[i], ref["dx"], atol=1e-2 * np.abs(ref["dx"]).max())


def test_second_derivatives_match_flax_exact_autodiff():
    """The custom_jvp keeps derivatives of every order exact (e.g. gradient penalties)."""
    x, dy, _, _ = random_inputs((5, 3), -1)

    def hessian(module):
        variables = module.init(jax.random.key(0), x, use_running_average=False)

        def loss(x):
            y, _ = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y) * dy)

        return jax.jit(jax.hessian(loss))(x)

    expected = hessian(fnn.BatchNorm(use_fast_variance=False))  # differentiates E[(x - mean)^2]
    np.testing.assert_allclose(hessian(BatchNorm()), expected, atol=1e-4, rtol=1e-4)


def test_half_precision_inputs_keep_float32_statistics():
    x, dy, _, _ = random_inputs((16, 4, 4, 6), -1)
    for dtype in (jnp.bfloat16, jnp.float16):
        xh = x.astype(dtype)
        bn = BatchNorm(momentum=0.5)
        variables = bn.init(jax.random.key(0), xh, use_running_average=False)
        assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(variables))
        y, stats, _, _ = train_step(bn, variables, xh, dy)
        assert y.dtype == jnp.float32  # like flax: promoted by the float32 params
        assert stats["mean"].dtype == stats["var"].dtype == jnp.float32
        ref = np_batchnorm(xh, -1, np.ones(6), np.zeros(6), dy)
        # statistics of the half-precision values, computed without half-precision rounding
        np.testing.assert_allclose(stats["mean"], 0.5 * ref["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["var"], 0.5 + 0.5 * ref["var"], rtol=1e-5)
        y16, _ = BatchNorm(dtype=dtype, use_running_average=False).apply(variables, xh,
                                                                          mutable=["batch_stats"])
        assert y16.dtype == dtype


# --- freezing and validation ------------------------------------------------------------------


def test_frozen_statistics_still_train_scale_and_bias():
    x, dy, gamma, beta = random_inputs((8, 3, 3, 4), -1)
    bn = BatchNorm(momentum=0.9)
    stats = {"mean": jnp.full((4,), 0.3), "var": jnp.full((4,), 2.0)}
    params = {"scale": gamma, "bias": beta}

    def loss(p):
        y, new = bn.apply({"params": p, "batch_stats": stats}, x, use_running_average=True,
                          mutable=["batch_stats"])
        return jnp.sum(y * dy), new

    (_, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert np.all(np.abs(grads["scale"]) > 0) and np.all(np.abs(grads["bias"]) > 0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new["batch_stats"], stats)
    x_hat = (np.asarray(x) - 0.3) / np.sqrt(2.0 + EPS)
    np.testing.assert_allclose(grads["scale"], (np.asarray(dy) * x_hat).sum((0, 1, 2)), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, call_shape, match",
    [
        (dict(momentum=1.0), None, "momentum=1.0"),
        (dict(momentum=-0.1), None, "momentum=-0.1"),
        (dict(epsilon=0.0), None, "epsilon=0.0"),
        (dict(epsilon=-1e-5), None, "epsilon=-1e-05"),
        (dict(virtual_batch_size=0), None, "virtual_batch_size=0"),
        (dict(axis=4), (2, 3, 3, 4), "axis=4"),
        (dict(axis=(1, -5)), (2, 3, 3, 4), r"axis=\(1, -5\)"),
        (dict(virtual_batch_size=3), (8, 4),
         "virtual_batch_size=3 does not divide the batch size 8"),
        (dict(virtual_batch_size=2, axis=0), (8, 4), "virtual_batch_size=2 splits axis 0"),
        (dict(virtual_batch_size=2, axis_name="batch"), (8, 4), "axis_name='batch'"),
    ],
)
def test_invalid_configuration_raises_value_error(kwargs, call_shape, match):
    with pytest.raises(ValueError, match=match):
        bn = BatchNorm(use_running_average=False, **kwargs)
        bn.init(jax.random.key(0), jnp.ones(call_shape))
