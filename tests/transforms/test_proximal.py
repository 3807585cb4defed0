"""jaxreg.proximal: ISTA reaches scikit-learn's Lasso / ElasticNet solutions, with exact zeros."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.linear_model import ElasticNet, Lasso

import jaxreg


def sparse_regression(n=60, d=8):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d))
    w_true = np.array([2.0, -1.5, 0.0, 0.0, 0.8, 0.0, 0.05, 0.0])
    return X, X @ w_true + 0.3 * rng.normal(size=n)


def ista(tail, X, y, lr, steps=4000):
    """Full-batch proximal gradient descent on the loss 1/(2n) |y - Xw|^2, float64."""
    n, d = X.shape
    opt = optax.chain(optax.sgd(lr), tail)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(w):
        return jnp.sum((yj - Xj @ w["w"]) ** 2) / (2 * n)

    @jax.jit
    def run(w):
        def step(_, carry):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w), state, w)
            return optax.apply_updates(w, updates), state
        return jax.lax.fori_loop(0, steps, step, (w, opt.init(w)))[0]

    return np.asarray(run({"w": jnp.zeros(d)})["w"])


def smooth_lr(X):
    return 1.0 / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()


def test_proximal_l1_converges_to_sklearn_lasso():
    X, y = sparse_regression()
    alpha = 0.15  # Lasso minimizes 1/(2n)|y - Xw|^2 + alpha |w|_1: strength = alpha
    lasso = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y)
    assert (lasso.coef_ == 0).sum() >= 2 and (lasso.coef_ != 0).sum() >= 2
    lr = smooth_lr(X)
    with jax.enable_x64(True):
        w = ista(jaxreg.proximal_l1(alpha, lr, mask="all"), X, y, lr)
    np.testing.assert_allclose(w, lasso.coef_, atol=1e-6)
    np.testing.assert_array_equal(w == 0.0, lasso.coef_ == 0.0)


def test_proximal_elastic_net_converges_to_sklearn_elastic_net():
    X, y = sparse_regression()
    alpha, l1_ratio = 0.3, 0.6
    enet = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-14,
                      max_iter=100_000).fit(X, y)
    assert (enet.coef_ == 0).sum() >= 2 and (enet.coef_ != 0).sum() >= 2
    lr = smooth_lr(X)
    tail = jaxreg.proximal_elastic_net(alpha * l1_ratio, alpha * (1 - l1_ratio), lr, mask="all")
    with jax.enable_x64(True):
        w = ista(tail, X, y, lr)
    np.testing.assert_allclose(w, enet.coef_, atol=1e-6)
    np.testing.assert_array_equal(w == 0.0, enet.coef_ == 0.0)


PARAMS = {"Dense_0": {"kernel": jnp.array([[0.5, -0.2, 0.05], [-1.0, 0.0, 0.3]]),
                      "bias": jnp.array([0.1, -0.1, 0.0])}}
STEP = {"Dense_0": {"kernel": jnp.array([[0.1, 0.1, -0.1], [0.2, 0.05, -0.02]]),
                    "bias": jnp.array([0.01, 0.02, 0.03])}}


def soft_threshold_reference(w, u, threshold, shrink=1.0):
    z = np.asarray(w, np.float64) + np.asarray(u, np.float64)
    return np.where(np.abs(z) > threshold, z - threshold * np.sign(z), 0.0) / shrink


def test_one_step_is_soft_thresholding_with_exact_zeros_and_default_mask():
    lr, l1, l2 = 0.5, 0.4, 0.3
    kernel, step = PARAMS["Dense_0"]["kernel"], STEP["Dense_0"]["kernel"]
    for tx, shrink in [(jaxreg.proximal_l1(l1, lr), 1.0),
                       (jaxreg.proximal_elastic_net(l1, l2, lr), 1 + lr * l2)]:
        updates, _ = jax.jit(tx.update)(STEP, tx.init(PARAMS), PARAMS)
        new = optax.apply_updates(PARAMS, updates)
        expected = soft_threshold_reference(kernel, step, lr * l1, shrink)
        np.testing.assert_allclose(new["Dense_0"]["kernel"], expected, rtol=1e-6, atol=1e-7)
        assert (expected == 0).sum() >= 2
        np.testing.assert_array_equal(new["Dense_0"]["kernel"] == 0.0, expected == 0.0)
        # the bias is not in the default mask: its update passes through unchanged
        np.testing.assert_array_equal(updates["Dense_0"]["bias"], STEP["Dense_0"]["bias"])


def test_learning_rate_schedule_sets_the_threshold_at_each_step():
    schedule = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
    tx = jaxreg.proximal_l1(0.1, schedule, mask="all")
    params = {"w": jnp.array([1.0, -0.3, 0.08, 0.02])}
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for t in range(4):
        updates, state = update(zeros, state, params)
        expected = soft_threshold_reference(params["w"], 0.0, 0.1 * schedule(t))
        np.testing.assert_allclose(params["w"] + updates["w"], expected, rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_vmap_and_dtype():
    tx = optax.inject_hyperparams(jaxreg.proximal_l1)(strength=0.1, learning_rate=1.0)
    traces = []

    @jax.jit
    def step(state):
        traces.append(1)
        return tx.update(STEP, state, PARAMS)

    state = tx.init(PARAMS)
    kernel, step_k = PARAMS["Dense_0"]["kernel"], STEP["Dense_0"]["kernel"]
    for strength in [0.1, 0.25, 0.7]:
        state.hyperparams["strength"] = jnp.asarray(strength)
        updates, state = step(state)
        np.testing.assert_allclose(kernel + updates["Dense_0"]["kernel"],
                                   soft_threshold_reference(kernel, step_k, strength),
                                   rtol=1e-6, atol=1e-7)
    assert len(traces) == 1

    strengths = jnp.array([0.0, 0.2, 0.6])

    def new_kernel(s):
        tx = jaxreg.proximal_elastic_net(s, 2 * s, 0.5)
        return kernel + tx.update(STEP, tx.init(PARAMS), PARAMS)[0]["Dense_0"]["kernel"]

    got = jax.vmap(new_kernel)(strengths)
    for s, row in zip(np.asarray(strengths), got, strict=True):
        np.testing.assert_allclose(row, soft_threshold_reference(kernel, step_k, 0.5 * s, 1 + s),
                                   rtol=1e-6, atol=1e-7)

    bf16 = jax.tree.map(lambda u: u.astype(jnp.bfloat16), STEP)
    tx = jaxreg.proximal_l1(0.1, optax.constant_schedule(0.5))
    updates, _ = tx.update(bf16, tx.init(PARAMS), PARAMS)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_hyperparameters_name_the_argument(bad):
    with pytest.raises(ValueError, match="strength"):
        jaxreg.proximal_l1(bad, 0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        jaxreg.proximal_l1(0.1, bad)
    for i, name in enumerate(["l1", "l2", "learning_rate"]):
        args = [0.1, 0.1, 0.1]
        args[i] = bad
        with pytest.raises(ValueError, match=f"`{name}`"):
            jaxreg.proximal_elastic_net(*args)
    with pytest.raises(TypeError, match="learning_rate"):
        jaxreg.proximal_l1(0.1, "0.1")


def test_params_are_required():
    for name, tx in [("proximal_l1", jaxreg.proximal_l1(0.1, 0.1)),
                     ("proximal_elastic_net", jaxreg.proximal_elastic_net(0.1, 0.1, 0.1))]:
        with pytest.raises(ValueError, match=rf"jaxreg.{name}.*`params`"):
            tx.update(STEP, tx.init(PARAMS))
