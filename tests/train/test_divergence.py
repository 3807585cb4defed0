"""The divergence policy (issue 25 items 2 and 3): an epoch ending with more than half its
steps skipped in a row, or ``max_consecutive_skips`` in a row (counted across a resume), is
divergence; more than a tenth
of an epoch's steps skipped is a one-line warning; the same in ``fit``, the CLI and the sweep."""
import warnings

import numpy as np
import pytest

from jaxreg import models
from jaxreg.train import TrainingDiverged, divergence, fit, sweep
from tests.helpers import run_main

OPTIMIZER = dict(name="sgd", learning_rate=0.1)


def _data(nan_rows=0, value=np.nan):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    x[:nan_rows, 0] = value
    return x, y


def _fit(data, **kwargs):
    settings = dict(epochs=3, batch_size=64, progress=False, test=False)
    return fit(models.Linear(num_classes=2), OPTIMIZER, data, **{**settings, **kwargs})


def _diverged(data, **kwargs) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", divergence.SkipWarning)
        with pytest.raises(TrainingDiverged) as error:
            _fit(data, **kwargs)
    return str(error.value)


@pytest.mark.parametrize("nan_rows, value", [(256, np.nan), (26, np.nan), (256, np.inf)],
                         ids=["all NaN", "10% NaN rows", "inf"])
def test_an_epoch_with_every_step_skipped_is_divergence(nan_rows, value):
    """With 4 steps per epoch (far fewer than max_consecutive_skips=100) the run used to end
    normally, every step skipped."""
    message = _diverged(_data(nan_rows, value))
    assert message.startswith("training diverged: every step of epoch 1 (4) was skipped: ")
    assert "\n" not in message


def test_an_epoch_ending_with_most_steps_skipped_is_divergence():
    """A huge penalty (l2=1e38: w -> -1e37 w at each step) overflows at the second step
    (|w| ~ 1e74 > 3.4e38); every later step is skipped, its parameters being those that
    overflow: not every step of the epoch, but the last 7 of 8."""
    optimizer = dict(name="sgd", learning_rate=0.1, l2=1e38, batch_scaled=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", divergence.SkipWarning)
        with pytest.raises(TrainingDiverged, match=r"^training diverged: the last 7 of epoch 1's "
                                                   r"8 steps were skipped: "):
            fit(models.Linear(num_classes=2), optimizer, _data(), epochs=3, batch_size=32,
                progress=False, test=False)


def test_more_than_a_tenth_skipped_is_one_warning_per_epoch():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _fit(_data(1), batch_size=64)  # the bad row's batch: 1 of 4 steps
    messages = [str(w.message) for w in caught if w.category is divergence.SkipWarning]
    assert result.history["skipped_steps"] == [1, 1, 1]
    assert messages == [f"1 of epoch {e}'s 4 steps (25%) were skipped: they gave non-finite "
                        f"gradients, parameters or optimizer state (NaN/Inf in the data, or a "
                        f"learning rate or penalty too large)" for e in (1, 2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", divergence.SkipWarning)
        result = _fit(_data(1), batch_size=16)  # 1 of 16 steps: no warning
    assert result.history["skipped_steps"] == [1, 1, 1]


def test_a_resumed_run_diverges_where_the_uninterrupted_one_does(tmp_path):
    """Issue 25 item 2: the skipped steps in a row are saved with each checkpoint. One bad row,
    2 steps per epoch: two in a row only happen across an epoch boundary, so a resume that
    started counting at 0 again went on past the epoch where the run diverged."""
    data, limit = _data(1), dict(batch_size=128, max_consecutive_skips=2, epochs=40)
    message = _diverged(data, **limit)
    epoch = int(message.split("(to epoch ")[1].split(")")[0])
    assert message.startswith("training diverged: 2 steps in a row") and epoch > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", divergence.SkipWarning)
        _fit(data, **{**limit, "epochs": epoch - 1}, checkpoint_dir=str(tmp_path))
    resumed = _diverged(data, **limit, checkpoint_dir=str(tmp_path), resume=True)
    assert resumed == message + " The checkpoint of the last completed epoch is kept."


def test_max_consecutive_skips_none_never_raises():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _fit(_data(256), max_consecutive_skips=None, epochs=2)
    assert result.history["skipped_steps"] == [4, 4]
    assert [str(w.message).split(":")[0] for w in caught] == [
        "every step of epoch 1 (4) was skipped", "every step of epoch 2 (4) was skipped"]
    with pytest.warns(divergence.SkipWarning, match="3 of epoch 1's 5 steps"):  # not at its end
        assert divergence.check_epoch([1, 1, 1, 0, 0], 0, epoch=0, max_consecutive_skips=9,
                                      history={}, checkpointed=False) == 0


def test_a_diverged_sweep_setting_is_one_warning_naming_it():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sweep(models.Linear(num_classes=2), _data(), {"l2": [0.0, 1e18]}, epochs=3,
                       batch_size=64, optimizer="sgd", learning_rate=0.1, progress=False,
                       test=False)  # l2=1e18: w -> -1e17 w at each step, inf at the third
    messages = [str(w.message) for w in caught if w.category is divergence.SkipWarning]
    assert len(result.results) == 2 and len(messages) == 1
    assert messages[0].startswith("sweep setting Setting(learning_rate=0.1, l2=1e+18") and (
        " diverged: every step of epoch 2 (4) was skipped" in messages[0]), messages




def test_jaxreg_train_diverges_with_exit_1_and_so_does_its_resume(tmp_path):
    """Issue 25 items 2 and 3: ``--lr 1e23`` on digits (11 steps per epoch) ended with exit 0,
    "10 skipped steps" (the last 10); its resume too."""
    out = tmp_path / "run"
    flags = ["--no-progress", "--no-compile-cache", "--out", str(out)]
    status, _, err = run_main(["train", "--dataset", "digits", "--optimizer", "sgd", "--lr", "1e23",
                            "--epochs", "2", *flags])
    assert status == 1 and err.count("\n") == 1 and err.startswith(
        "jaxreg train: error: training diverged: the last 10 of epoch 1's 11 steps were "
        "skipped: "), err
    assert not (out / "metrics.json").exists()
    status2, _, err2 = run_main(["train", "--resume", *flags])
    assert (status2, err2) == (1, err)  # no checkpoint: from the start, to the same end
    assert not (out / "metrics.json").exists()
