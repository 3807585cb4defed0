"""``jaxreg train --batch-size-schedule``: the batch size of each epoch in metrics.json, the
schedule in config.json, bad input one line (issue 23 item 2)."""
import json

import pytest

from tests.helpers import run_main


@pytest.fixture(autouse=True)
def xdg_cache(tmp_path, monkeypatch):
    """The command's compile cache in a temporary XDG_CACHE_HOME, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_train_with_a_batch_size_schedule(tmp_path):
    run_dir = tmp_path / "run"
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "3", "--batch-size",
                               "32", "--batch-size-schedule", "2:64", "--no-progress",
                               "--out", str(run_dir)])
    assert status == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["history"]["batch_size"] == [32, 32, 64]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["batch_size"], config["batch_size_schedule"]) == (32, "2:64")


@pytest.mark.parametrize("schedule", ["0:64", "3:64,2:128", "2:0", "2-64"])
def test_bad_schedule_exits_2_with_one_line(schedule):
    status, _, err = run_main(["train", "--dataset", "digits", "--batch-size-schedule", schedule])
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "`batch_size_schedule` must be EPOCH:SIZE" in err and "Traceback" not in err


def test_schedule_above_the_training_set_exits_2():
    status, _, err = run_main(["train", "--dataset", "digits", "--batch-size-schedule", "2:5000"])
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "`batch_size` must be at most the 1437 training examples" in err
