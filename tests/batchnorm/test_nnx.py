"""jaxreg.nnx.BatchNorm against flax.nnx.BatchNorm, NumPy float64 and jaxreg.nn (linen)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxreg import nn as jnn
from jaxreg import nnx as jnnx
from jaxreg.nn import fold_batchnorm, momentum_from_torch, recalibrate_batch_stats

X = 0.5 + 2.0 * jax.random.normal(jax.random.key(0), (8, 5, 6))
DY = jax.random.normal(jax.random.key(1), (8, 5, 6))
MASK = jax.random.bernoulli(jax.random.key(2), 0.6, (8, 5, 1)).at[0, 0].set(True)


def _pair(num_features=6, **kw):
    """(ours, flax's) with the same parameters; flax's fast variance = our default's sums."""
    ours = jnnx.BatchNorm(num_features, rngs=nnx.Rngs(0), **kw)
    theirs = nnx.BatchNorm(num_features, rngs=nnx.Rngs(0), **kw)
    key = jax.random.key(3)
    for m in (ours, theirs):  # non-trivial scale/bias
        m.scale[...] = 1.0 + 0.3 * jax.random.normal(key, (num_features,))
        m.bias[...] = 0.2 * jax.random.normal(jax.random.fold_in(key, 1), (num_features,))
    return ours, theirs


@nnx.jit
def _step(model, x, dy, mask):
    """One training call: output, gradients wrt (params, x), running stats updated in place."""

    def loss(model, x):
        y = model(x, mask=mask)
        return jnp.sum(y * dy), y

    (_, y), (grads, dx) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model, x)
    return y, grads, dx


def _close(a, b, atol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_matches_flax_over_several_steps_and_in_eval_mode(masked):
    mask = MASK if masked else None
    ours, theirs = _pair(momentum=0.8)
    for _ in range(3):
        y, g, dx = _step(ours, X, DY, mask)
        y_ref, g_ref, dx_ref = _step(theirs, X, DY, mask)
        _close((y, dx), (y_ref, dx_ref))
        _close(nnx.state(g, nnx.Param), nnx.state(g_ref, nnx.Param), atol=1e-4)
        _close(nnx.state(ours, nnx.BatchStat), nnx.state(theirs, nnx.BatchStat), atol=1e-6)
    ours.eval()
    theirs.eval()
    assert ours.use_running_average and theirs.use_running_average
    _close(ours(X), theirs(X))
    ours.train()
    assert ours.use_running_average is False
    _close(ours(X, use_running_average=True), theirs(X))  # the call argument wins


def test_same_variables_and_eager_numbers_as_flax():
    ours, theirs = _pair()
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(theirs))
    assert {type(v) for _, v in nnx.to_flat_state(nnx.state(ours))} == {nnx.Param, nnx.BatchStat}
    np.testing.assert_array_equal(ours(X), theirs(X))  # eager, bit for bit
    np.testing.assert_array_equal(ours.var[...], theirs.var[...])
    # flax's variables load into ours
    nnx.update(ours, nnx.state(theirs))
    no_scale = jnnx.BatchNorm(6, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    assert no_scale.scale is None and no_scale.bias is None
    assert not nnx.to_flat_state(nnx.state(no_scale, nnx.Param))


@pytest.mark.parametrize("axis, shape", [(1, (4, 3, 5)), (0, (3, 4)), (-2, (2, 3, 4, 5))])
def test_axis_variants_match_flax(axis, shape):
    x = jax.random.normal(jax.random.key(4), shape) * 3 + 1
    n = shape[axis]
    ours, theirs = _pair(n, axis=axis)
    call = nnx.jit(lambda m, x: m(x))
    _close(call(ours, x), call(theirs, x))
    _close(ours.mean[...], theirs.mean[...], atol=1e-6)


def test_under_vmap_scan_remat_and_split_merge():
    ours, theirs = _pair()

    def run(model):
        @nnx.vmap(in_axes=(None, 0), out_axes=0, axis_name="ensemble")
        def per_member(model, x):
            return nnx.remat(lambda m, x: m(x))(model, x)

        xs = jnp.stack([X, 2 * X])
        model.eval()
        y_eval = per_member(model, xs)
        model.train()

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        def steps(model, x):
            return model, model(x)

        model, ys = steps(model, jnp.stack([X, X + 1.0, X * 0.5]))
        return y_eval, ys, nnx.state(model, nnx.BatchStat)

    _close(run(ours), run(theirs))
    graphdef, state = nnx.split(ours)
    again = nnx.merge(graphdef, state)
    assert isinstance(again, jnnx.BatchNorm)
    _close(again(X), ours(X))


def test_vmapped_layers_match_flax():
    def make(cls):
        @nnx.vmap(in_axes=0, out_axes=0)
        def create(key):
            return cls(6, rngs=nnx.Rngs(key))

        return create(jax.random.split(jax.random.key(0), 3))

    ours, theirs = make(jnnx.BatchNorm), make(nnx.BatchNorm)
    forward = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))
    _close(forward(ours, X), forward(theirs, X))
    assert ours.mean[...].shape == (3, 6)
    _close(ours.var[...], theirs.var[...], atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"virtual_batch_size": 4}, {"unbiased_running_var": True},
                                {"use_fast_variance": True}])
def test_linen_and_nnx_front_ends_are_equal(kw):
    linen = jnn.BatchNorm(momentum=0.7, force_float32_reductions=True, **kw)
    variables = linen.init(jax.random.key(0), X, use_running_average=False)
    ours = jnnx.BatchNorm(6, momentum=0.7, rngs=nnx.Rngs(0), **kw)

    @jax.jit
    def linen_step(variables, x, mask):
        return linen.apply(variables, x, use_running_average=False, mask=mask,
                           mutable=["batch_stats"])

    for _ in range(2):
        y, new = linen_step(variables, X, MASK)
        variables = {**variables, **new}
        y_nnx = nnx.jit(lambda m, x, mask: m(x, mask=mask))(ours, X, MASK)
        # one core; the two programs may fuse differently (1 ulp)
        _close(y, y_nnx, atol=1e-6)
        _close(variables["batch_stats"], nnx.to_pure_dict(nnx.state(ours, nnx.BatchStat)),
               atol=1e-7)


def test_renorm_equals_batchnorm_with_trivial_bounds_and_counts_steps():
    bn = jnnx.BatchNorm(6, momentum=0.5, rngs=nnx.Rngs(0))
    rn = jnnx.BatchRenorm(6, momentum=0.5, r_max=1.0, d_max=0.0, rngs=nnx.Rngs(0))
    for _ in range(2):
        _close(bn(X), rn(X))
    assert int(rn.step[...]) == 2
    rn.eval()
    rn(X)
    assert int(rn.step[...]) == 2
    linen = jnn.BatchRenorm(momentum=0.5, r_max=2.0, d_max=0.5)
    variables = linen.init(jax.random.key(0), X, use_running_average=False)
    ours = jnnx.BatchRenorm(6, momentum=0.5, r_max=2.0, d_max=0.5, rngs=nnx.Rngs(0))
    for _ in range(3):
        y, new = linen.apply(variables, X + 1.0, use_running_average=False,
                             mutable=["batch_stats"])
        variables = {**variables, **new}
        _close(y, ours(X + 1.0))
    _close(variables["batch_stats"]["var"], ours.var[...])


def test_stable_variance_far_from_zero():
    x = 1e4 + jax.random.normal(jax.random.key(5), (256, 4))
    ours = jnnx.BatchNorm(4, momentum=0.0, rngs=nnx.Rngs(0))
    flax_fast = nnx.BatchNorm(4, momentum=0.0, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(ours, x)
    flax_fast(x)
    xd = np.asarray(x, np.float64)
    np.testing.assert_allclose(ours.var[...], xd.var(0), rtol=1e-3)
    assert np.max(np.abs(np.asarray(flax_fast.var[...]) / xd.var(0) - 1)) > 0.1  # flax: noise
    np.testing.assert_allclose(y, (xd - xd.mean(0)) / np.sqrt(xd.var(0) + 1e-5), atol=2e-3)


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning", "ignore::FutureWarning")
def test_complex_inputs_have_flax_semantics():
    k1, k2 = jax.random.split(jax.random.key(6))
    x = (jax.random.normal(k1, (4, 3, 2)) + 1j * jax.random.normal(k2, (4, 3, 2))).astype(
        jnp.complex64)
    ours, theirs = _pair(2, dtype=jnp.complex64)
    _close(ours(x), theirs(x))
    assert ours.var[...].dtype == theirs.var[...].dtype == jnp.float32
    _close(ours.var[...], theirs.var[...], atol=1e-6)
    # the mean stays complex (flax.nnx drops its imaginary part; flax.linen keeps it)
    assert ours.mean[...].dtype == jnp.complex64
    xd = np.asarray(x, np.complex128).reshape(-1, 2)
    np.testing.assert_allclose(ours.mean[...], 0.01 * xd.mean(0), atol=1e-7)


def test_bfloat16_compute_keeps_float32_statistics():
    ours, theirs = _pair(dtype=jnp.bfloat16)
    y = ours(X.astype(jnp.bfloat16))
    y_ref = theirs(X.astype(jnp.bfloat16))
    assert y.dtype == y_ref.dtype == jnp.bfloat16
    assert ours.mean[...].dtype == ours.var[...].dtype == jnp.float32
    _close(y.astype(jnp.float32), y_ref.astype(jnp.float32), atol=0.05)
    _close(ours.var[...], theirs.var[...], atol=1e-5)


@pytest.mark.parametrize(
    "kw, match",
    [({"momentum": 1.0}, "momentum=1.0"), ({"epsilon": jnp.array(-1.0)}, "epsilon=-1.0"),
     ({"virtual_batch_size": 2, "axis_name": "d"}, "axis_name='d'"),
     ({"virtual_batch_size": True}, "virtual_batch_size=True")],
)
def test_invalid_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        jnnx.BatchNorm(6, rngs=nnx.Rngs(0), **kw)
    with pytest.raises(ValueError, match="r_max=0.5"):
        jnnx.BatchRenorm(6, r_max=0.5, rngs=nnx.Rngs(0))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.bn = jnnx.BatchNorm(4, momentum=0.9, epsilon=1e-3, rngs=rngs)
        self.out = nnx.Linear(4, 2, use_bias=False, rngs=rngs)
        self.bn2 = jnnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x):
        return self.bn2(self.out(nnx.relu(self.bn(self.dense(x)))))


@pytest.mark.usefixtures("highest_precision")  # the reference is a float64 Linear's output
def test_recalibrate_nnx_gives_population_statistics():
    model = Net(nnx.Rngs(0))
    model.eval()
    batches = [jax.random.normal(jax.random.key(i), (n, 3)) + 1.0
               for i, n in enumerate([16, 16, 5])]
    recalibrate_batch_stats(model, batches)
    assert model.bn.use_running_average and not model.bn.record_moments  # restored
    h = np.concatenate([np.asarray(model.dense(b), np.float64) for b in batches])
    np.testing.assert_allclose(model.bn.mean[...], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn.var[...], h.var(0), rtol=1e-5)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batch_stats(model, [])


@pytest.mark.usefixtures("highest_precision")  # folding is exact; the matmuls round
def test_fold_batchnorm_nnx_keeps_outputs_and_reads_epsilon():
    model = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(7), (16, 3)) + 1.0
    model(x)  # train: non-trivial running statistics
    model.eval()
    expected = model(x)
    with pytest.raises(ValueError, match="got epsilon=1e-05"):
        fold_batchnorm(model, [(model.dense, model.bn)], epsilon=1e-5)
    fold_batchnorm(model, [(model.dense, model.bn), (model.out, model.bn2)])
    _close(model(x), expected, atol=1e-4)
    np.testing.assert_array_equal(model.bn.mean[...], np.zeros(4))
    with pytest.raises(ValueError, match="remove_bn=True is for linen"):
        fold_batchnorm(model, [(model.dense, model.bn)], remove_bn=True)


def test_momentum_converters_apply_to_nnx():
    bn = jnnx.BatchNorm(6, momentum=momentum_from_torch(0.1), unbiased_running_var=True,
                        rngs=nnx.Rngs(0))
    bn(X)
    xd = np.asarray(X, np.float64).reshape(-1, 6)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * xd.var(0, ddof=1), rtol=1e-5)


def test_view_info_describes_our_layers_as_flax_describes_its_own():
    """nnx.view_info parses set_view's docstring; without an Args section it raised
    KeyError: 'use_running_average'."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.ours = jnnx.BatchNorm(3, rngs=rngs)
            self.renorm = jnnx.BatchRenorm(3, rngs=rngs)
            self.theirs = nnx.BatchNorm(3, rngs=rngs)

    model = Model(nnx.Rngs(0))
    info = nnx.view_info(model)
    flax_info = nnx.view_info(model.theirs)
    assert flax_info.startswith("BatchNorm:\n  use_running_average: bool | None = None\n")
    body = flax_info.removeprefix("BatchNorm:")
    assert info.count(f"BatchNorm:{body}") == 2 and f"BatchRenorm:{body}" in info, info
    assert nnx.view(model, use_running_average=True).renorm.use_running_average is True


def test_fold_batchnorm_nnx_refuses_training_mode_before_changing_anything():
    model = Net(nnx.Rngs(0))
    model(jax.random.normal(jax.random.key(7), (16, 3)) + 1.0)  # still in .train() mode
    before = jax.tree.map(np.asarray, nnx.state(model))
    with pytest.raises(ValueError, match=r"`pairs\[0\]\[1\].use_running_average` must be True"):
        fold_batchnorm(model, [(model.dense, model.bn), (model.out, model.bn2)])
    model.bn.eval()  # the second pair is still training: the first is not folded either
    with pytest.raises(ValueError, match=r"pairs\[1\]\[1\]"):
        fold_batchnorm(model, [(model.dense, model.bn), (model.out, model.bn2)])
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), before)


def test_recalibrate_names_its_two_forms():
    model = Net(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(model, batches\) for an NNX model"):
        recalibrate_batch_stats(model, {}, [jnp.ones((2, 3))])
    with pytest.raises(ValueError, match=r"\(apply_fn, variables, batches\) for linen"):
        recalibrate_batch_stats(lambda v, x, **kw: x, [jnp.ones((2, 3))])
