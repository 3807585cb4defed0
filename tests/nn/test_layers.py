"""jaxreg.nn.layers (SmallCNN's CPU-fast pieces) against flax / lax: max_pool_2x2 vs flax's
max_pool, im2col_conv vs lax.conv_general_dilated (values and gradients), SmallCNN vs its flax
original."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import models
from jaxreg.nn import BatchNorm, im2col_conv, max_pool_2x2
from tests.helpers import matmul_tolerance


def _flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _ties(shape, dtype, seed=0):
    """Small integers: most 2x2 windows hold tied maxima (the case that decides the gradient)."""
    return jnp.asarray(np.random.default_rng(seed).integers(-2, 3, shape), dtype)


def _weighted_sum(pool):
    """A scalar whose cotangent differs per output, so a misrouted gradient cannot cancel."""
    def f(x):
        y = pool(x)
        return (y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)).sum()
    return f


@pytest.mark.parametrize("shape", [(3, 8, 8, 2), (2, 7, 5, 3), (1, 2, 2, 1), (2, 3, 9, 1)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradient_equal_flax(shape, dtype):
    x = _ties(shape, dtype)
    np.testing.assert_array_equal(max_pool_2x2(x), _flax_pool(x))
    for ours in (max_pool_2x2, jax.jit(max_pool_2x2)):
        np.testing.assert_array_equal(jax.grad(_weighted_sum(ours))(x),
                                      jax.grad(_weighted_sum(_flax_pool))(x))


def test_float64_and_vmap():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 6, 6, 2)))
        ours = jax.vmap(jax.grad(_weighted_sum(max_pool_2x2)))(x)
        ref = jax.vmap(jax.grad(_weighted_sum(_flax_pool)))(x)
        assert ours.dtype == jnp.float64
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(jax.vmap(max_pool_2x2)(x), jax.vmap(_flax_pool)(x))


def test_gradient_goes_to_the_first_maximum_in_row_major_order():
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_array_equal(jax.grad(lambda x: max_pool_2x2(x).sum())(x)[0, :, :, 0],
                                  [[1.0, 0.0], [0.0, 0.0]])
    x = x.at[0, 1, 0, 0].set(2.0)
    np.testing.assert_array_equal(jax.grad(lambda x: max_pool_2x2(x).sum())(x)[0, :, :, 0],
                                  [[0.0, 0.0], [1.0, 0.0]])


class _FlaxSmallCNN(models.SmallCNN):
    """SmallCNN as it was written before: flax's Conv (lax) and max_pool."""

    @nn.compact
    def __call__(self, x, train):
        for c in self.channels:
            x = nn.Conv(c, (3, 3))(x)  # lax.conv_general_dilated
            x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=models.BN_EPSILON)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def test_small_cnn_matches_flax_pooling_version():
    """Same variables (checkpoints load), same logits, batch statistics and gradients."""
    x = jax.random.uniform(jax.random.key(0), (8, 12, 12, 1))
    y = jnp.arange(8) % 10
    ours, ref = models.SmallCNN(), _FlaxSmallCNN()
    variables = ours.init(jax.random.key(1), x, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(
        ref.init(jax.random.key(1), x, train=False))

    def loss(model, params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    def value_and_grad(model):  # jitted: eager dispatch of every op took ~40 s
        return jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(
            variables["params"])

    (l1, u1), g1 = value_and_grad(ours)
    (l2, u2), g2 = value_and_grad(ref)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves((u1, g1)), jax.tree.leaves((u2, g2)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1))])
@pytest.mark.parametrize("shape", [((2, 7, 6, 3), (3, 3, 3, 5)), ((1, 5, 5, 1), (2, 3, 1, 4))])
def test_im2col_conv_values_and_gradients_equal_lax(shape, padding):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x, w = (jnp.asarray(rng.standard_normal(s)) for s in shape)
        dn = ("NHWC", "HWIO", "NHWC")

        def ref(x, w):
            return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)

        def ours(x, w):
            return im2col_conv(x, w, (1, 1), padding, dimension_numbers=dn)

        y = ref(x, w)
        np.testing.assert_allclose(jax.jit(ours)(x, w), y, rtol=1e-12, atol=1e-12)
        cotangent = jnp.asarray(rng.standard_normal(y.shape))
        for a, b in zip(jax.vjp(ours, x, w)[1](cotangent), jax.vjp(ref, x, w)[1](cotangent),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("precision", [None, "highest"])
def test_im2col_conv_in_flax_conv_float32(precision):
    """Equal to flax's Conv to float32 rounding at "highest", to the rounding of the backend's
    default precision otherwise (TF32 on GPU): both follow jax_default_matmul_precision."""
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, 2))
    ref = nn.Conv(6, (3, 3))
    ours = nn.Conv(6, (3, 3), conv_general_dilated=im2col_conv)
    variables = ref.init(jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(ours.init(jax.random.key(1), x))
    with jax.default_matmul_precision(precision):
        tol = matmul_tolerance(1e-5)
        np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), atol=tol)
        g_ours = jax.grad(lambda v: (ours.apply(v, x) ** 2).sum())(variables)
        g_ref = jax.grad(lambda v: (ref.apply(v, x) ** 2).sum())(variables)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=max(tol, 1e-4), atol=max(tol, 1e-4))


@pytest.mark.parametrize("bad", [{"window_strides": (2, 2)}, {"rhs_dilation": (2, 2)},
                                 {"feature_group_count": 2},
                                 {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}])
def test_im2col_conv_rejects_what_it_does_not_implement(bad):
    args = {"window_strides": (1, 1), "dimension_numbers": ("NHWC", "HWIO", "NHWC"), **bad}
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        im2col_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)),
                           args.pop("window_strides"), "SAME", **args)
