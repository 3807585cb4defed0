"""Edge cases of jaxreg.nn.BatchNorm against flax.linen, and the documented differences."""
from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.nn import BatchNorm, BatchRenorm, fold_batchnorm
from tests.helpers import matmul_tolerance


def _train(module, x, mask=None, steps=1):
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    for _ in range(steps):
        y, new = module.apply(variables, x, use_running_average=False, mask=mask,
                              mutable=["batch_stats"])
        variables = {**variables, **new}
    return y, variables["batch_stats"]


def _complex(shape, seed=0, loc=0.0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (loc + jax.random.normal(k1, shape) + 1j * jax.random.normal(k2, shape)).astype(
        jnp.complex64)


# --- complex inputs have flax's semantics ----------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("fast", [False, True])
def test_complex_inputs_match_flax(masked, fast):
    x = _complex((4, 3, 2))
    mask = jnp.array([True, False, True, True])[:, None, None] if masked else None
    ours = BatchNorm(dtype=jnp.complex64, momentum=0.9, use_fast_variance=fast)
    theirs = fnn.BatchNorm(dtype=jnp.complex64, momentum=0.9)
    y, stats = _train(ours, x, mask, steps=2)
    y_ref, stats_ref = _train(theirs, x, mask, steps=2)
    w = np.ones((4, 1, 1)) if mask is None else np.asarray(mask, np.float64)
    xd = np.asarray(x, np.complex128)
    mu = (w * xd).sum((0, 1)) / (w.sum() * 3)
    var = (w * np.abs(xd - mu) ** 2).sum((0, 1)) / (w.sum() * 3)
    # the normalized output has unit variance over the counted elements (was ~1e5)
    np.testing.assert_allclose(var, np.var(xd[np.asarray(w[:, 0, 0], bool)], (0, 1)), rtol=1e-12)
    yd = np.asarray(y)[np.asarray(w[:, 0, 0], bool)]
    np.testing.assert_allclose(np.mean(np.abs(yd - yd.mean((0, 1))) ** 2, (0, 1)),
                               var / (var + 1e-5), rtol=1e-4)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    assert stats["mean"].dtype == stats_ref["mean"].dtype == jnp.complex64
    assert stats["var"].dtype == stats_ref["var"].dtype == jnp.float32
    np.testing.assert_allclose(stats["mean"], stats_ref["mean"], atol=1e-6)
    np.testing.assert_allclose(stats["var"], stats_ref["var"], atol=1e-6)


def test_complex_stable_variance_far_from_zero():
    x = _complex((64, 3), seed=1, loc=1e4 * (1 + 1j))
    _, stats = _train(BatchNorm(momentum=0.0, dtype=jnp.complex64), x)
    xd = np.asarray(x, np.complex128)
    np.testing.assert_allclose(stats["var"], np.mean(np.abs(xd - xd.mean(0)) ** 2, 0), rtol=2e-3)
    np.testing.assert_allclose(stats["mean"], xd.mean(0), rtol=1e-6)


def test_complex_gradients_match_flax():
    x = _complex((6, 3), seed=2)
    dy = _complex((6, 3), seed=3)

    def grad(module):
        variables = module.init(jax.random.key(0), x, use_running_average=False)

        def loss(x):
            y, _ = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
            return jnp.real(jnp.sum(y * jnp.conj(dy)))

        return jax.grad(loss)(x)

    np.testing.assert_allclose(grad(BatchNorm(dtype=jnp.complex64)),
                               grad(fnn.BatchNorm(dtype=jnp.complex64)), atol=1e-5)


# --- eager statistics are flax's bit for bit --------------------------------------------


@pytest.mark.parametrize("axis", [-1, (1, 2), 0])
def test_eager_statistics_bit_equal_to_flax(axis):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (64, 5, 7))
    ours = BatchNorm(axis=axis, use_fast_variance=True)
    y, stats = _train(ours, x, steps=2)
    y_ref, stats_ref = _train(fnn.BatchNorm(axis=axis), x, steps=2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(stats["mean"], stats_ref["mean"])
    np.testing.assert_array_equal(stats["var"], stats_ref["var"])
    # the stable default takes the same sums on well-conditioned inputs
    y, stats = _train(BatchNorm(axis=axis), x, steps=2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(stats["var"], stats_ref["var"])


# --- fold_batchnorm needs the layers' epsilon -------------------------------------------


def test_fold_batchnorm_requires_epsilon_and_keeps_logits_with_models_epsilon():
    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return BatchNorm(use_running_average=True, epsilon=1e-3)(fnn.Dense(4)(x))

    x = jax.random.normal(jax.random.key(0), (5, 3))
    variables = Net().init(jax.random.key(1), x)
    variables["batch_stats"]["BatchNorm_0"]["var"] = jnp.full((4,), 1e-3)
    with pytest.raises(ValueError, match="pass epsilon="):
        fold_batchnorm(variables, [("Dense_0", "BatchNorm_0")])
    folded = fold_batchnorm(variables, [("Dense_0", "BatchNorm_0")], epsilon=1e-3)
    tol = matmul_tolerance(1e-5)
    np.testing.assert_allclose(Net().apply(folded, x), Net().apply(variables, x), rtol=tol,
                               atol=tol)


# --- degenerate batches keep the running statistics; bad hyperparameters raise --------


@pytest.mark.parametrize("case", ["batch_of_one", "ghost_of_one_masked", "all_false_mask"])
def test_degenerate_batches_keep_running_statistics(case):
    x = jax.random.normal(jax.random.key(0), (4, 3))
    if case == "batch_of_one":
        module, x, mask = BatchNorm(unbiased_running_var=True, momentum=0.5), x[:1], None
    elif case == "ghost_of_one_masked":  # groups of 2, the second has one valid element
        module = BatchNorm(unbiased_running_var=True, virtual_batch_size=2, momentum=0.5)
        mask = jnp.array([True, True, True, False])[:, None]
    else:
        module, mask = BatchNorm(momentum=0.5), jnp.zeros((4, 1), bool)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    variables["batch_stats"]["mean"] = jnp.full((3,), 0.25)
    _, new = module.apply(variables, x, use_running_average=False, mask=mask,
                          mutable=["batch_stats"])
    assert np.isfinite(new["batch_stats"]["var"]).all()
    if case == "ghost_of_one_masked":  # only the first group counts
        expected_var = 0.5 + 0.5 * np.var(np.asarray(x[:2], np.float64), 0, ddof=1)
        np.testing.assert_allclose(new["batch_stats"]["var"], expected_var, rtol=1e-5)
    else:
        np.testing.assert_array_equal(new["batch_stats"]["mean"], np.full(3, 0.25))
        np.testing.assert_array_equal(new["batch_stats"]["var"], np.ones(3))


@pytest.mark.parametrize(
    "module, shape, match",
    [
        (BatchNorm(), (0, 3), "empty batch"),
        (BatchNorm(axis=(0, 1)), (4, 3), r"axis=\(0, 1\) covers every dimension"),
        (BatchNorm(axis=0), (4,), "axis=0 covers every dimension"),
    ],
)
def test_shapes_without_statistics_raise(module, shape, match):
    with pytest.raises(ValueError, match=match):
        module.init(jax.random.key(0), jnp.ones(shape), use_running_average=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"momentum": jnp.array(1.5)}, "momentum=1.5"),
        ({"momentum": np.float32(-0.5)}, "momentum=-0.5"),
        ({"epsilon": jnp.array(-1.0)}, "epsilon=-1.0"),
        ({"epsilon": float("inf")}, "epsilon=inf"),
        ({"epsilon": float("nan")}, "epsilon=nan"),
        ({"momentum": jnp.ones(3) * 0.9}, "`momentum` must be a real scalar"),
        ({"virtual_batch_size": True}, "virtual_batch_size=True"),
        ({"virtual_batch_size": 1, "unbiased_running_var": True}, "virtual_batch_size=1"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BatchNorm(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r_max": 0.0}, "r_max=0.0"),
        ({"r_max": 0.5}, "r_max=0.5"),
        ({"r_max": float("nan")}, "r_max=nan"),
        ({"d_max": -1.0}, "d_max=-1.0"),
    ],
)
def test_invalid_renorm_bounds_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchRenorm(**kwargs)


def test_renorm_accepts_schedules_and_infinite_bounds():
    x = jax.random.normal(jax.random.key(0), (8, 3))
    for module in (BatchRenorm(r_max=lambda s: 1.0 + s, d_max=lambda s: 0.0 * s),
                   BatchRenorm(r_max=float("inf"), d_max=float("inf"))):
        y, stats = _train(module, x, steps=2)
        assert np.isfinite(y).all() and int(stats["step"]) == 2


# --- the differences from flax that docs/conventions.md documents -------------------------


def test_documented_difference_rank_one_input_raises_where_flax_returns_the_bias():
    from flax import nnx

    from jaxreg import nnx as jnnx

    x = jnp.arange(4.0)
    theirs = fnn.BatchNorm(use_running_average=False)
    y, _ = theirs.apply(theirs.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    np.testing.assert_array_equal(y, np.zeros(4))  # every element is its own mean: the bias
    np.testing.assert_array_equal(nnx.BatchNorm(4, rngs=nnx.Rngs(0))(x), np.zeros(4))
    with pytest.raises(ValueError, match="axis=-1 covers every dimension of an input of rank 1"):
        BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="axis=-1 covers every dimension of an input of rank 1"):
        jnnx.BatchNorm(4, rngs=nnx.Rngs(0))(x)


def test_documented_difference_masked_out_feature_keeps_its_statistics_where_flax_gets_nan():
    from flax import nnx

    from jaxreg import nnx as jnnx

    x = 2.0 + jax.random.normal(jax.random.key(1), (8, 3))
    mask = jnp.ones((8, 3), bool).at[:, 1].set(False)
    stats = {}
    for name, module in (("theirs", fnn.BatchNorm), ("ours", BatchNorm)):
        bn = module(use_running_average=False, momentum=0.5)
        _, new = bn.apply(bn.init(jax.random.key(0), x), x, mask=mask, mutable=["batch_stats"])
        stats[name] = new["batch_stats"]
    flax_nnx, ours_nnx = (m(3, momentum=0.5, rngs=nnx.Rngs(0)) for m in (nnx.BatchNorm,
                                                                         jnnx.BatchNorm))
    flax_nnx(x, mask=mask)
    ours_nnx(x, mask=mask)
    assert np.isnan(stats["theirs"]["mean"][1]) and np.isnan(flax_nnx.mean[...][1])
    for mean, var in ((stats["ours"]["mean"], stats["ours"]["var"]),
                      (ours_nnx.mean[...], ours_nnx.var[...])):
        assert (float(mean[1]), float(var[1])) == (0.0, 1.0)  # the initial values, kept
        np.testing.assert_array_equal(mean[::2], stats["theirs"]["mean"][::2])


@pytest.mark.parametrize("ratio", [0.0, 0.5, 2.0, 6.0, 20.0, 1e3])
def test_documented_variance_against_flax_fast_and_two_pass(ratio):
    """Below |mean| / std ~ 8: flax's fast variance bit for bit, within 8 (1 + r^2) float eps
    of its two-pass variance; above: within 2 ulp of the two-pass variance."""
    x = ratio + jax.random.normal(jax.random.key(2), (256, 8))
    stats = {}
    for name, module in (("fast", fnn.BatchNorm(use_running_average=False, momentum=0.0)),
                         ("two_pass", fnn.BatchNorm(use_running_average=False, momentum=0.0,
                                                    use_fast_variance=False)),
                         ("ours", BatchNorm(use_running_average=False, momentum=0.0))):
        _, new = module.apply(module.init(jax.random.key(0), x), x, mutable=["batch_stats"])
        stats[name] = np.asarray(new["batch_stats"]["var"])
    xs = np.asarray(x, np.float64)
    r = np.abs(xs.mean(0)) / xs.std(0)
    ours, two_pass = stats["ours"], stats["two_pass"]
    if r.max() < 7:
        np.testing.assert_array_equal(ours, stats["fast"])
        bound = 8 * (1 + r**2) * np.finfo(np.float32).eps
        assert (np.abs(ours - two_pass) / two_pass <= bound).all()
    else:
        assert r.min() > 9  # all features recomputed
        assert (np.abs(ours - two_pass) <= 2 * np.spacing(two_pass)).all()
