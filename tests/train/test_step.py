"""jaxreg.train step and epoch runners: extra arguments reach the optimizer, NaN skipping (bit
for bit the per-leaf check and select written out here), mixed precision, scan epoch ==
streamed epoch. (The batch size reaching ``batch_scaled_l2``
through a whole step: test_optimizer.py.)"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg import models
from jaxreg.train import (
    TrainState,
    create_train_state,
    make_optimizer,
    scan_epoch,
    stream_epoch,
    train_step,
)


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


def per_leaf_skip_step(state, x, y, *, model, tx):
    """The step ``fit`` runs (cross-entropy, non-finite steps skipped) written out: the
    gradient, the update, then one finiteness reduction and one select per leaf of the
    gradient and the new state. :func:`train_step` must give the same bits: on XLA:CPU how
    the check consumes the new state decides how the update is fused, and so its rounding
    (checking the leaves through one concatenation changed SmallCNN's and a width-8 MLP's
    parameters in the last bits)."""
    def objective(params):
        outputs, updates = model.apply({"params": params, "batch_stats": state.model_state}, x,
                                       train=True, mutable=["batch_stats"])
        losses = optax.softmax_cross_entropy_with_integer_labels(outputs, y)
        return losses.mean(), (outputs, losses, updates["batch_stats"])

    (_, (outputs, losses, stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    new = state.apply_gradients(tx, grads, batch_size=x.shape[0]).replace(model_state=stats)
    leaves = jax.tree.leaves((grads, new.params, new.opt_state, new.model_state))
    finite = jnp.all(jnp.stack([jnp.isfinite(a).all() for a in leaves
                                if jnp.issubdtype(a.dtype, jnp.inexact)]))
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                        (new.params, new.opt_state, new.model_state),
                        (state.params, state.opt_state, state.model_state))
    new = new.replace(params=kept[0], opt_state=kept[1], model_state=kept[2])
    accuracy = (jnp.argmax(outputs, -1) == y).astype(jnp.float32)
    return new, {"loss": losses.mean(), "accuracy": accuracy.mean(), "skipped": ~finite}


def bits(tree):
    """Each leaf's dtype, shape and bytes (NaN payloads and the sign of zeros included)."""
    tree = jax.tree.map(lambda a: jax.random.key_data(a) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else a, tree)
    return [(a.dtype, a.shape, a.tobytes()) for a in map(np.asarray, jax.tree.leaves(tree))]


@pytest.mark.parametrize("model, optimizer", [
    (models.SeedMLP(num_classes=2, hidden=8), dict(name="adam", learning_rate=1e-2)),
    (models.KerasMLP(num_classes=2), dict(name="momentum", learning_rate=0.1, l2=1e-3)),
    (models.SmallCNN(num_classes=2, channels=(4, 8), hidden=8), dict(name="adam")),
    (models.SeedMLP(num_classes=2, hidden=8), dict(name="sgd", learning_rate=1e30)),
])
def test_skipping_epoch_is_bit_identical_to_a_per_leaf_check(model, optimizer):
    """The scanned epoch ``fit`` runs against :func:`per_leaf_skip_step`, over batches that are
    skipped (NaN inputs; with a learning rate of 1e30, finite gradients but overflowing
    parameters) and batches that are not: parameters, optimizer and model state, metrics."""
    x, y = tiny_data(160)
    x[[5, 70, 71]] = np.nan  # a few batches of the epoch hold a NaN input
    tx = make_optimizer(**optimizer, total_steps=10).tx
    state = create_train_state(model, tx, x[:1], seed=0)
    key = jax.random.key(3)
    results = [jax.jit(functools.partial(scan_epoch, step=step, batch_size=16))(
        state, jnp.asarray(x), jnp.asarray(y), key)
        for step in (functools.partial(train_step, model=model, tx=tx, skip_nonfinite=True),
                     functools.partial(per_leaf_skip_step, model=model, tx=tx))]
    skipped = np.asarray(results[0][1]["skipped"])
    assert skipped.any() and (not skipped.all() or optimizer.get("learning_rate", 0) > 1)
    assert bits(results[0]) == bits(results[1])


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
