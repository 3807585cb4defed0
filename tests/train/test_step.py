"""jaxreg.train step and epoch runners: extra arguments reach the optimizer, NaN skipping,
mixed precision, scan epoch == streamed epoch. (The batch size reaching ``batch_scaled_l2``
through a whole step: test_optimizer.py.)"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg import models
from jaxreg.train import TrainState, create_train_state, scan_epoch, stream_epoch, train_step


def tiny_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(n, -1).sum(-1) > 0).astype(np.int32)
    return x, y


def test_apply_gradients_forwards_extra_args():
    params = {"w": jnp.array([1.0, -2.0])}
    tx = optax.chain(jaxreg.batch_scaled_l2(0.5, mask=jaxreg.masks.all_leaves), optax.sgd(0.1))
    state = TrainState(step=jnp.int32(0), params=params, model_state={}, opt_state=tx.init(params),
                       key=jax.random.key(0))
    new = state.apply_gradients(tx, {"w": jnp.zeros(2)}, batch_size=4)
    np.testing.assert_allclose(new.params["w"], params["w"] * (1 - 0.1 * 0.5 / 4), rtol=1e-6)
    assert int(new.step) == 1


def test_nonfinite_step_is_skipped():
    x, y = tiny_data(16)
    model = models.SeedMLP(num_classes=2, hidden=8)
    tx = optax.adam(1e-2)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, skip_nonfinite=True))
    state, m = step(create_train_state(model, tx, x[:1], seed=0), x, y)
    assert not m["skipped"]
    before = jax.device_get(state)
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    state, m = step(state, bad, y)
    assert bool(m["skipped"])
    jax.tree.map(np.testing.assert_array_equal, (state.params, state.model_state, state.opt_state),
                 (before.params, before.model_state, before.opt_state))
    assert int(state.step) == int(before.step) + 1  # the skipped step is counted
    state, m = step(state, x, y)  # training goes on afterwards
    assert not m["skipped"]
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))


def test_mixed_precision_keeps_float32_state():
    x, y = tiny_data(16)
    model = models.SeedMLP(num_classes=2, hidden=8)
    tx = optax.adam(1e-2)
    state = create_train_state(model, tx, x[:1], seed=0)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, compute_dtype=jnp.bfloat16))
    new, m = step(state, x, y)
    for tree in (new.params, new.model_state, new.opt_state):
        assert {
            a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)
        } == {np.dtype("float32")}
    assert np.isfinite(float(m["loss"]))
    # the forward pass really ran in bf16: the loss differs from the float32 one
    _, m32 = jax.jit(functools.partial(train_step, model=model, tx=tx))(state, x, y)
    assert float(m["loss"]) != float(m32["loss"])
    np.testing.assert_allclose(float(m["loss"]), float(m32["loss"]), rtol=2e-2)


def test_scan_epoch_equals_stream_epoch():
    x, y = tiny_data(100)  # 100 // 16 = 6 steps, 4 examples dropped
    model = models.SeedMLP(num_classes=2, hidden=8)
    tx = optax.adam(1e-2)
    step = functools.partial(train_step, model=model, tx=tx)
    key = jax.random.key(7)
    scanned, m_scan = jax.jit(
        functools.partial(scan_epoch, step=step, batch_size=16), donate_argnums=0
    )(create_train_state(model, tx, x[:1], seed=0), jnp.asarray(x), jnp.asarray(y), key)
    calls = []
    streamed, m_stream = stream_epoch(create_train_state(model, tx, x[:1], seed=0), x, y, key,
                                      step=jax.jit(step, donate_argnums=0), batch_size=16,
                                      on_step=lambda: calls.append(1))
    assert len(calls) == 6 and m_scan["loss"].shape == (6,)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
        (scanned.params, scanned.model_state, m_scan),
        (streamed.params, streamed.model_state, m_stream),
    )
    assert int(scanned.step) == int(streamed.step) == 6


def test_evaluate_runs_one_program_for_every_size_and_matches_float64(caplog):
    """Splits of 1 to 2345 examples (under, at and over one block of EVAL_BATCH) compile one
    evaluation program; the accuracy is the exact count over n, the loss the float64 mean of
    the per-example losses up to float32 summation within a block (rtol 1e-6)."""
    rng = np.random.default_rng(3)
    model = models.SeedMLP(num_classes=3, hidden=8)
    x_all = rng.normal(size=(2345, 43)).astype(np.float32)  # a width no other test evaluates
    y_all = rng.integers(0, 3, len(x_all)).astype(np.int32)
    state = create_train_state(model, optax.sgd(0.1), x_all[:1], seed=0)
    logits = np.asarray(model.apply({"params": state.params, "batch_stats": state.model_state},
                                    x_all, train=False), np.float64)  # float32 outputs
    losses = (np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
              + logits.max(-1) - logits[np.arange(len(y_all)), y_all])
    logged = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level("WARNING", logger="jax._src.dispatch"):
            for n in (1, 999, 1000, 1001, 2345):
                got = jaxreg.train.evaluate(model, state, x_all[:n], y_all[:n])
                assert got["accuracy"] == (logits[:n].argmax(-1) == y_all[:n]).sum() / n, n
                np.testing.assert_allclose(got["loss"], losses[:n].mean(), rtol=1e-6)
    finally:
        jax.config.update("jax_log_compiles", logged)
    names = [r.getMessage().split()[4] for r in caplog.records
             if r.getMessage().startswith("Finished XLA compilation of ")]
    assert names.count("jit(evaluation_sums)") == 1, names


def test_evaluate_regression_mean_squared_error():
    """Float targets: the mean squared error only (no accuracy), padding rows masked out."""
    rng = np.random.default_rng(4)
    model = models.SeedMLP(num_classes=1, hidden=8)
    x = rng.normal(size=(1500, 5)).astype(np.float32)
    y = rng.normal(size=1500).astype(np.float32)
    state = create_train_state(model, optax.sgd(0.1), x[:1], seed=1)
    outputs = np.asarray(model.apply({"params": state.params, "batch_stats": state.model_state},
                                     x, train=False), np.float64).reshape(-1)
    got = jaxreg.train.evaluate(model, state, x, y, loss_fn=jaxreg.train.squared_error)
    assert set(got) == {"loss"}
    np.testing.assert_allclose(got["loss"], ((outputs - y) ** 2).mean(), rtol=1e-6)


def test_evaluate_refuses_no_examples_and_a_bad_block_size():
    model = models.SeedMLP(num_classes=2, hidden=8)
    x, y = tiny_data(8)
    state = create_train_state(model, optax.sgd(0.1), x[:1], seed=0)
    with pytest.raises(ValueError, match=r"`x` must be at least one example"):
        jaxreg.train.evaluate(model, state, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"`batch_size` must be .*; got batch_size=0"):
        jaxreg.train.evaluate(model, state, x, y, batch_size=0)
