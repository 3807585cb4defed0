"""``jaxreg compare``: runs and sweep settings read back, labelled by what differs, tabled and
drawn on shared axes; bad input is one line and exit status 2 with nothing written.

Two small runs (digits, linear model, 2 epochs) that differ in ``--l2`` and one sweep of two
settings (two seeds each) are shared by the module.
"""
import json
import math
import shutil

import matplotlib.image
import numpy as np
import pytest

from jaxreg.cli import compare, plots
from jaxreg.cli.sweep import summarize
from jaxreg.train.sweep import Setting, SettingResult, SweepResult
from tests.helpers import run_main

TINY = ["--dataset", "digits", "--model", "linear", "--epochs", "2", "--batch-size", "64",
        "--no-progress"]




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(run a, run b, sweep)`` directories: a and b differ in --l2 only."""
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        for name, extra in (("a", ["--l2", "0"]), ("b", ["--l2", "0.5", "--no-batch-scaled"])):
            status, _, err = run_main(["train", *TINY, *extra, "--validation-split", "0.2",
                                       "--out", str(root / name)])
            assert status == 0, err
        status, _, err = run_main(["sweep", *TINY, "--l2", "0,1e-2", "--seeds", "2",
                                   "--out", str(root / "sweep")])
        assert status == 0, err
    return root / "a", root / "b", root / "sweep"


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_flatten_drops_the_optimizer_prefix():
    assert compare.flatten({"model": "linear", "optimizer": {
        "name": "adam", "learning_rate": 1e-3, "plateau": {"factor": 0.5, "patience": 2},
        "schedule_kwargs": {}}}) == {"model": "linear", "optimizer": "adam",
                                     "learning_rate": 1e-3, "plateau.factor": 0.5,
                                     "plateau.patience": 2, "schedule_kwargs": {}}


def test_sweep_rows_hold_the_seed_mean_of_each_history():
    def result(seed, loss):
        return SettingResult(Setting(l2=0.1, seed=seed), {"loss": loss, "accuracy": [0.5, 0.7]},
                             {"test_accuracy": 0.8}, 1.0, {"kernel": np.ones(2)}, {})

    (row,) = summarize(SweepResult([result(0, [1.0, 0.5]), result(1, [3.0, 1.5])], [], 1.0))
    assert row["history"] == {"loss": [2.0, 1.0], "accuracy": [0.5, 0.7]}


def test_runs_and_sweep_settings_on_one_picture(runs, tmp_path, monkeypatch):
    a, b, sweep = runs
    drawn = {}
    monkeypatch.setattr(plots, "plot_runs", lambda curves, path, title: drawn.update(
        curves=curves, path=path, title=title))
    status, out, err = run_main(["compare", str(a), str(b), str(sweep),
                                 "--out", str(tmp_path / "c.png")])
    assert status == 0, err
    rows = json.loads((sweep / "sweep.json").read_text())["rows"]
    labels = [label for label, _, _ in drawn["curves"]]
    # a and b differ in l2 and batch_scaled; the sweep's rows in l2, its 2 seeds, its 0.1
    # validation split (a and b: 0.2); the runs' seed is 0, the sweep's "0,1"
    assert labels == [
        "l2=0.0, batch_scaled=True, seed=0, validation_split=0.2",
        "l2=0.5, batch_scaled=False, seed=0, validation_split=0.2",
        "l2=0.0, batch_scaled=True, seed=0,1, validation_split=0.1",
        "l2=0.01, batch_scaled=True, seed=0,1, validation_split=0.1"]
    histories = [history for _, history, _ in drawn["curves"]]
    assert histories == [metrics(a)["history"], metrics(b)["history"],
                         rows[0]["history"], rows[1]["history"]]
    tests = [test for _, _, test in drawn["curves"]]
    assert tests[:2] == [{"loss": metrics(r)["test_loss"], "accuracy": metrics(r)["test_accuracy"]}
                         for r in (a, b)]
    assert tests[2] == {"loss": rows[0]["test_loss_mean"],
                        "accuracy": rows[0]["test_accuracy_mean"]}
    assert drawn["title"] == "digits: model=linear, optimizer=adam, epochs=2, batch_size=64"

    header, *lines, wrote = out.splitlines()
    assert header.split() == ["run", "l2", "batch_scaled", "seed", "validation_split", "epochs",
                              "loss", "val", "loss", "val", "acc", "test", "loss", "test", "acc"]
    assert [line.split()[0] for line in lines] == [str(a), str(b), f"{sweep}#1", f"{sweep}#2"]
    assert lines[1].split()[1:5] == ["0.5", "False", "0", "0.2"]
    final = metrics(b)
    assert lines[1].split()[5:] == ["2", *(f"{v:.4g}" for v in (
        final["history"]["loss"][-1], final["history"]["val_loss"][-1],
        final["history"]["val_accuracy"][-1], final["test_loss"], final["test_accuracy"]))]
    assert lines[2].split()[5:] == ["2", *(f"{v:.4g}" for v in (
        rows[0]["history"]["loss"][-1], rows[0]["val_loss_mean"], rows[0]["val_accuracy_mean"],
        rows[0]["test_loss_mean"], rows[0]["test_accuracy_mean"]))]
    assert wrote == f"wrote {tmp_path / 'c.png'} (4 curves)"


def test_picture_is_written_with_a_panel_per_metric(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out: compare.png here
    a, b, _ = runs
    status, _, err = run_main(["compare", str(a), str(b)])
    assert status == 0, err
    image = matplotlib.image.imread(tmp_path / "compare.png")
    assert image.shape[1] > 2 * image.shape[0]  # loss and accuracy side by side, legend below
    assert plots.run_panels([metrics(a)["history"], metrics(b)["history"]]) == [
        ("loss", ["loss", "val_loss"]), ("accuracy", ["accuracy", "val_accuracy"])]


def test_learning_rate_panel_only_when_it_differs():
    fixed, other = {"loss": [1.0], "learning_rate": [0.1]}, {"loss": [1.0], "learning_rate": [0.2]}
    assert [name for name, _ in plots.run_panels([fixed, fixed])] == ["loss"]
    assert [name for name, _ in plots.run_panels([fixed, other])] == ["loss", "learning rate"]


def test_identical_settings_are_named_by_their_directory(runs):
    a, _, _ = runs
    curves = compare.read_run(a) * 2
    assert compare.differences(curves) == [] and compare.label(curves[0], []) == str(a)


def test_missing_metric_is_a_dash():
    final = {"loss": math.nan, "val_loss": None, "val_accuracy": None, "test_loss": None,
             "test_accuracy": None}
    curve = compare.Curve("r", {"l2": 0.1}, {"loss": [1.0, math.nan]}, final)
    assert compare.table([curve], ["l2"]).splitlines()[1].split() == [
        "r", "0.1", "2", "-", "-", "-", "-", "-"]


def refused(argv, message, out):
    status, stdout, err = run_main([*argv, "--out", str(out)])
    assert (status, stdout) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith("jaxreg compare: error: ") and message in err
    assert not out.exists()


def test_bad_runs_are_one_line_and_exit_2(runs, tmp_path):
    a, b, _ = runs
    out = tmp_path / "c.png"
    refused(["compare", str(tmp_path)], f"{tmp_path}: not a jaxreg run or sweep directory", out)
    refused(["compare", str(tmp_path / "none")], "argument RUN: ", out)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(a / "config.json", unfinished)
    refused(["compare", str(unfinished)], f"{unfinished}: a run that has not finished", out)

    other = tmp_path / "other"
    shutil.copytree(b, other)
    (other / "metrics.json").write_text(json.dumps({**metrics(b), "dataset": "mnist"}))
    refused(["compare", str(a), str(other)],
            f"runs on different datasets cannot be compared: {a} (digits), {other} (mnist)", out)
    refused(["compare", str(a), str(runs[2]), str(other)],
            f"different datasets cannot be compared: {a} (digits), {runs[2]} (digits), {other} "
            "(mnist)", out)
    (other / "metrics.json").write_text(json.dumps({**metrics(b), "history": {"loss": ["x"]}}))
    refused(["compare", str(other)], f"{other / 'metrics.json'}: 'history' must be per-epoch "
                                     "lists of numbers", out)
    broken_sweep = tmp_path / "broken-sweep"
    shutil.copytree(runs[2], broken_sweep)
    report = json.loads((broken_sweep / "sweep.json").read_text())
    report["rows"][1]["seeds"] = 0
    (broken_sweep / "sweep.json").write_text(json.dumps(report))
    refused(["compare", str(broken_sweep)],
            f"{broken_sweep / 'sweep.json'}: 'seeds' must be a list of seeds; got 0", out)
    (other / "metrics.json").write_text("{")
    refused(["compare", str(other)], f"{other / 'metrics.json'}: not valid JSON", out)
    no_dir = tmp_path / "no-dir" / "c.png"
    refused(["compare", str(a)], f"--out {no_dir}: its directory does not exist", no_dir)
