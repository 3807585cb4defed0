"""The ``jaxreg`` command line: train/eval/resume end to end on digits, help, and bad input.

One small run (digits, 2 epochs, batch 32, with --plateau so validation and the plateau are on)
is shared by the module; everything else reuses it or fails before training.
"""
import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import threading

import jax
import matplotlib.image
import numpy as np
import pytest

from jaxreg import cli
from jaxreg.cli import train as train_cli
from jaxreg.cli.plots import plot_history
from jaxreg.data import DataError, sources
from tests.helpers import fill_disk_at, run_main, write_dataset

RUN_ARGS = [
    "--dataset",
    "digits",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--plateau",
    "--no-progress",
]




@pytest.fixture(scope="module", autouse=True)
def xdg_cache(tmp_path_factory):
    """Commands run here keep their compile cache in a temporary XDG_CACHE_HOME, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("xdg-cache")
        mp.setenv("XDG_CACHE_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run: its directory, metrics.json contents and stdout."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    status, out, err = run_main(["train", *RUN_ARGS, "--out", str(run_dir)])
    assert status == 0, err
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), out


def test_train_writes_metrics(run):
    run_dir, metrics, out = run
    assert metrics["dataset"] == "digits" and "scikit-learn" in metrics["data_source"]
    assert metrics["model"] == "seed-mlp"
    assert (metrics["epochs"], metrics["epochs_completed"], metrics["batch_size"]) == (2, 2, 32)
    assert metrics["validation_split"] == 0.1  # the --plateau default
    assert metrics["optimizer"] == dict(name="adam", learning_rate=1e-3, schedule="fixed",
                                        l2=train_cli.DEFAULT_L2, l1=0.0, batch_scaled=True,
                                        proximal=False, plateau=dict(factor=0.5, patience=2))
    for key in ("train_seconds", "test_loss", "test_accuracy", "train_loss", "train_accuracy"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1; this run reaches about 0.8
    assert metrics["train_accuracy"] > 0.6
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "l2_strength"):
        assert len(metrics["history"][key]) == 2, key
    assert metrics["history"]["l2_strength"][0] == pytest.approx(train_cli.DEFAULT_L2 / 32)
    assert isinstance(metrics["jax_version"], str) and metrics["backend"] == "cpu"
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    assert (run_dir / "checkpoints" / "2").is_dir()
    assert out.splitlines()[0].startswith("dataset: digits")
    summary = out.splitlines()[-1]
    assert summary.startswith("digits: 2 epochs, test acc") and str(run_dir) in summary


def test_curves_png(run, tmp_path):
    path = run[0] / "curves.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_history({"skipped_steps": [0]}, tmp_path / "empty.png")


def test_eval_reproduces_test_accuracy(run):
    run_dir, metrics, _ = run
    status, out, err = run_main(["eval", "--run", str(run_dir)])
    assert status == 0, err
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["epoch"] == 2
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert evaluated["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert f"test acc {metrics['test_accuracy']:.4f}" in out


def test_resume_of_finished_run_only_reports(run, monkeypatch):
    run_dir, metrics, _ = run
    monkeypatch.setattr(
        train_cli, "fit_plan", lambda *a, **k: pytest.fail("a finished run was retrained")
    )
    status, out, _ = run_main(["train", "--resume", "--out", str(run_dir)])
    assert status == 0
    assert "finished" in out and f"test acc {metrics['test_accuracy']:.4f}" in out
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


def test_resume_of_partial_run_continues_with_saved_config(run, tmp_path):
    """Interrupted after epoch 1 (no metrics.json, no epoch-2 checkpoint): --resume trains
    epoch 2 only, with config.json's settings, and ends where the run did."""
    run_dir, metrics, _ = run
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "metrics.json").unlink()
    shutil.rmtree(partial / "checkpoints" / "2")
    status, _, err = run_main(["train", "--resume", "--out", str(partial), "--no-progress"])
    assert status == 0, err
    resumed = json.loads((partial / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_completed"] == 2
    assert resumed["history"]["loss"] == pytest.approx(metrics["history"]["loss"], rel=1e-6)
    assert resumed["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_help_mentions_every_flag():
    status, out, _ = run_main(["train", "--help"])
    assert status == 0
    flags = [
        "--dataset",
        "--data-dir",
        "--validation-split",
        "--model",
        "--epochs",
        "--batch-size",
        "--seed",
        "--optimizer",
        "--lr",
        "--schedule",
        "--l2",
        "--batch-scaled",
        "--no-batch-scaled",
        "--l1",
        "--proximal",
        "--plateau",
        "--plateau-factor",
        "--plateau-patience",
        "--out",
        "--resume",
        "--no-progress",
    ]
    for flag in flags:
        assert flag in out, flag
    assert "(default: 10)" in out and "(default: 128)" in out and str(train_cli.DEFAULT_L2) in out
    assert run_main(["--help"])[0] == 0 and "eval" in run_main(["--help"])[1]
    assert run_main(["eval", "--help"])[0] == 0
    assert run_main(["bogus"])[:2] == (2, "")


def test_train_flags_are_the_run_descriptions_fields():
    """Every field of the run description with a flag is a flag of jaxreg train."""
    import dataclasses

    from jaxreg.train.config import OptimizerConfig, RunConfig, flag_name

    _, out, _ = run_main(["train", "--help"])
    fields = [*dataclasses.fields(RunConfig), *dataclasses.fields(OptimizerConfig)]
    flags = [flag_name(f) for f in fields if flag_name(f) is not None]
    assert {"lr", "optimizer", "epochs", "plateau-patience"} <= set(flags)
    for flag in flags:
        assert f"--{flag} " in out or f"--{flag}," in out or f"--{flag}\n" in out, flag


@pytest.fixture
def corrupt_dir(tmp_path):
    """A directory with the four IDX file names holding garbage."""
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"not an IDX file")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "-1"], "--epochs: expected a positive integer"),
    (["train", "--epochs", "0"], "--epochs: expected a positive integer"),
    (["train", "--lr", "-0.1"], "--lr: expected a positive number"),
    (["train", "--lr", "nan"], "--lr: expected a positive number"),
    (["train", "--l2", "-1"], "--l2: expected a number >= 0"),
    (["train", "--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["train", "--validation-split", "1"], "--validation-split: expected a number in [0, 1)"),
    (["train", "--dataset", "cifar"], "--dataset: invalid choice"),
    (["train", "--model", "resnet"], "--model: invalid choice"),
    (["train", "--data-dir", "/nonexistent/jaxreg"], "--data-dir: expected a readable directory"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--dataset", "digits", "--batch-size", "5000"],
     "`batch_size` must be at most the 1437 training examples; got batch_size=5000"),
    (["eval", "--run", "/"], "not a jaxreg run directory"),
    (["eval"], "--run"),
])
def test_bad_values_exit_2_with_one_line(argv, message):
    status, _, err = run_main(argv)
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"jaxreg {argv[0]}: error:")
    assert message in err and "Traceback" not in err


def test_corrupt_data_exits_2(corrupt_dir, tmp_path):
    status, _, err = run_main(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(corrupt_dir),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("jaxreg train: error:") and "not an IDX file" in err
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(run):
    status, _, err = run_main(["train", "--dataset", "digits", "--out", str(run[0])])
    assert status == 2 and "already holds a run" in err


def test_default_dataset_falls_back_to_digits(corrupt_dir, tmp_path, monkeypatch):
    """Digits when no Fashion-MNIST is found locally; a --data-dir is used or refused."""
    monkeypatch.delenv("JAXREG_DATA_DIR", raising=False)
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", sources.IDX_SOURCES["fashion-mnist"]
                        ._replace(system_dirs=(str(tmp_path / "none"),)))
    data, why = train_cli.load_dataset(None, None)
    assert data.name == "digits"
    assert why.startswith("dataset: digits (default fallback") and "no directory holds" in why
    assert f"searched {sources.cache_dir('fashion-mnist')}, {tmp_path / 'none'};" in why  # named
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", sources.IDX_SOURCES["fashion-mnist"]
                        ._replace(system_dirs=(str(tmp_path / "no {files} here"),)))
    assert f"{tmp_path / 'no {files} here'};" in train_cli.load_dataset(None, None)[1]  # braces
    with pytest.raises(DataError, match="not an IDX file"):
        train_cli.load_dataset(None, corrupt_dir)


def test_compile_cache_is_populated(tmp_path):
    """A run (in a fresh process: jax sets its cache up once per process) fills
    $XDG_CACHE_HOME/jaxreg/xla."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxreg.cli",
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        len(list((tmp_path / "cache" / "jaxreg" / "xla").iterdir())) >= 3
    )  # init, epoch, evaluation


def test_compile_cache_setting_is_scoped(xdg_cache):
    """The cache is on only while a command runs, off with --no-compile-cache."""
    assert jax.config.jax_compilation_cache_dir is None
    with cli.compile_cache(True):
        assert jax.config.jax_compilation_cache_dir == str(xdg_cache / "jaxreg" / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_compilation_cache_dir is None
    with cli.compile_cache(False):
        assert jax.config.jax_compilation_cache_dir is None
    assert (
        cli.build_parser().parse_args(["eval", "--run", ".", "--no-compile-cache"]).compile_cache
        is False
    )
    assert cli.build_parser().parse_args(["train"]).compile_cache is True


def test_subprocess_error_is_one_line():
    """The real entry point (``python -m jaxreg.cli``): exit status 2, one stderr line."""
    proc = subprocess.run([sys.executable, "-m", "jaxreg.cli", "train", "--batch-size", "-5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "jaxreg train: error: argument --batch-size: expected a positive integer, got '-5'\n"
    )


# ---- panels with data, formulas in --help, divergence --------------------------------------------

def test_plot_history_draws_only_panels_with_data(tmp_path):
    from jaxreg.cli.plots import history_panels
    base = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]}
    assert [n for n, _ in history_panels({**base, "learning_rate": [math.nan] * 2})] == [
        "loss", "accuracy"]  # an optimizer exposing no learning rate: no empty panel
    assert [n for n, _ in history_panels({**base, "learning_rate": [0.1, 0.1]})] == [
        "loss", "accuracy"]  # constant: no wasted log panel
    assert [n for n, _ in history_panels({**base, "learning_rate": [0.1, 0.05]})] == [
        "loss", "accuracy", "learning rate"]
    path = tmp_path / "c.png"
    plot_history({**base, "learning_rate": [0.1, 0.1]}, path, test={"accuracy": 0.71, "loss": 0.4})
    image = matplotlib.image.imread(path)
    assert image.shape[1] < 2.5 * image.shape[0]  # two panels, not three


def test_help_states_each_schedule_formula():
    status, out, _ = run_main(["train", "--help"])
    flat = " ".join(out.split())
    assert status == 0 and "poly: eta_0 (1 - t/T)^a" in flat and "step: max(eta_0 (1 - t/s)" in flat
    assert "--lr-power" in flat and "--weight-decay" in flat


def test_diverged_run_exits_1_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(train_cli, "fit_plan",
                        functools.partial(train_cli.fit_plan, max_consecutive_skips=5))
    run_dir = tmp_path / "diverged"
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "3", "--batch-size",
                                 "128", "--lr", "1e30", "--no-progress", "--out", str(run_dir)])
    assert status == 1 and "diverged" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "metrics.json").exists() and (run_dir / "config.json").exists()


def test_summary_reports_skipped_steps(run):
    assert " 0 skipped steps, " in run[2].splitlines()[-1]


# ---- the whole process (background imports, the plot beside the evaluation, gc) ------------------

def test_imports_alongside_keep_errors_to_themselves_and_end_with_the_block(capsys):
    from jaxreg.cli._common import imported_alongside

    with imported_alongside(["jaxreg_no_such_module_xyz", "json"]):
        pass
    assert not [t for t in threading.enumerate() if t.name == "jaxreg-imports"]  # joined
    assert capsys.readouterr().err == ""  # no thread traceback: the command's own import raises
    with pytest.raises(ModuleNotFoundError, match="jaxreg_no_such_module_xyz"):
        __import__("jaxreg_no_such_module_xyz")


def test_modules_are_imported_alongside_idx_data_only(tmp_path, monkeypatch):
    """Digits imports scikit-learn: nothing is imported beside it (concurrent imports of modules
    that import each other can deadlock); an IDX dataset, which imports nothing, gets them."""
    from jaxreg.cli import _common

    seen = []

    @contextlib.contextmanager
    def recorded(modules):
        seen.append(modules)
        yield

    monkeypatch.setattr(_common, "imported_alongside", recorded)
    _common.load_dataset("digits", None, import_alongside=["json"])
    write_dataset(tmp_path, marker=3)
    monkeypatch.setattr(sources, "verify", lambda name, stem, path, raw, content: "unverified")
    data, why = _common.load_dataset(None, tmp_path, import_alongside=["json"])
    assert seen == [["json"]] and data.name == "fashion-mnist" and str(tmp_path) in why


def test_plot_error_fails_the_command_after_the_evaluation(tmp_path, monkeypatch):
    """The plot runs in a thread beside the training-set evaluation; its error is the command's."""
    import jaxreg.cli.plots

    def broken_plot(*args, **kwargs):
        raise OSError("disk full while writing curves.png")

    monkeypatch.setattr(jaxreg.cli.plots, "plot_history", broken_plot)
    run_dir = tmp_path / "run"
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress",
                               "--out", str(run_dir)])
    assert status == 2 and "disk full while writing curves.png" in err
    assert not (run_dir / "metrics.json").exists()  # written only after a successful plot


def test_console_script_freezes_the_collector_and_main_does_not():
    import gc

    from jaxreg import __main__ as entry

    frozen = gc.get_freeze_count()
    assert run_main(["--help"])[0] == 0 and entry.main(["--help"]) == 0
    assert gc.get_freeze_count() == frozen and gc.isenabled()  # calls from Python: untouched
    proc = subprocess.run(
        [sys.executable, "-c", "import gc, sys; from jaxreg.__main__ import command; "
         "sys.argv = ['jaxreg', '--help']; status = command(); "
         "print(status, gc.isenabled(), gc.get_freeze_count() > 100_000)"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 True True"


def test_the_last_checkpoint_wait_comes_after_the_training_evaluation_and_plot(tmp_path,
                                                                               monkeypatch):
    """The end of a run overlaps the last checkpoint's write: the training-set evaluation and
    the plot run before the checkpoint manager is closed (its final wait); curves.png is
    written after that wait, and holds the plot."""
    import jaxreg.cli.plots
    from jaxreg.train import checkpoint

    order = []

    def plot(*args, **kwargs):
        order.append("plot")
        plot_history(*args, **kwargs)

    close = checkpoint._Manager.close

    def recorded_close(self):
        order.append("wait")
        close(self)
        order.append("curves.png" if (tmp_path / "run" / "curves.png").exists() else "no png")

    monkeypatch.setattr(jaxreg.cli.plots, "plot_history", plot)
    monkeypatch.setattr(checkpoint._Manager, "close", recorded_close)
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress",
                               "--out", tmp_path / "run"])
    assert status == 0, err
    assert order == ["plot", "wait", "no png"], order
    assert matplotlib.image.imread(tmp_path / "run" / "curves.png").ndim == 3


def test_a_failed_last_checkpoint_is_the_error_and_leaves_no_metrics_or_plot(tmp_path,
                                                                            monkeypatch):
    """The last checkpoint's write fails while the end-of-run work overlaps it: the write's
    one-line error is the command's, and neither metrics.json nor curves.png is written."""
    fill_disk_at(monkeypatch, 2)
    run_dir = tmp_path / "run"
    status, _, err = run_main(["train", "--dataset", "digits", "--epochs", "2", "--no-progress",
                               "--out", run_dir])
    assert status == 2 and "could not write the checkpoint of epoch 2" in err, err
    assert "No space left on device" in err and len(err.splitlines()) == 1, err
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "curves.png").exists()
