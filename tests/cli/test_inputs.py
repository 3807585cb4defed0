"""The command line checks everything before it writes a run directory, uses an explicit
--data-dir or refuses it, records the data's fingerprint, and says what --resume can change.

Tiny runs: digits (1 epoch, batch 128) or a tiny Fashion-MNIST of the real IDX format written
here, its sha256 made the known ones for the test (tests/data/test_checks.py's ``known``).
Fashion-MNIST's system directory is an empty folder, so an installed Debian package changes
nothing here.
"""
import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest

from jaxreg.data import sources
from tests.helpers import run_main, tiny_files, write

DIGITS = ["--dataset", "digits", "--epochs", "1", "--batch-size", "128", "--no-progress"]




def refused(argv, message):
    """``jaxreg argv`` exits 2 with the one line ``jaxreg <command>: error: ...message...``."""
    status, _, err = run_main(argv)
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"jaxreg {argv[0]}: error:"), err
    assert message in err, err
    return err


@pytest.fixture(scope="module", autouse=True)
def isolated(tmp_path_factory):
    """A private XDG cache, no JAXREG_DATA_DIR, and an empty Fashion-MNIST system directory."""
    root = tmp_path_factory.mktemp("isolated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
        mp.delenv("JAXREG_DATA_DIR", raising=False)
        mp.setitem(sources.IDX_SOURCES, "fashion-mnist", sources.IDX_SOURCES["fashion-mnist"]
                   ._replace(system_dirs=(str(root / "empty-system-dir"),)))
        yield


def make_known(monkeypatch, files):
    """Makes ``files`` fashion-mnist's known files for this test."""
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", sources.IDX_SOURCES["fashion-mnist"]
                        ._replace(content_sha256={s: hashlib.sha256(b).hexdigest()
                                                  for s, b in files.items()},
                                  sha256={s: "0" * 64 for s in files}))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli-inputs") / "run"
    status, _, err = run_main(["train", *DIGITS, "--out", run_dir])
    assert status == 0, err
    return run_dir


def copy_run(run_dir, tmp_path, name="copy"):
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    return copy


# --- an explicit --data-dir is used or refused; the data's fingerprint ----------------------------

FASHION = ["--epochs", "1", "--batch-size", "16", "--no-progress"]


def test_corrupt_fashion_in_data_dir_without_dataset_is_refused_not_digits(tmp_path, monkeypatch):
    files = tiny_files(n_train=64, n_test=16)
    make_known(monkeypatch, files)
    d = write(tmp_path / "d", files)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(files["t10k-images-idx3-ubyte"]
                                                                [:-1] + b"\x00"))
    refused(["train", *FASHION, "--data-dir", d, "--out", tmp_path / "run"],
            "not fashion-mnist's t10k-images-idx3-ubyte")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("present", [0, 3])
def test_incomplete_data_dir_is_refused_not_the_system_copy(tmp_path, monkeypatch, present):
    files = tiny_files(n_train=64, n_test=16)
    make_known(monkeypatch, files)
    system = write(tmp_path / "system", files)
    monkeypatch.setitem(sources.IDX_SOURCES, "fashion-mnist", sources.IDX_SOURCES["fashion-mnist"]
                        ._replace(system_dirs=(str(system),)))
    d = write(tmp_path / "d", dict(list(files.items())[:present]))
    refused(["train", "--dataset", "fashion-mnist", *FASHION, "--data-dir", d,
             "--out", tmp_path / "run"], f"data_dir lacks {4 - present} of the 4")
    assert not (tmp_path / "run").exists()


def test_data_dir_with_a_non_idx_dataset_is_refused(tmp_path):
    refused(["train", *DIGITS, "--data-dir", tmp_path, "--out", tmp_path / "run"],
            "--data-dir applies to the IDX datasets (fashion-mnist, mnist), not digits")


def test_the_run_records_the_fingerprint_and_resume_refuses_other_data(tmp_path, monkeypatch):
    a, b = tiny_files(n_train=64, n_test=16, marker=1), tiny_files(n_train=64, n_test=16, marker=2)
    make_known(monkeypatch, a)
    run_dir = tmp_path / "run"
    status, _, err = run_main(["train", *FASHION, "--data-dir", write(tmp_path / "a", a),
                               "--out", run_dir])
    assert status == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    lines = "".join(f"{s} {hashlib.sha256(a[s]).hexdigest()}\n" for s in sources.IDX_FILES)
    assert config["fingerprint"] == hashlib.sha256(lines.encode()).hexdigest()
    assert config["dataset"] == "fashion-mnist"
    (run_dir / "metrics.json").unlink()  # as if interrupted after its last checkpoint
    make_known(monkeypatch, b)  # other, valid data in another directory
    err = refused(["train", "--resume", "--out", run_dir, "--data-dir", write(tmp_path / "b", b)],
                  "holds other data than the run was trained on")
    assert config["fingerprint"] in err
    refused(["eval", "--run", run_dir, "--data-dir", tmp_path / "b"],
            "holds other data than the run was trained on")


def test_resume_and_eval_refuse_changed_data(digits_run, tmp_path):
    run_dir = copy_run(digits_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config["fingerprint"] = "0" * 64
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.json").unlink()
    refused(["train", "--resume", "--out", run_dir], "other data than the run was trained on")
    refused(["eval", "--run", run_dir], "other data than the run was trained on")


# --- everything is checked before a run directory is written --------------------------------------

def test_inconsistent_idx_files_are_refused_before_training(tmp_path, monkeypatch):
    files = tiny_files(n_train=64, n_test=16, test_shape=(28, 27))
    make_known(monkeypatch, files)
    refused(["train", *FASHION, "--data-dir", write(tmp_path / "d", files),
             "--out", tmp_path / "run"], "test images are 28x27, training images 28x28")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [2**32, 2**64, -1])
def test_seed_outside_32_bits_is_refused_by_argparse(tmp_path, seed):
    refused(["train", *DIGITS, "--seed", seed, "--out", tmp_path / "run"],
            f"--seed: expected an integer in [0, 4294967295], got '{seed}'")
    refused(["sweep", *DIGITS, "--seed", seed, "--out", tmp_path / "run"],
            f"--seed: expected an integer in [0, 4294967295], got '{seed}'")
    assert not (tmp_path / "run").exists()


def test_plateau_without_validation_is_refused_before_the_run_directory(tmp_path):
    refused(["train", *DIGITS, "--plateau", "--validation-split", "0", "--out", tmp_path / "run"],
            "the plateau monitors 'val_loss'")
    assert not (tmp_path / "run").exists()


def test_validation_split_rounding_to_no_example_is_refused(tmp_path):
    refused(["train", *DIGITS, "--validation-split", "0.0001", "--out", tmp_path / "run"],
            "to hold out at least 1 of the 1437 training examples")
    assert not (tmp_path / "run").exists()


# --- flags that do nothing, and what --resume can change ------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--proximal"], "--proximal needs --l1 > 0"),
    (["--proximal", "--l1", "0"], "--proximal needs --l1 > 0"),
    (["--plateau-factor", "0.3"], "--plateau-factor needs --plateau"),
    (["--plateau-patience", "4"], "--plateau-patience needs --plateau"),
])
def test_flags_without_effect_are_refused(tmp_path, flags, message):
    refused(["train", *DIGITS, *flags, "--out", tmp_path / "run"], message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--lr", "0.1"], ["--batch-size", "64"], ["--seed", "1"],
                                   ["--model", "linear"], ["--dataset", "mnist"], ["--plateau"],
                                   ["--no-batch-scaled"], ["--validation-split", "0.2"]])
def test_resume_refuses_settings_it_cannot_change(digits_run, tmp_path, flags):
    run_dir = copy_run(digits_run, tmp_path)
    before = (run_dir / "config.json").read_text()
    refused(["train", "--resume", "--out", run_dir, *flags],
            f"--resume cannot change {flags[0]}")
    assert (run_dir / "config.json").read_text() == before


def test_resume_with_more_epochs_extends_a_finished_run(digits_run, tmp_path):
    run_dir = copy_run(digits_run, tmp_path)
    first = json.loads((run_dir / "metrics.json").read_text())
    status, _, err = run_main(["train", "--resume", "--out", run_dir, "--epochs", "2",
                                 "--no-progress"])
    assert status == 0, err
    extended = json.loads((run_dir / "metrics.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    assert (extended["resumed_from_epoch"], extended["epochs_completed"]) == (1, 2)
    assert extended["history"]["loss"][0] == pytest.approx(first["history"]["loss"][0])
    assert (run_dir / "checkpoints" / "2").is_dir()
    refused(["train", "--resume", "--out", run_dir, "--epochs", "1"],
            "--epochs 1 is fewer than the 2 epochs the run has trained")


def test_resume_applies_checkpoint_every(digits_run, tmp_path):
    """--checkpoint-every is resumable: --resume records it rather than ignoring it."""
    run_dir = copy_run(digits_run, tmp_path)
    status, _, err = run_main(["train", "--resume", "--out", run_dir, "--epochs", "2",
                               "--checkpoint-every", "2", "--no-progress"])
    assert status == 0, err
    assert json.loads((run_dir / "config.json").read_text())["checkpoint_every"] == 2
    assert (run_dir / "checkpoints" / "2").is_dir()


def test_resume_cannot_extend_a_decaying_schedule(tmp_path):
    run_dir = tmp_path / "run"
    status, _, err = run_main(["train", *DIGITS, "--schedule", "cosine", "--out", run_dir])
    assert status == 0, err
    refused(["train", "--resume", "--out", run_dir, "--epochs", "2"],
            "--resume cannot change --epochs of a run with --schedule cosine")


def test_config_missing_a_key_is_one_line_naming_file_and_key(digits_run, tmp_path):
    run_dir = copy_run(digits_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    del config["batch_size"]
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.json").unlink()
    message = f"{run_dir / 'config.json'}: no key 'batch_size'"
    refused(["train", "--resume", "--out", run_dir], message)
    refused(["eval", "--run", run_dir], message)


def test_eval_on_a_dataset_of_other_shapes_says_so(digits_run, tmp_path, monkeypatch):
    files = tiny_files(n_train=64, n_test=16)
    make_known(monkeypatch, files)
    refused(["eval", "--run", digits_run, "--dataset", "fashion-mnist",
             "--data-dir", write(tmp_path / "d", files)],
            "--dataset fashion-mnist: its examples are 28x28x1, the run's (digits) 8x8x1")


# --- no abbreviations; sweep --seed ---------------------------------------------------------------

@pytest.mark.parametrize("argv", [["train", "--epoch", "1"], ["train", "--batch", "8"],
                                  ["sweep", "--seed-", "1"]])
def test_abbreviated_flags_are_refused(argv):
    status, _, err = run_main(argv)  # the command's error (issue 25.21), with close flags
    assert status == 2 and err.count("\n") == 1 and err.startswith(
        f"jaxreg {argv[0]}: error: unrecognized arguments: {argv[1]} {argv[2]}"), err


def test_abbreviated_required_flag_is_not_the_flag():
    refused(["eval", "--ru", "x"], "the following arguments are required: --run")


def test_sweep_seed_is_the_first_seed_beside_seeds(tmp_path):
    out = tmp_path / "sweep"
    status, _, err = run_main(["sweep", *DIGITS, "--l2", "0", "--seed", "3", "--seeds", "2",
                               "--out", out])
    assert status == 0, err
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["seeds"] for r in rows] == [[3, 4]]
    refused(["sweep", *DIGITS, "--seed", str(2**32 - 1), "--seeds", "2", "--out", out],
            "--seed 4294967295 with --seeds 2 reaches seed 4294967296")
    assert np.isfinite(rows[0]["test_accuracy_mean"])


# --- every value read from a run directory is checked as a flag is --------------------------------

@pytest.mark.parametrize("key, value", [
    ("epochs", "2"), ("batch_size", "128"), ("batch_size", 0), ("seed", "0"), ("seed", 2**70),
    ("validation_split", 1e308), ("optimizer", [1, 2]), ("optimizer.learning_rate", "0.1"),
    ("optimizer.momentum", 0.9),
])
def test_resume_and_eval_check_every_config_value(digits_run, tmp_path, key, value):
    run_dir = copy_run(digits_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    where, _, inner = key.rpartition(".")
    (config[where] if where else config)[inner] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.json").unlink()
    message = f"{run_dir / 'config.json'}: `{key}` must be"
    refused(["train", "--resume", "--out", run_dir], message)
    refused(["eval", "--run", run_dir], message)


# --- every numeric setting bounded by what the engine represents, before any work -----------------

@pytest.mark.parametrize("flags, message", [
    (["--plateau", "--plateau-patience", "99999999999999999999999"],
     "--plateau-patience: expected a positive integer up to 2147483647"),
    (["--epochs", "99999999999999999999999"], "--epochs: expected a positive integer up to"),
    (["--schedule", "poly", "--lr-power", "1e308"], "--lr-power: expected a positive number up"),
    (["--l2", "1e23"], "--l2: expected a number >= 0 up to"),
    (["--l1", "1e23"], "--l1: expected a number >= 0 up to"),
    (["--optimizer", "adamw", "--weight-decay", "1e308"], "--weight-decay: expected a number"),
    (["--epochs", "2000000000"],  # 1437 training examples: 1437 steps per epoch
     f"`epochs` must be at most {(2**31 - 1) // 1437} at 1437 steps per epoch"),
])
def test_numeric_settings_beyond_the_engine_are_refused_before_the_run(tmp_path, flags,
                                                                       message):
    argv = ["train", "--dataset", "digits", "--batch-size", "1", *flags, "--no-progress"]
    refused([*argv, "--out", tmp_path / "run"], message)
    assert not (tmp_path / "run").exists()


# --- a run from a config file; one lock per run ---------------------------------------------------

def test_a_runs_config_json_is_a_config_file_for_a_new_run(digits_run, tmp_path):
    status, _, err = run_main(["train", "--config", digits_run / "config.json", "--seed", "3",
                               "--no-progress", "--out", tmp_path / "run"])
    assert status == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    original = json.loads((digits_run / "config.json").read_text())
    assert config == {**original, "seed": 3}
    assert (tmp_path / "run" / ".lock").exists()
    assert not (tmp_path / "run" / "checkpoints" / ".lock").exists()  # one lock, the CLI's
    refused(["train", "--resume", "--out", tmp_path / "run", "--config",
             digits_run / "config.json"], "--resume cannot change --config")


# --- eval of replaced checkpoints; resume without checkpoints -------------------------------------

def test_eval_refuses_checkpoints_of_another_run(digits_run, tmp_path):
    other = tmp_path / "other"
    status, _, err = run_main(["train", *DIGITS, "--batch-size", "64", "--out", other])
    assert status == 0, err
    run_dir = copy_run(digits_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.copytree(other / "checkpoints", run_dir / "checkpoints")
    err = refused(["eval", "--run", run_dir], "was saved by another run")
    assert "batch_size: 64 -> 128" in err
    refused(["train", "--resume", "--out", run_dir, "--epochs", "2"], "batch_size: 64 -> 128")


@pytest.mark.parametrize("deleted", ["every checkpoint", "checkpoints/"])
def test_resume_and_eval_without_checkpoints_are_refused(digits_run, tmp_path, deleted):
    run_dir = copy_run(digits_run, tmp_path)
    if deleted == "checkpoints/":
        shutil.rmtree(run_dir / "checkpoints")
    else:
        for step in (run_dir / "checkpoints").iterdir():
            shutil.rmtree(step)
    refused(["train", "--resume", "--out", run_dir, "--epochs", "2"], "holds no checkpoint")
    refused(["eval", "--run", run_dir], "no checkpoint to evaluate")
