"""TensorBoard event files (jaxreg.train.tensorboard), read back with TensorBoard's own
EventAccumulator: a fit's epochs, a resumed fit (no duplicated steps), a sweep's settings,
the missing-extra error, process 0 only, and ``jaxreg train/sweep --tensorboard``."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxreg import models
from jaxreg.train import distributed, fit, sweep
from jaxreg.train.tensorboard import TensorBoardCallback, tag, write_sweep
from tests.helpers import run_main

HISTORY_TAGS = {"loss/train", "accuracy/train", "loss/validation", "accuracy/validation",
                "optimizer/learning_rate", "regularization/l2_strength",
                "regularization/l1_strength", "steps/skipped", "time/epoch_seconds",
                "steps/batch_size"}


def read(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events




def scalars(events: EventAccumulator, name: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one tag."""
    points = events.Scalars(name)
    return [p.step for p in points], [p.value for p in points]


def text(events: EventAccumulator, name: str) -> list[tuple[int, str]]:
    return [(t.step, t.tensor_proto.string_val[0].decode()) for t in events.Tensors(name)]


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return x[:640], d.target[:640].astype(np.int32)


def train(digits, epochs, **kwargs):
    return fit(models.get("linear", 10), dict(name="adam", learning_rate=1e-2, l2=1e-3), digits,
               epochs=epochs, batch_size=64, validation_split=0.2, progress=False, **kwargs)


def test_tag_groups_a_metric_by_split():
    assert [tag(k) for k in ("loss", "val_loss", "test_accuracy", "learning_rate",
                             "skipped_steps")] == [
        "loss/train", "loss/validation", "accuracy/test", "optimizer/learning_rate",
        "steps/skipped"]


def test_fit_writes_every_history_key_per_epoch_and_the_config(digits, tmp_path):
    config = {"model": "linear", "optimizer": {"name": "adam", "l2": 1e-3}}
    with TensorBoardCallback(tmp_path, config) as callback:
        history = train(digits, 3, callbacks=[callback]).history
    events = read(tmp_path)
    assert set(events.Tags()["scalars"]) == HISTORY_TAGS
    for key, values in history.items():
        steps, written = scalars(events, tag(key))
        assert steps == [1, 2, 3], key
        np.testing.assert_allclose(written, values, rtol=1e-6, err_msg=key)
    ((step, written),) = text(events, "config/text_summary")
    assert step == 1 and json.loads(written.replace("\n    ", "\n")) == config


def test_resumed_fit_appends_without_duplicated_steps(digits, tmp_path):
    """Interrupted after epoch 3 of which only 2 were checkpointed, resumed to 4 epochs: the
    events of steps 1-2 are the first run's, 3-4 the resumed run's, each step once."""
    logdir, ckpt = tmp_path / "tb", str(tmp_path / "ckpt")
    with TensorBoardCallback(logdir, {"epochs": 3}) as first:
        run1 = train(digits, 3, callbacks=[first], checkpoint_dir=ckpt, checkpoint_every=2)
    # the interrupted run's epoch 3 was written but never checkpointed: 2 is the latest complete
    shutil.rmtree(f"{ckpt}/3")
    with TensorBoardCallback(logdir, {"epochs": 4}) as second:
        run2 = train(digits, 4, callbacks=[second], checkpoint_dir=ckpt, resume=True)
    assert len(list(logdir.iterdir())) == 2  # two event files, neither overwritten
    events = read(logdir)
    steps, losses = scalars(events, "loss/train")
    assert steps == [1, 2, 3, 4]
    np.testing.assert_allclose(losses, run2.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(losses[:2], run1.history["loss"][:2], rtol=1e-6)
    assert [s for s, _ in text(events, "config/text_summary")] == [1, 3]


def test_only_process_zero_writes(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    callback = TensorBoardCallback(tmp_path / "tb")
    train(digits, 1, callbacks=[callback])
    assert not (tmp_path / "tb").exists()


def test_sweep_writes_one_directory_per_setting(digits, tmp_path):
    result = sweep(models.get("linear", 10), digits, {"l2": [0.0, 1e-3]}, epochs=2,
                   batch_size=64, seeds=[0, 1], validation_split=0.2, progress=False)
    write_sweep(tmp_path, result.results, {"model": "linear"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["l2=0.0,seed=0", "l2=0.0,seed=1", "l2=0.001,seed=0", "l2=0.001,seed=1"]
    for r in result.results:
        events = read(tmp_path / f"l2={r.setting.l2},seed={r.setting.seed}")
        steps, losses = scalars(events, "loss/train")
        assert steps == [1, 2]
        np.testing.assert_allclose(losses, r.history["loss"], rtol=1e-6)
        assert scalars(events, "accuracy/validation") == ([2], [pytest.approx(
            r.final["val_accuracy"], rel=1e-6)])
        ((_, written),) = text(events, "config/text_summary")
        assert f'"l2": {r.setting.l2}' in written and '"model": "linear"' in written


def test_missing_extra_is_one_line_naming_the_install(tmp_path):
    code = ("import sys; sys.modules['tensorboardX'] = None\n"
            "from jaxreg.train.tensorboard import TensorBoardCallback\n"
            f"TensorBoardCallback({str(tmp_path)!r})(0, None, {{'loss': 1.0}})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: TensorBoard output needs the [tensorboard] extra (missing: "
        'tensorboardX); install it with: pip install "jaxreg[tensorboard]"')


@pytest.fixture(scope="module", autouse=True)
def xdg_cache(tmp_path_factory):
    """Commands run here keep their compile cache in a temporary XDG_CACHE_HOME, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


TINY = ["--dataset", "digits", "--model", "linear", "--batch-size", "64", "--no-progress"]


def test_train_and_resume_write_one_event_per_epoch(tmp_path):
    """``jaxreg train --tensorboard`` writes run/tensorboard; a resume of a run interrupted
    after epoch 2 (its epoch-3 events written, its checkpoint not) appends without the flag,
    each step once, the last one the resumed run's."""
    run = tmp_path / "run"
    status, _, err = run_main(["train", *TINY, "--epochs", "3", "--validation-split", "0.2",
                               "--tensorboard", "--out", str(run)])
    assert status == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    events = read(run / "tensorboard")
    assert set(events.Tags()["scalars"]) == HISTORY_TAGS
    for key, values in metrics["history"].items():
        steps, written = scalars(events, tag(key))
        assert steps == [1, 2, 3], key
        np.testing.assert_allclose(written, values, rtol=1e-6, err_msg=key)
    ((_, written),) = text(events, "config/text_summary")
    assert json.loads(written.replace("\n    ", "\n")) == json.loads(
        (run / "config.json").read_text())

    (run / "metrics.json").unlink()
    shutil.rmtree(run / "checkpoints" / "3")
    status, _, err = run_main(["train", "--resume", "--out", str(run), "--no-progress"])
    assert status == 0, err
    resumed = json.loads((run / "metrics.json").read_text())
    steps, losses = scalars(read(run / "tensorboard"), "loss/train")
    assert steps == [1, 2, 3]
    np.testing.assert_allclose(losses, resumed["history"]["loss"], rtol=1e-6)


def test_sweep_writes_a_folder_per_setting(tmp_path):
    status, _, err = run_main(["sweep", *TINY, "--epochs", "2", "--l2", "0,1e-3", "--tensorboard",
                               "--out", str(tmp_path / "sweep")])
    assert status == 0, err
    folder = tmp_path / "sweep" / "tensorboard"
    assert sorted(p.name for p in folder.iterdir()) == ["l2=0.0", "l2=0.001"]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    for row in rows:
        events = read(folder / f"l2={row['l2']}")
        assert scalars(events, "loss/train")[0] == [1, 2]
        assert scalars(events, "accuracy/test") == ([2], [pytest.approx(
            row["test_accuracy_mean"], rel=1e-6)])


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_flag_without_the_extra_is_refused_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    out = tmp_path / "out"
    assert run_main([command, *TINY, "--tensorboard", "--out", str(out)]) == (
        2, "", f"jaxreg {command}: error: --tensorboard needs the [tensorboard] extra (missing: "
               'tensorboardX); install it with: pip install "jaxreg[tensorboard]"\n')
    assert not out.exists()


def test_the_command_imports_no_writer_unless_writing():
    code = ("import sys, jaxreg.cli\n"
            "print(sorted({'tensorboardX', 'tensorboard'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
