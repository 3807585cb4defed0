"""make_optimizer: the batch size reaches batch_scaled_l2, history reports the hyperparameters,
plateau and proximal steps take effect."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import jaxreg
from jaxreg import models
from jaxreg.train import (
    create_train_state,
    fit,
    learning_rate_schedule,
    make_optimizer,
    train_step,
    update_plateau,
)
from jaxreg.train.optimizer import POLY_POWER


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images[:512] / 16.0).astype(np.float32)[..., None], d.target[:512].astype(np.int32)


def one_step(model, opt, x, y):
    state = create_train_state(model, opt.tx, x[:1], seed=0)
    return jax.jit(functools.partial(train_step, model=model, tx=opt.tx))(state, x, y)[0].params


def test_batch_size_reaches_batch_scaled_l2(digits):
    """SGD: w' = w - lr (g + c/B w) on kernels; biases and BN parameters unregularized."""
    x, y = digits[0][:32], digits[1][:32]
    model, lr, c = models.SeedMLP(hidden=8), 0.1, 4.0
    init = create_train_state(model, optax.sgd(lr), x[:1], seed=0).params
    plain = one_step(model, make_optimizer("sgd", lr), x, y)
    scaled = one_step(model, make_optimizer("sgd", lr, l2=c, batch_scaled=True), x, y)
    expected = jax.tree_util.tree_map_with_path(
        lambda path, p, w: p - lr * c / 32 * w if path[-1].key == "kernel" else p, plain, init)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), scaled, expected
    )


def test_history_reports_hyperparameters_and_plateau(digits):
    # 'skipped_steps' is 0 every epoch: never an improvement after the first, so with
    # patience 1 the scale halves after every later epoch
    opt = make_optimizer(
        "sgd", 0.05, l2=0.64, batch_scaled=True, plateau=dict(factor=0.5, patience=1)
    )
    h = fit(models.SeedMLP(), opt, digits, epochs=4, batch_size=64, monitor="skipped_steps",
            progress=False).history
    np.testing.assert_allclose(h["learning_rate"], [0.05, 0.05, 0.025, 0.0125], rtol=1e-6)
    np.testing.assert_allclose(h["l2_strength"], [0.01] * 4, rtol=1e-6)
    assert h["l1_strength"] == [0.0] * 4


def test_plateau_needs_validation_for_val_metric(digits):
    with pytest.raises(ValueError, match="validation"):
        fit(models.SeedMLP(), dict(plateau=dict(patience=1)), digits, epochs=1, progress=False)


def test_proximal_l1_gives_exact_zeros(digits):
    def zero_fraction(proximal):
        opt = dict(name="sgd", learning_rate=0.1, l1=0.05, proximal=proximal)
        state = fit(models.SeedMLP(), opt, digits, epochs=2, batch_size=64, progress=False).state
        return (np.asarray(state.params["Dense_0"]["kernel"]) == 0).mean()

    assert zero_fraction(proximal=True) > 0.3 > 0.01 > zero_fraction(proximal=False)


def test_schedules_by_name():
    assert learning_rate_schedule(0.1, "fixed") == 0.1
    for name in ("poly", "step", "cosine"):
        sched = learning_rate_schedule(0.1, name, total_steps=100)
        np.testing.assert_allclose([sched(0), sched(100)], [0.1, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate_schedule(0.1, "cosine")
    with pytest.raises(
        ValueError, match="`schedule` must be one of 'fixed'.*got schedule='warmup'"
    ):
        learning_rate_schedule(0.1, "warmup", total_steps=10)
    with pytest.raises(ValueError, match="`name` must be one of 'adam'.*got name='lion'"):
        make_optimizer("lion")


def test_effective_l2_is_the_batch_scaled_strength_when_batch_scaled():
    from jaxreg.train.optimizer import effective_l2

    assert effective_l2(0.025, 128, batch_scaled=True) == jaxreg.batch_scaled_strength(0.025, 128)
    assert effective_l2(0.025, 128, batch_scaled=True) == pytest.approx(0.025 / 128, rel=1e-15)
    assert effective_l2(0.025, 128, batch_scaled=False) == 0.025


def _ista(opt, X, y, steps, state=None):
    """``steps`` of ``opt`` on ``1/(2n) |y - X w|^2`` from ``state`` (default: w = 0)."""
    def loss(p):
        return 0.5 * jnp.mean((X @ p["w"] - y) ** 2)

    params = {"w": jnp.zeros(X.shape[1])} if state is None else state[0]
    opt_state = opt.tx.init(params) if state is None else state[1]

    def body(carry, _):
        p, s = carry
        u, s = opt.tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[0])((params, opt_state))


def test_proximal_threshold_follows_the_plateau_scale_sklearn_lasso():
    """After a plateau reduction of the learning rate by 0.25, ISTA must still solve
    Lasso(alpha=s), not Lasso(alpha=4s)."""
    from sklearn.linear_model import Lasso
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6))
    y = X @ np.array([1.5, -2.0, 0.0, 0.3, 0.0, 0.8]) + 0.1 * rng.normal(size=60)
    s = 0.2
    lr = 0.9 / np.linalg.eigvalsh(X.T @ X / len(X)).max()
    opt = make_optimizer("sgd", lr, l1=s, proximal=True, mask=True,
                         plateau=dict(factor=0.25, patience=0))
    Xj, yj = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)
    params, opt_state = _ista(opt, Xj, yj, 50)
    for value in (1.0, 2.0):  # the second does not improve: scale 0.25
        opt_state = update_plateau(opt_state, value)
    assert float(optax.tree_utils.tree_get(opt_state, "scale")) == 0.25
    params, _ = _ista(opt, Xj, yj, 3000, (params, opt_state))
    want = Lasso(alpha=s, fit_intercept=False, tol=1e-10, max_iter=100_000).fit(X, y).coef_
    np.testing.assert_allclose(params["w"], want, atol=2e-5)
    assert (np.asarray(params["w"]) == 0).sum() == (want == 0).sum() > 0


def test_adamw_weight_decay_is_kernels_only_by_default():
    params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
              "BatchNorm_0": {"scale": jnp.ones(2)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer("adamw", 0.1, weight_decay=0.5)
    updates, _ = opt.tx.update(zeros, opt.tx.init(params), params)
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(updates["Dense_0"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["BatchNorm_0"]["scale"], 0.0)
    everything = make_optimizer("adamw", 0.1, weight_decay=0.5, mask=True)
    updates, _ = everything.tx.update(zeros, everything.tx.init(params), params)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], -0.05, rtol=1e-6)


def test_poly_and_step_are_different_schedules():
    t = np.arange(0, 101)
    poly = jax.vmap(learning_rate_schedule(0.1, "poly", total_steps=100))(t)
    step = jax.vmap(learning_rate_schedule(0.1, "step", total_steps=100))(t)
    np.testing.assert_allclose(poly, 0.1 * (1 - t / 100) ** POLY_POWER, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(step, 0.1 * (1 - t / 100), rtol=1e-5, atol=1e-9)
    assert POLY_POWER != 1 and np.abs(poly - step).max() > 0.01
    cubic = jax.vmap(learning_rate_schedule(0.1, "poly", total_steps=100, power=3.0))(t)
    np.testing.assert_allclose(cubic, 0.1 * (1 - t / 100) ** 3, rtol=1e-5, atol=1e-9)


def test_fit_with_warmup_is_the_closed_form_sgd_trajectory():
    """Full-batch SGD on least squares (``Linear``, one step per epoch) with ``warmup_steps=3``:
    ``w_{t+1} = w_t - eta min(1, (t + 1) / 3) 2/n X^T (X w_t + b_t - y)`` in float64, and the
    history's ``learning_rate`` is the warmed-up one (``eta / 3, 2 eta / 3, eta, eta``)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5) + 0.3).astype(np.float32)
    model, eta = models.Linear(), 0.05
    opt = dict(name="sgd", learning_rate=eta, warmup_steps=3)
    result = fit(model, opt, (x, y), epochs=4, batch_size=64, progress=False, test=False)
    init = create_train_state(model, optax.sgd(eta), x[:1], seed=0).params["Dense_0"]
    w, b = (np.asarray(init[k], np.float64) for k in ("kernel", "bias"))
    xs, ys = x.astype(np.float64), y.astype(np.float64)
    for t in range(4):
        r = xs @ w[:, 0] + b[0] - ys
        lr = eta * min(1.0, (t + 1) / 3)
        w, b = w - lr * 2 / 64 * (xs.T @ r)[:, None], b - lr * 2 / 64 * r.sum()
    got = result.state.params["Dense_0"]
    np.testing.assert_allclose(np.asarray(got["kernel"]), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["bias"]), b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.history["learning_rate"],
                               [eta / 3, 2 * eta / 3, eta, eta], rtol=1e-6)


def test_plateau_scale_applies_on_top_of_the_warmup():
    """SGD with ``w = 4`` after a plateau reduction to 0.25: the step ``t`` update of a unit
    gradient is ``-0.25 eta min(1, (t + 1) / 4)``."""
    eta = 0.2
    opt = make_optimizer("sgd", eta, warmup_steps=4, plateau=dict(factor=0.25, patience=0))
    params = {"kernel": jnp.zeros(2)}
    state = opt.tx.init(params)
    for value in (1.0, 2.0):  # the second does not improve: scale 0.25
        state = update_plateau(state, value)
    for t in range(6):
        updates, state = opt.tx.update({"kernel": jnp.ones(2)}, state, params)
        np.testing.assert_allclose(np.asarray(updates["kernel"]),
                                   -0.25 * eta * min(1, (t + 1) / 4), rtol=1e-6)


@pytest.mark.parametrize("plateau", [None, dict(factor=0.5, patience=1)])
def test_proximal_threshold_uses_the_warmed_up_learning_rate(plateau):
    """The first step's soft threshold is ``eta / w * l1`` (warmup ``w = 4``), with or without a
    plateau on top: a zero gradient moves ``w`` to ``sign(w) max(|w| - eta l1 / 4, 0)``."""
    eta, l1 = 0.5, 0.4
    opt = make_optimizer("sgd", eta, l1=l1, proximal=True, warmup_steps=4, plateau=plateau)
    params = {"kernel": jnp.array([1.0, -0.03, 0.2])}
    updates, _ = opt.tx.update({"kernel": jnp.zeros(3)}, opt.tx.init(params), params)
    w = np.array([1.0, -0.03, 0.2])
    want = np.sign(w) * np.maximum(np.abs(w) - eta * l1 / 4, 0.0) - w
    np.testing.assert_allclose(np.asarray(updates["kernel"]), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_warmup_steps_is_one_line(bad):
    with pytest.raises((TypeError, ValueError),
                       match="`warmup_steps` must be an integer >= 0") as e:
        make_optimizer("sgd", 0.1, warmup_steps=bad)
    assert "\n" not in str(e.value)
