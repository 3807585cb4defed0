"""Batch-size schedules in the engine (issue 23 item 2): per-epoch sizes, the step count, the
batch-scaled penalty and the learning-rate schedule following them; bad input one line.
(Resume bit-exact across a change: tests/test_train_checkpoint.py.)"""
import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

import jaxreg
from jaxreg import models
from jaxreg.train import batching, fit


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images[:640] / 16.0).astype(np.float32)[..., None], d.target[:640].astype(np.int32)


def test_epoch_sizes_of_each_form():
    assert batching.epoch_sizes(64, 3, 512) == (64, 64, 64)
    assert batching.epoch_sizes({0: 32, 2: 64}, 4, 512) == (32, 32, 64, 64)
    assert batching.epoch_sizes([(3, 128), (0, 32)], 4, 512) == (32, 32, 32, 128)
    # step boundaries: epoch e at schedule.batch_size(sum_{j<e} N // b_j)
    s = jaxreg.schedules.batch_size_schedule(32, {16: 0.5, 40: 0.5}, max_batch_size=128)
    # steps before each epoch: 0, 16, 24 (16 + 512 // 64), 32, 40, 44
    assert batching.epoch_sizes(s, 6, 512) == (32, 64, 64, 64, 128, 128)
    assert batching.changes((32, 32, 64, 64)) == [[0, 32], [2, 64]]
    assert batching.changes((64, 64)) == 64


def test_parse():
    assert batching.parse("5:256,8:512") == {5: 256, 8: 512}
    for bad in ("0:256", "5:256,3:512", "5:0", "5-256", "5:256:1", "", "5:256,5:512"):
        with pytest.raises(ValueError, match="^`batch_size_schedule` must be EPOCH:SIZE"):
            batching.parse(bad)


@pytest.mark.parametrize("bad, error, match", [
    ({1: 32}, ValueError, "`batch_size` must be an integer >= 1, {epoch: size}"),
    ({0: 0}, ValueError, r"`batch_size\[0\]` must be an integer >= 1"),
    ({0: 32.0}, TypeError, r"`batch_size\[0\]` must be an integer >= 1"),
    ([(0, 32, 1)], TypeError, "`batch_size` must be an integer >= 1, {epoch: size}"),
    ({0: 32, 2: 4096}, ValueError, "`batch_size` must be at most the 512 training examples"),
])
def test_bad_schedules_are_one_line(digits, bad, error, match):
    with pytest.raises(error, match=match) as e:
        fit(models.SeedMLP(), dict(name="adam"), digits, epochs=3, batch_size=bad,
            validation_split=0.2, progress=False)
    assert "\n" not in str(e.value)


def test_fit_follows_the_schedule(digits):
    """Steps ``sum_e N // b_e``; ``l2 / b_e`` per epoch; the cosine schedule over those steps
    (its last value ``eta (1 + cos(pi (T - 1) / T)) / 2``, at the run's last step)."""
    lr, l2 = 1e-2, 1e-3
    r = fit(models.SeedMLP(), dict(name="adam", learning_rate=lr, l2=l2, batch_scaled=True,
                                   schedule="cosine"),
            digits, epochs=4, batch_size={0: 32, 2: 64}, seed=1, validation_split=0.2,
            progress=False)
    total = 2 * (512 // 32) + 2 * (512 // 64)
    assert r.history["batch_size"] == [32, 32, 64, 64]
    assert int(r.state.step) == total
    np.testing.assert_allclose(r.history["l2_strength"], [l2 / 32] * 2 + [l2 / 64] * 2,
                               rtol=1e-6)
    want = lr * (1 + math.cos(math.pi * (total - 1) / total)) / 2
    np.testing.assert_allclose(r.history["learning_rate"][-1], want, rtol=1e-4, atol=1e-10)


def test_batch_size_schedule_end_to_end(digits):
    """``jaxreg.schedules.batch_size_schedule``: its sizes per epoch, its learning rate the
    optimizer's (the residual factor 0.5 applies once the size is capped, from step 40)."""
    s = jaxreg.schedules.batch_size_schedule(32, {16: 0.5, 40: 0.5}, max_batch_size=64,
                                             init_value=1e-2)
    r = fit(models.SeedMLP(), dict(name="sgd", learning_rate=s.learning_rate), digits,
            epochs=5, batch_size=s, validation_split=0.2, progress=False)
    assert r.history["batch_size"] == [32, 64, 64, 64, 64]  # steps before: 0, 16, 24, 32, 40
    # the learning rate at each epoch's last step (15, 23, 31, 39, 47): halved from step 40
    np.testing.assert_allclose(r.history["learning_rate"], [1e-2] * 4 + [5e-3], rtol=1e-6)


def test_epochs_beyond_the_step_counter_are_refused_before_the_sizes_are_built(digits):
    """``epochs=2**31 - 1`` once built a tuple of 2**31 - 1 sizes (gigabytes) before the step
    check; now it is one line at once."""
    with pytest.raises(ValueError, match="`epochs` must be at most"):
        fit(models.SeedMLP(), dict(name="adam"), digits, epochs=2**31 - 1,
            batch_size={0: 32, 2: 64}, validation_split=0.2, progress=False)
