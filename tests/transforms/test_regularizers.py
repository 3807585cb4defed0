"""jaxreg.transforms: each transform adds exactly the gradient of its documented penalty."""
import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import Ridge

import jaxreg
from jaxreg import masks, penalties

M, B = 37, 12  # num_examples and batch_size of the law cases

# name -> (transform(strength, mask), penalty(params, strength, mask), update kwargs, needs |w|>0)
LAWS = {
    "add_l2": (jaxreg.add_l2, lambda p, s, m: s / 2 * penalties.l2(p, m), {}, False),
    "add_l1": (jaxreg.add_l1, lambda p, s, m: s * penalties.l1(p, m), {}, True),
    "data_scaled_l2": (lambda s, m: jaxreg.data_scaled_l2(s, M, m),
                       lambda p, s, m: s / (2 * M) * penalties.l2(p, m), {}, False),
    "data_scaled_l1": (lambda s, m: jaxreg.data_scaled_l1(s, M, m),
                       lambda p, s, m: s / M * penalties.l1(p, m), {}, True),
    "batch_scaled_l2_half": (jaxreg.batch_scaled_l2,
                             lambda p, s, m: s / (2 * B) * penalties.l2(p, m),
                             {"batch_size": B}, False),
    "batch_scaled_l2_seed": (lambda s, m: jaxreg.batch_scaled_l2(s, m, convention="seed"),
                             lambda p, s, m: s / B * penalties.l2(p, m), {"batch_size": B}, False),
}
DTYPES = {"float32": (jnp.float32, 1e-5, 1e-6), "bfloat16": (jnp.bfloat16, 2e-2, 5e-2),
          "float64": (jnp.float64, 1e-12, 1e-12)}


@st.composite
def problems(draw):
    """A random params tree (named leaves of several shapes), a loss, a mask and a strength."""
    n_leaves = draw(st.integers(1, 3))
    names = draw(st.lists(st.sampled_from(["kernel", "bias", "scale", "w"]),
                          min_size=n_leaves, max_size=n_leaves))
    # few distinct shapes keep jax's eager compilation cache warm across examples
    shapes = draw(st.lists(st.sampled_from([(), (3,), (2, 3), (2, 2, 3)]),
                           min_size=n_leaves, max_size=n_leaves))
    mask_kind = draw(st.sampled_from(["default", "all", "tree"]))
    flags = draw(st.lists(st.booleans(), min_size=n_leaves, max_size=n_leaves))
    return dict(names=names, shapes=shapes, mask_kind=mask_kind, flags=flags,
                strength=draw(st.floats(0.0, 3.0)), seed=draw(st.integers(0, 2**31 - 1)),
                dtype=draw(st.sampled_from(list(DTYPES))))


def build(problem, away_from_zero):
    rng = np.random.default_rng(problem["seed"])
    params, coefs = {}, {}
    for i, (name, shape) in enumerate(zip(problem["names"], problem["shapes"], strict=True)):
        w = rng.normal(size=shape)
        if away_from_zero:  # |w| >= 0.1: the L1 penalty is differentiable there
            w = np.sign(w + (w == 0)) * (0.1 + np.abs(w))
        params[f"layer{i}"] = {name: w}
        coefs[f"layer{i}"] = {name: rng.normal(size=shape)}
    mask = {"default": None, "all": "all"}.get(problem["mask_kind"])
    if problem["mask_kind"] == "tree":
        mask = jax.tree.unflatten(jax.tree.structure(params), problem["flags"])
    return params, coefs, mask


@pytest.mark.parametrize("law", list(LAWS))
@given(problem=problems())
def test_update_is_gradient_of_penalized_loss(law, problem):
    make, penalty, kwargs, away = LAWS[law]
    dtype, rtol, atol = DTYPES[problem["dtype"]]
    params_np, coefs_np, mask = build(problem, away)
    strength = problem["strength"]
    x64 = jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()
    with x64:
        params = jax.tree.map(lambda w: jnp.asarray(w, dtype), params_np)
        coefs = jax.tree.map(lambda c: jnp.asarray(c, dtype), coefs_np)

        def loss(p):
            return sum(jnp.sum(jnp.sin(w) * c) for w, c in zip(jax.tree.leaves(p),
                                                                 jax.tree.leaves(coefs),
                                                                 strict=True))

        expected = jax.grad(lambda p: loss(p) + penalty(p, strength, mask))(params)
        tx = optax.chain(make(strength, mask))
        got, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, **kwargs)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64),
                                   rtol=rtol, atol=atol)


def test_add_l2_matches_optax_add_decayed_weights():
    params = {"Dense_0": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    grads = jax.tree.map(lambda w: jnp.cos(w), params)
    ref = optax.add_decayed_weights(0.3, mask=masks.kernels_only)
    ours = jaxreg.add_l2(0.3)
    expected, _ = ref.update(grads, ref.init(params), params)
    got, _ = ours.update(grads, ours.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, got, expected)


# ---- ridge regression: gradient descent converges to the closed form -----------------------

def ridge_data(n=40, d=5):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d))
    return X, X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)


def mse(w, X, y):
    """Seed 000's loss: the mean squared error, without a factor 1/2."""
    return jnp.mean((X @ w["w"] - y) ** 2)


@pytest.mark.parametrize("name", ["add_l2", "half", "seed"])
def test_full_batch_gd_converges_to_ridge_closed_form(name):
    X, y = ridge_data()
    n, d = X.shape
    s = 3.0
    # stationarity of mse + penalty: (2/n) X^T(Xw - y) + k w = 0 <=> (X^T X + n k/2 I) w = X^T y
    tx, k = {"add_l2": (jaxreg.add_l2(s, mask="all"), s),
             "half": (jaxreg.batch_scaled_l2(s, mask="all"), s / n),
             "seed": (jaxreg.batch_scaled_l2(s, mask="all", convention="seed"), 2 * s / n)}[name]
    c = n * k / 2  # so c = n s/2 (add_l2), s/2 (half), s (seed)
    closed = np.linalg.solve(X.T @ X + c * np.eye(d), X.T @ y)
    with jax.enable_x64(True):
        lr = 1.0 / np.linalg.eigvalsh(2 / n * X.T @ X + k * np.eye(d)).max()
        opt = optax.chain(tx, optax.sgd(lr))
        Xj, yj = jnp.asarray(X), jnp.asarray(y)

        @jax.jit
        def run(w):
            def step(_, carry):
                w, state = carry
                grads = jax.grad(mse)(w, Xj, yj)
                updates, state = opt.update(grads, state, w, batch_size=jnp.asarray(n))
                return optax.apply_updates(w, updates), state
            return jax.lax.fori_loop(0, 2000, step, (w, opt.init(w)))[0]

        w = run({"w": jnp.zeros(d)})["w"]
        assert w.dtype == jnp.float64
    np.testing.assert_allclose(w, closed, atol=1e-6)
    if name == "seed":  # the seed convention with the seed's loss is sklearn's Ridge(alpha=s)
        ridge = Ridge(alpha=s, fit_intercept=False, solver="cholesky").fit(X, y)
        np.testing.assert_allclose(w, ridge.coef_, atol=1e-6)


def test_seed_000_numpy_minibatch_sgd_ridge():
    """Seed 000's example: minibatch SGD, b = 10, lambda = 0.01, lambda_b = lambda / b,
    theta <- theta - eta * grad(L + lambda_b * sum theta^2), L the batch mean squared error."""
    rng = np.random.default_rng(0)
    n, d, b, lam, eta, steps = 200, 5, 10, 0.01, 0.05, 300
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    batches = [rng.choice(n, size=b, replace=False) for _ in range(steps)]

    theta = np.zeros(d)
    lam_b = lam / b
    for idx in batches:
        Xb, yb = X[idx], y[idx]
        grad = 2 / b * Xb.T @ (Xb @ theta - yb) + 2 * lam_b * theta
        theta = theta - eta * grad

    with jax.enable_x64(True):
        opt = optax.chain(jaxreg.batch_scaled_l2(lam, mask="all", convention="seed"),
                          optax.sgd(eta))

        @jax.jit
        def step(w, state, Xb, yb):
            grads = jax.grad(mse)(w, Xb, yb)
            updates, state = opt.update(grads, state, w, batch_size=b)
            return optax.apply_updates(w, updates), state

        w = {"w": jnp.zeros(d)}
        state = opt.init(w)
        for idx in batches:
            w, state = step(w, state, X[idx], y[idx])
    np.testing.assert_allclose(w["w"], theta, rtol=0, atol=1e-10)


# ---- jit, vmap, chain, inject_hyperparams, schedules ----------------------------------------

PARAMS = {"Dense_0": {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3), "bias": jnp.ones(3)}}
ZEROS = jax.tree.map(jnp.zeros_like, PARAMS)


def test_batch_size_change_does_not_recompile():
    tx = optax.chain(jaxreg.batch_scaled_l2(0.6), optax.sgd(1.0))
    traces = []

    @jax.jit
    def step(grads, state, params, b):
        traces.append(1)
        return tx.update(grads, state, params, batch_size=b)[0]

    state = tx.init(PARAMS)
    for b in [1, 4, 30]:
        got = step(ZEROS, state, PARAMS, jnp.asarray(b))
        np.testing.assert_allclose(got["Dense_0"]["kernel"], -0.6 / b * PARAMS["Dense_0"]["kernel"],
                                   rtol=1e-6)
        np.testing.assert_array_equal(got["Dense_0"]["bias"], 0.0)
    assert len(traces) == 1


def test_inject_hyperparams_strength_change_does_not_recompile():
    tx = optax.inject_hyperparams(jaxreg.add_l2)(strength=0.1)
    traces = []

    @jax.jit
    def step(grads, state, params):
        traces.append(1)
        return tx.update(grads, state, params)

    state = tx.init(PARAMS)
    for s in [0.1, 0.5, 2.0]:
        state.hyperparams["strength"] = jnp.asarray(s)
        got, state = step(ZEROS, state, PARAMS)
        np.testing.assert_allclose(got["Dense_0"]["kernel"], s * PARAMS["Dense_0"]["kernel"],
                                   rtol=1e-6)
    assert len(traces) == 1
    # extra args reach the inner transform through inject_hyperparams and chain
    tx = optax.chain(optax.inject_hyperparams(jaxreg.batch_scaled_l2)(strength=0.8))
    got, _ = tx.update(ZEROS, tx.init(PARAMS), PARAMS, batch_size=4)
    np.testing.assert_allclose(got["Dense_0"]["kernel"], 0.2 * PARAMS["Dense_0"]["kernel"],
                               rtol=1e-6)


def test_vmap_over_strengths_and_over_param_trees():
    strengths = jnp.array([0.0, 0.5, 3.0])

    def with_closure(s):
        tx = jaxreg.data_scaled_l2(s, 4)
        return tx.update(ZEROS, tx.init(PARAMS), PARAMS)[0]

    def with_inject(s):
        tx = optax.inject_hyperparams(jaxreg.add_l1)(strength=s)
        return tx.update(ZEROS, tx.init(PARAMS), PARAMS)[0]

    kernel = PARAMS["Dense_0"]["kernel"]
    got = jax.vmap(with_closure)(strengths)["Dense_0"]["kernel"]
    np.testing.assert_allclose(got, strengths[:, None, None] / 4 * kernel, rtol=1e-6)
    got = jax.jit(jax.vmap(with_inject))(strengths)["Dense_0"]["kernel"]
    np.testing.assert_allclose(got, strengths[:, None, None] * jnp.ones_like(kernel), rtol=1e-6)

    tx = jaxreg.add_l2(0.5)
    trees = jax.tree.map(lambda w: jnp.stack([w, -2 * w]), PARAMS)
    got = jax.vmap(lambda g, p: tx.update(g, tx.init(p), p)[0])(trees, trees)
    np.testing.assert_allclose(got["Dense_0"]["kernel"], 1.5 * trees["Dense_0"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(got["Dense_0"]["bias"], trees["Dense_0"]["bias"], rtol=1e-6)


@pytest.mark.parametrize("name", ["add_l2", "data_scaled_l2", "batch_scaled_l2"])
def test_schedule_strength_is_evaluated_at_the_step_count(name):
    schedule = optax.linear_schedule(2.0, 0.5, transition_steps=4)
    tx, scale, kwargs = {"add_l2": (jaxreg.add_l2(schedule), 1.0, {}),
                         "data_scaled_l2": (jaxreg.data_scaled_l2(schedule, 8), 1 / 8, {}),
                         "batch_scaled_l2": (jaxreg.batch_scaled_l2(schedule), 1 / 5,
                                             {"batch_size": 5})}[name]
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, **kwargs))
    state = tx.init(PARAMS)
    for t in range(6):
        got, state = update(ZEROS, state, PARAMS)
        np.testing.assert_allclose(got["Dense_0"]["kernel"],
                                   schedule(t) * scale * PARAMS["Dense_0"]["kernel"], rtol=1e-6)
    assert int(jax.tree.leaves(state)[0]) == 6


def test_dtype_of_updates_is_kept():
    params = jax.tree.map(lambda w: w.astype(jnp.float32), PARAMS)
    grads = jax.tree.map(lambda w: jnp.ones_like(w, jnp.bfloat16), PARAMS)
    for tx in [jaxreg.add_l2(optax.constant_schedule(0.5)), jaxreg.add_l1(0.5),
               optax.inject_hyperparams(jaxreg.add_l2)(strength=0.5)]:
        got, _ = tx.update(grads, tx.init(params), params)
        assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(got))
    with jax.enable_x64(True):
        tx = jaxreg.add_l2(0.5)
        got, _ = tx.update(ZEROS, tx.init(PARAMS), PARAMS)
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got))


# ---- bad input ------------------------------------------------------------------------------

CONSTRUCTORS = {
    "add_l2": jaxreg.add_l2, "add_l1": jaxreg.add_l1, "batch_scaled_l2": jaxreg.batch_scaled_l2,
    "data_scaled_l2": lambda s: jaxreg.data_scaled_l2(s, 10),
    "data_scaled_l1": lambda s: jaxreg.data_scaled_l1(s, 10),
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, jnp.array(-1.0)])
def test_bad_strength_value(name, bad):
    with pytest.raises(ValueError, match="strength"):
        CONSTRUCTORS[name](bad)


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
@pytest.mark.parametrize("bad", ["0.1", None, True, [0.1], jnp.ones(2), 1j])
def test_bad_strength_type(name, bad):
    with pytest.raises(TypeError, match="strength"):
        CONSTRUCTORS[name](bad)


@pytest.mark.parametrize("make", [jaxreg.data_scaled_l1, jaxreg.data_scaled_l2])
def test_bad_num_examples(make):
    for bad in [0, -5]:
        with pytest.raises(ValueError, match=rf"num_examples={bad}"):
            make(0.1, bad)
    for bad in [2.5, "10", None, optax.constant_schedule(3)]:
        with pytest.raises(TypeError, match="num_examples"):
            make(0.1, bad)


def test_bad_batch_size():
    tx = optax.chain(jaxreg.batch_scaled_l2(0.1), optax.sgd(0.1))
    state = tx.init(PARAMS)
    with pytest.raises(TypeError, match="batch_size"):
        tx.update(ZEROS, state, PARAMS)
    for bad in [0, -3, jnp.asarray(-2), 2**40]:
        with pytest.raises(ValueError, match=rf"batch_size={bad}"):
            tx.update(ZEROS, state, PARAMS, batch_size=bad)
    for bad in [0.5, 2.5, True, math.inf, 1e30, "128", jnp.ones(2, jnp.int32), jnp.asarray(4.0)]:
        with pytest.raises(TypeError, match="`batch_size` must be an integer scalar"):
            tx.update(ZEROS, state, PARAMS, batch_size=bad)
    for ok in [1, np.int64(7), jnp.asarray(3, jnp.int32)]:
        tx.update(ZEROS, state, PARAMS, batch_size=ok)
    with pytest.raises(ValueError, match="convention"):
        jaxreg.batch_scaled_l2(0.1, convention="full")


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_params_are_required(name):
    tx = CONSTRUCTORS[name](0.1)
    with pytest.raises(ValueError, match=rf"jaxreg.{name}.*`params`"):
        tx.update(ZEROS, tx.init(PARAMS), batch_size=3)


def test_batch_scaled_strength_is_the_strength_batch_scaled_l2_applies():
    assert jaxreg.batch_scaled_strength(0.3, 12) == pytest.approx(0.3 / 12, rel=1e-15)
    assert jaxreg.batch_scaled_strength(0.3, 12, "seed") == pytest.approx(0.6 / 12, rel=1e-15)
    w = {"kernel": jnp.asarray([1.5, -2.0, 0.25])}
    for convention in ("half", "seed"):
        tx = jaxreg.batch_scaled_l2(0.3, convention=convention)
        update, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w, batch_size=12)
        expected = jaxreg.batch_scaled_strength(0.3, 12, convention) * np.asarray(w["kernel"])
        np.testing.assert_allclose(update["kernel"], expected, rtol=1e-6)


def test_checkify_catches_a_traced_negative_batch_size():
    from jax.experimental import checkify
    tx = optax.chain(jaxreg.batch_scaled_l2(0.1), optax.sgd(0.1))
    state = tx.init(PARAMS)
    step = jax.jit(lambda b: tx.update(ZEROS, state, PARAMS, batch_size=b)[0])
    step(jnp.asarray(-2))  # unchecked outside checkify (documented): no error, no crash
    err, _ = checkify.checkify(step)(jnp.asarray(-2))
    with pytest.raises(checkify.JaxRuntimeError, match="batch_size.*-2"):
        err.throw()
    err, _ = checkify.checkify(step)(jnp.asarray(4))
    err.throw()  # a good value passes


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_strength_that_overflows_float32_is_rejected(name):
    with pytest.raises(ValueError, match=r"`strength` must be at most 3.403e\+38, .*overflows"):
        CONSTRUCTORS[name](1e39)
    with jax.enable_x64(True):
        CONSTRUCTORS[name](1e39)  # representable in float64


def test_bfloat16_follows_optax_for_float_strengths():
    """Decision (module docstring): updates keep their dtype. optax does the same for Python
    float strengths; with a float32 array strength optax promotes bf16 updates to float32, and
    jaxreg gives that result rounded to bf16."""
    params = {"w": jnp.linspace(-2, 2, 8, dtype=jnp.bfloat16).reshape(2, 4)}
    grads = {"w": jnp.full((2, 4), 0.3, jnp.bfloat16)}
    ref = optax.add_decayed_weights(0.1)
    want, _ = ref.update(grads, ref.init(params), params)
    got, _ = jaxreg.add_l2(0.1).update(grads, optax.EmptyState(), params)
    assert got["w"].dtype == want["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(got["w"], want["w"])
    strength = jnp.asarray(0.1, jnp.float32)
    ref = optax.add_decayed_weights(strength)
    want32, _ = ref.update(grads, ref.init(params), params)
    want32 = want32["w"]
    assert want32.dtype == jnp.float32
    got, _ = jaxreg.add_l2(strength).update(grads, optax.EmptyState(), params)
    np.testing.assert_array_equal(got["w"], want32.astype(jnp.bfloat16))
