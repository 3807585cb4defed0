"""jaxreg.train.fit: a real short fit on digits, history, skipped-step counting, modes agree."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import jaxreg
import jaxreg.data
from jaxreg import models
from jaxreg.train import TrainingDiverged, fit, make_optimizer


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return x, d.target.astype(np.int32)


def test_fit_digits_learns(digits):
    x, y = digits
    result = fit(models.SeedMLP(), dict(name="adam", learning_rate=1e-2), (x[:1400], y[:1400]),
                 epochs=4, batch_size=64, validation_split=0.2, seed=0, progress=False)
    h = result.history
    assert set(h) == {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "l2_strength",
        "l1_strength",
        "skipped_steps",
        "epoch_seconds",
        "batch_size",
    }
    assert all(len(v) == 4 for v in h.values())
    assert h["val_accuracy"][-1] > 0.8 and h["loss"][-1] < h["loss"][0]
    assert h["learning_rate"] == pytest.approx([1e-2] * 4) and h["l2_strength"] == [0.0] * 4
    assert h["skipped_steps"] == [0] * 4
    held_out = result.evaluate(result.state, x[1400:], y[1400:])
    assert held_out["accuracy"] > 0.8


def test_scheduled_learning_rate_in_history(digits):
    x, y = digits
    h = fit(
        models.SeedMLP(),
        make_optimizer("sgd", 0.1, schedule="cosine", total_steps=3 * 28),
        (x, y),
        epochs=3,
        batch_size=64,
        progress=False,
    ).history
    # value at the last step of each epoch: eta_0 (1 + cos(pi t / T)) / 2 at t = 28 e - 1
    expected = [0.1 * (1 + np.cos(np.pi * (28 * e - 1) / 84)) / 2 for e in (1, 2, 3)]
    np.testing.assert_allclose(h["learning_rate"], expected, rtol=1e-5, atol=1e-8)


def test_nan_batches_skipped_and_counted(digits):
    x, y = digits
    x = x[:512].copy()
    x[5, 3, 3, 0] = np.nan  # one bad example: its batch is skipped once per epoch
    result = fit(models.SeedMLP(), optax.adam(1e-2), (x, y[:512]), epochs=3, batch_size=64,
                 progress=False, on_device=False)
    assert result.history["skipped_steps"] == [1, 1, 1]
    assert all(np.isfinite(result.history["loss"]))
    assert all(np.all(np.isfinite(p)) for p in __import__("jax").tree.leaves(result.state.params))


def test_scan_and_stream_fit_agree(digits):
    x, y = digits
    runs = [
        fit(
            models.SeedMLP(),
            optax.adam(1e-2),
            (x[:640], y[:640]),
            epochs=2,
            batch_size=64,
            seed=3,
            progress=False,
            on_device=mode,
        )
        for mode in (True, False)
    ]
    import jax
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 runs[0].state.params, runs[1].state.params)
    np.testing.assert_allclose(runs[0].history["loss"], runs[1].history["loss"], rtol=1e-5)


def test_fit_dataset_evaluates_test_split():
    data = jaxreg.data.load("digits")
    result = fit(models.SeedMLP(), dict(learning_rate=1e-2), data, epochs=3,
                 batch_size=64, progress=False)
    assert result.test["accuracy"] > 0.8
    # the metrics are the test split's, every example of it counted once
    assert result.test == pytest.approx(result.evaluate(result.state, data.x_test, data.y_test))
    correct = result.test["accuracy"] * len(data.y_test)
    assert correct == pytest.approx(round(correct), abs=1e-3), correct


def test_fit_regression_on_synthetic_ridge():
    data = jaxreg.data.load("synthetic-ridge")
    result = fit(
        models.get("linear", data.num_classes),
        dict(name="sgd", learning_rate=0.05, l2=1e-2),
        data,
        epochs=20,
        batch_size=20,
        progress=False,
    )
    h = result.history
    assert "accuracy" not in h and "accuracy" not in result.test
    # noise variance 1: the fit gets near that floor (least squares' test MSE is 1.24)
    assert h["loss"][-1] < 1.2 < h["loss"][0]
    assert result.test["loss"] < 1.4


# ---- plateau feeding and mode, callbacks, divergence ---------------------------------------------

def test_plateau_mode_follows_an_accuracy_monitor(digits):
    x, y = digits[0][:640], digits[1][:640]
    opt = dict(name="sgd", learning_rate=0.05, plateau=dict(factor=0.5, patience=0))
    h = fit(models.SeedMLP(hidden=8), opt, (x, y), epochs=3, batch_size=64,
            validation_split=0.2, monitor="val_accuracy", progress=False).history
    # the lr is halved exactly after the epochs whose val_accuracy did not improve ('max')
    acc, lr = h["val_accuracy"], h["learning_rate"]
    for e in range(1, 3):
        improved = acc[e - 1] > max(acc[:e - 1], default=-np.inf)
        assert lr[e] == pytest.approx(lr[e - 1] * (1.0 if improved else 0.5))
    wrong = make_optimizer("sgd", 0.05, plateau=dict(mode="min"))
    with pytest.raises(ValueError, match="mode='min'.*val_accuracy"):
        fit(models.SeedMLP(hidden=8), wrong, (x, y), epochs=1, batch_size=64,
            validation_split=0.2, monitor="val_accuracy", progress=False)


def test_a_plateau_in_a_user_chain_is_fed(digits):
    x, y = digits[0][:512], digits[1][:512]
    tx = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.05),
                     jaxreg.reduce_on_plateau(factor=0.5, patience=1))
    h = fit(models.SeedMLP(hidden=8), tx, (x, y), epochs=4, batch_size=64,
            monitor="skipped_steps", progress=False).history
    np.testing.assert_allclose(h["learning_rate"], [0.05, 0.05, 0.025, 0.0125], rtol=1e-6)
    contrib = optax.chain(optax.sgd(0.05), optax.contrib.reduce_on_plateau())
    with pytest.raises(ValueError, match="optax.contrib.reduce_on_plateau"):
        fit(models.SeedMLP(hidden=8), contrib, (x, y), epochs=1, batch_size=64, progress=False)


@pytest.mark.parametrize("answer", [np.bool_(True), jnp.asarray(True), 1])
def test_callbacks_stop_on_any_true_value(digits, answer):
    x, y = digits[0][:256], digits[1][:256]
    h = fit(models.SeedMLP(hidden=8), dict(name="sgd", learning_rate=0.05), (x, y), epochs=3,
            batch_size=64, callbacks=[lambda *_: answer], progress=False).history
    assert len(h["loss"]) == 1


def test_divergence_is_skipped_and_stops(digits, tmp_path):
    x, y = digits[0][:512], digits[1][:512]
    with pytest.raises(TrainingDiverged, match="diverged") as info:
        fit(models.SeedMLP(hidden=8), dict(name="sgd", learning_rate=1e30), (x, y), epochs=5,
            batch_size=64, max_consecutive_skips=10, checkpoint_dir=str(tmp_path),
            progress=False)
    h = info.value.history
    # the epoch ended with most of its 8 steps skipped (jaxreg.train.divergence)
    assert h["skipped_steps"][-1] * 2 > 8 and len(h["loss"]) < 5
    # a NaN learning rate (make_optimizer refuses one; a chain of the user's may hold one):
    # finite gradients, NaN updates; every step skipped, params kept
    nan_lr = optax.sgd(float("nan"))
    result = fit(models.SeedMLP(hidden=8), nan_lr, (x, y), epochs=1, batch_size=64,
                 max_consecutive_skips=None, progress=False)
    assert result.history["skipped_steps"] == [8]
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(result.state.params))


def test_a_resumed_fit_compiles_each_program_once(caplog, tmp_path):
    """A state restored from a checkpoint (orbax's arrays are committed to the device) is
    placed as a fresh one, so the epoch and evaluation compiled ahead serve it: each program
    of the resumed fit compiles at most once (was twice: ahead, then for the restored state)."""
    rng = np.random.default_rng(1)
    x = rng.random((200, 39), dtype=np.float32)  # a shape no other test compiles
    y = rng.integers(0, 3, 200).astype(np.int32)
    run = functools.partial(fit, models.SeedMLP(num_classes=3), dict(name="adam"), (x, y),
                            batch_size=32, validation_split=0.2, progress=False,
                            checkpoint_dir=tmp_path / "ckpt")
    run(epochs=1)
    logged = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level("WARNING", logger="jax._src.dispatch"):
            resumed = run(epochs=2, resume=True)
    finally:
        jax.config.update("jax_log_compiles", logged)
    names = [r.getMessage().split()[4] for r in caplog.records
             if r.getMessage().startswith("Finished XLA compilation of ")]
    assert len(resumed.history["loss"]) == 2 and names.count("jit(scan_epoch)") == 1, names
    assert all(names.count(name) == 1 for name in names), names


def test_fit_compiles_each_program_once_and_no_eager_op(caplog):
    """A fit compiles its state, epoch keys, epoch and one evaluation for all splits, each once
    (the background compilation's program is the one the call uses), and no tiny eager op."""
    rng = np.random.default_rng(0)
    x = rng.random((300, 37), dtype=np.float32)  # a shape no other test compiles
    y = rng.integers(0, 3, 300).astype(np.int32)
    data = jaxreg.data.Dataset("random-37", x, y, x[:50], y[:50], num_classes=3,
                               source="random", task="classification")
    logged = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # global: the background thread's too
    try:
        with caplog.at_level("WARNING", logger="jax._src.dispatch"):
            fit(models.SeedMLP(num_classes=3), dict(name="adam"), data, epochs=2, batch_size=32,
                validation_split=0.1, progress=False)
    finally:
        jax.config.update("jax_log_compiles", logged)
    names = [r.getMessage().split()[4] for r in caplog.records
             if r.getMessage().startswith("Finished XLA compilation of ")]
    assert set(names) <= {"jit(create_train_state)", "jit(epoch_key)", "jit(scan_epoch)",
                          "jit(evaluation_sums)"}, names
    assert names.count("jit(create_train_state)") == names.count("jit(scan_epoch)") == 1, names
    assert names.count("jit(evaluation_sums)") == 1, names  # validation (30) and test (50)
