"""jaxreg.train.fit: a real short fit on digits, history, skipped-step counting, modes agree."""
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import jaxreg.data
from jaxreg import models
from jaxreg.train import fit, make_optimizer


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
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "l2_strength",
                      "l1_strength", "skipped_steps", "epoch_seconds"}
    assert all(len(v) == 4 for v in h.values())
    assert h["val_accuracy"][-1] > 0.8 and h["loss"][-1] < h["loss"][0]
    assert h["learning_rate"] == pytest.approx([1e-2] * 4) and h["l2_strength"] == [0.0] * 4
    assert h["skipped_steps"] == [0] * 4
    held_out = result.evaluate(result.state, x[1400:], y[1400:])
    assert held_out["accuracy"] > 0.8


def test_scheduled_learning_rate_in_history(digits):
    x, y = digits
    h = fit(models.SeedMLP(), make_optimizer("sgd", 0.1, schedule="cosine", total_steps=3 * 28), (x, y),
            epochs=3, batch_size=64, progress=False).history
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
    runs = [fit(models.SeedMLP(), optax.adam(1e-2), (x[:640], y[:640]), epochs=2, batch_size=64, seed=3,
                progress=False, on_device=mode) for mode in (True, False)]
    import jax
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 runs[0].state.params, runs[1].state.params)
    np.testing.assert_allclose(runs[0].history["loss"], runs[1].history["loss"], rtol=1e-5)


def test_fit_dataset_evaluates_test_split():
    result = fit(models.SeedMLP(), dict(learning_rate=1e-2), jaxreg.data.load("digits"), epochs=3,
                 batch_size=64, progress=False)
    assert result.test["accuracy"] > 0.8


def test_fit_regression_on_synthetic_ridge():
    data = jaxreg.data.load("synthetic-ridge")
    result = fit(models.get("linear", data.num_classes), dict(name="sgd", learning_rate=0.05, l2=1e-2),
                 data, epochs=20, batch_size=20, progress=False)
    h = result.history
    assert "accuracy" not in h and "accuracy" not in result.test
    # noise variance 1: the fit gets near that floor (least squares' test MSE is 1.24)
    assert h["loss"][-1] < 1.2 < h["loss"][0]
    assert result.test["loss"] < 1.4
