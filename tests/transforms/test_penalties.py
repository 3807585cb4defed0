"""jaxreg.penalties against NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import penalties

RNG = np.random.default_rng(0)
PARAMS_NP = {
    "Dense_0": {"kernel": RNG.normal(size=(4, 3)), "bias": RNG.normal(size=3)},
    "Conv_0": {"kernel": RNG.normal(size=(3, 3, 2, 2)), "bias": RNG.normal(size=2)},
    "norm": {"scale": RNG.normal(size=3)},
}
MASKS = {
    None: {"Dense_0": {"kernel": True, "bias": False}, "Conv_0": {"kernel": True, "bias": False},
           "norm": {"scale": False}},
    "all": jax.tree.map(lambda _: True, PARAMS_NP),
    "custom": {"Dense_0": {"kernel": False, "bias": True}, "Conv_0": {"kernel": True, "bias": True},
               "norm": {"scale": True}},
}


def reference(fn, mask):
    """sum of fn(w) over the leaves the mask selects, in float64 NumPy."""
    keep = jax.tree.leaves(MASKS[mask])
    return sum(float(np.sum(fn(w))) for k, w in zip(keep, jax.tree.leaves(PARAMS_NP), strict=True)
               if k)


def as_jax(dtype):
    return jax.tree.map(lambda w: jnp.asarray(w, dtype), PARAMS_NP)


@pytest.mark.parametrize("mask", list(MASKS))
def test_l1_l2_elastic_net_match_numpy(mask):
    params = as_jax(jnp.float32)
    arg = MASKS[mask] if mask == "custom" else mask
    ref_l2 = reference(np.square, mask)
    ref_l1 = reference(np.abs, mask)
    np.testing.assert_allclose(penalties.l2(params, arg), ref_l2, rtol=1e-6)
    np.testing.assert_allclose(penalties.l1(params, arg), ref_l1, rtol=1e-6)
    # sklearn's ElasticNet(alpha, l1_ratio) penalty: alpha*r*|w|_1 + alpha*(1-r)/2*|w|^2
    alpha, ratio = 0.3, 0.25
    np.testing.assert_allclose(
        penalties.elastic_net(params, alpha * ratio, alpha * (1 - ratio), arg),
        alpha * ratio * ref_l1 + 0.5 * alpha * (1 - ratio) * ref_l2, rtol=1e-6)


def test_result_dtype_is_default_float():
    bf16 = as_jax(jnp.bfloat16)
    value = penalties.l2(bf16, "all")
    assert value.dtype == jnp.float32 and value.shape == ()
    exact = sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in jax.tree.leaves(bf16))
    np.testing.assert_allclose(value, exact, rtol=1e-6)  # summed in float32, not bfloat16
    with jax.enable_x64(True):
        assert penalties.l1(as_jax(jnp.float32)).dtype == jnp.float64
        value = penalties.l2(as_jax(jnp.float64), "all")
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(value, reference(np.square, "all"), rtol=1e-13)


def test_empty_mask_gives_zero():
    params = as_jax(jnp.float32)
    assert float(penalties.l2(params, jax.tree.map(lambda _: False, params))) == 0.0
    assert float(penalties.l1({"bias": jnp.ones(3)})) == 0.0


def test_grad_jit_vmap():
    params = as_jax(jnp.float32)
    grads = jax.grad(penalties.l2)(params)
    expected = jax.tree.map(lambda w, m: 2 * w * m, params, MASKS[None])
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6), grads, expected)
    np.testing.assert_allclose(jax.jit(penalties.l1)(params), penalties.l1(params), rtol=1e-6)
    batch = jax.tree.map(lambda w: jnp.stack([w, 2 * w, -w]), params)
    np.testing.assert_allclose(jax.vmap(penalties.l2)(batch),
                               np.array([1.0, 4.0, 1.0]) * reference(np.square, None), rtol=1e-5)
    # strengths may be traced
    strengths = jnp.array([0.0, 1.0, 2.0])
    got = jax.vmap(lambda s: penalties.elastic_net(params, s, 2 * s))(strengths)
    np.testing.assert_allclose(
        got, strengths * (reference(np.abs, None) + reference(np.square, None)), rtol=1e-5)
