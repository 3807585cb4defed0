"""Checkpoint integrity: every step has an integrity record; a damaged newest step is reported by
name and the newest intact one restored; a checkpoint of another run is refused."""
import json
import logging
import resource
import shutil
import signal
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxreg.train import checkpoint, rundir

STATE = {"w": jnp.arange(50 * 64, dtype=jnp.float32).reshape(50, 64), "b": jnp.zeros(3)}
RUN = {"model": "SeedMLP()", "batch_size": 64}


def _state(k):
    return jax.tree.map(lambda a: a + k, STATE)


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def saved(request, tmp_path_factory):
    """Three epochs saved (keep=3), the pristine copy to damage."""
    directory = tmp_path_factory.mktemp("ckpt")
    mngr = checkpoint.manager(directory, keep=3, asynchronous=request.param)
    for k in (1, 2, 3):
        checkpoint.save(mngr, k, _state(k), {"loss": [float(i) for i in range(k)]}, run=RUN)
    mngr.close()
    return directory


def _largest_data_file(step_dir):
    return max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
        key=lambda p: p.stat().st_size,
    )


def _flip(step_dir):  # four bytes overwritten inside the step's orbax data file
    path = _largest_data_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4] = bytes(
        255 - b for b in data[len(data) // 2 : len(data) // 2 + 4]
    )
    path.write_bytes(bytes(data))
    return path.relative_to(step_dir).as_posix()


def _truncate(step_dir):
    path = _largest_data_file(step_dir)
    path.write_bytes(path.read_bytes()[:10])
    return path.relative_to(step_dir).as_posix()


def _delete_history(step_dir):
    shutil.rmtree(step_dir / "history")
    return "history/"


def _empty(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()
    return "integrity.json"


def _delete_manifest(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()
    return "state/manifest.ocdbt"


def _delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()
    return "state/_METADATA"


def _garbage_json(step_dir):
    (step_dir / "history" / "metadata").write_text("{garbage")
    return "history/metadata"


def _garbage_step_metadata(step_dir):
    (step_dir / "_CHECKPOINT_METADATA").write_text("{garbage")
    return "_CHECKPOINT_METADATA"


def _delete_record(step_dir):
    (step_dir / checkpoint.RECORD).unlink()
    return "integrity.json"


def _record(content):
    """A damage writing ``content`` as the step's integrity record (after flipping a byte of
    its data: a record that lists nothing, or is malformed, must not let that through)."""
    def damage(step_dir):
        _flip(step_dir)
        (step_dir / checkpoint.RECORD).write_text(json.dumps(content))
        return "integrity.json"
    damage.__name__ = f"_record_{json.dumps(content)}"
    return damage


def _record_lists_fewer_files(step_dir):
    flipped = _flip(step_dir)
    record = json.loads((step_dir / checkpoint.RECORD).read_text())
    del record["files"][flipped]
    (step_dir / checkpoint.RECORD).write_text(json.dumps(record))
    return f"{flipped} is not in integrity.json"


def _record_is_a_directory(step_dir):
    (step_dir / checkpoint.RECORD).unlink()
    (step_dir / checkpoint.RECORD).mkdir()
    return "integrity.json"


DAMAGES = [_flip, _truncate, _delete_history, _empty, _delete_manifest, _delete_metadata,
           _garbage_json, _garbage_step_metadata, _delete_record,
           # issue 25 items 4 and 7: records listing nothing or too little, malformed ones
           _record({"files": {}}), _record({"files": {"run/metadata": 5}}),
           _record({"files": {"x": [1, 2, 3]}}), _record({"files": {"x": ["1", "2"]}}),
           _record({"files": []}), _record([1, 2, 3]), _record_lists_fewer_files,
           _record_is_a_directory]


def test_every_step_has_a_record_that_verifies(saved):
    for k in (1, 2, 3):
        assert checkpoint.verify(saved / str(k)) is None
        record = json.loads((saved / str(k) / checkpoint.RECORD).read_text())
        assert any(name.startswith("state/") for name in record["files"])
    restored = checkpoint.restore_latest(checkpoint.manager(saved), STATE, run=RUN)
    epoch, state, history = restored
    assert epoch == 3 and history == {"loss": [0.0, 1.0, 2.0]}
    np.testing.assert_array_equal(state["w"], _state(3)["w"])


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_damaged_latest_falls_back_to_the_previous_step(saved, tmp_path, damage):
    directory = tmp_path / "ckpt"
    shutil.copytree(saved, directory)
    what = damage(directory / "3")
    mngr = checkpoint.manager(directory)
    with pytest.warns(checkpoint.CheckpointWarning) as record:
        epoch, state, history = checkpoint.restore_latest(mngr, STATE, run=RUN)
    assert epoch == 2 and history == {"loss": [0.0, 1.0]}
    np.testing.assert_array_equal(state["w"], _state(2)["w"])
    (message,) = [str(w.message) for w in record]
    assert "\n" not in message
    assert f"{directory / '3'} is damaged" in message and what.rstrip("/") in message, message
    assert f"restored {directory / '2'} (epoch 2)" in message


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_each_step_holds_the_history_of_its_epochs_only(tmp_path, asynchronous):
    """Issue 25 item 1: the history is saved as it was when save was called, not as the caller
    changed it afterwards (an asynchronous write used to save the next epoch's entry too)."""
    mngr = checkpoint.manager(tmp_path, keep=8, asynchronous=asynchronous)
    history = {"loss": []}
    for k in range(1, 9):
        history["loss"].append(float(k))
        checkpoint.save(mngr, k, _state(k), history, run=RUN)
    mngr.close()
    for k in range(1, 9):
        saved = checkpoint.manager(tmp_path).restore(k, args=ocp.args.Composite(
            history=ocp.args.JsonRestore())).history
        assert saved["epoch"] == k
        assert saved["history"] == {"loss": [float(i) for i in range(1, k + 1)]}


def test_set_aside_renames_the_damaged_step_so_training_can_save_it_again(saved, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(saved, directory)
    _flip(directory / "3")
    mngr = checkpoint.manager(directory, keep=3)
    with pytest.warns(checkpoint.CheckpointWarning, match="renamed"):
        epoch, state, _ = checkpoint.restore_latest(mngr, STATE, set_aside=True)
    assert epoch == 2 and (directory / "3.damaged").is_dir() and not (directory / "3").exists()
    checkpoint.save(mngr, 3, _state(30), {"loss": []}, run=RUN)
    mngr.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epoch, state, _ = checkpoint.restore_latest(checkpoint.manager(directory), STATE)
    assert epoch == 3
    np.testing.assert_array_equal(state["w"], _state(30)["w"])


def test_all_damaged_raises_naming_each_step(saved, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(saved, directory)
    for k in (1, 2, 3):
        _flip(directory / str(k))
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint") as error:
        checkpoint.restore_latest(checkpoint.manager(directory), STATE)
    for k in (1, 2, 3):
        assert f"{directory / str(k)} is damaged" in str(error.value)


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(saved):
    other = {"model": "SeedMLP()", "batch_size": 32}
    with pytest.raises(checkpoint.CheckpointError, match=r"batch_size: 64 -> 32"):
        checkpoint.restore_latest(checkpoint.manager(saved), STATE, run=other)


def test_empty_directory_restores_nothing(tmp_path):
    assert checkpoint.restore_latest(checkpoint.manager(tmp_path), STATE) is None


def test_differences():
    assert checkpoint.differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == [
        "b: 2 -> 3",
        "c: (none) -> 4",
    ]
    assert checkpoint.differences(RUN, dict(RUN)) == []


def test_fingerprint_describes_settings_stably():
    from jaxreg import models
    x = np.zeros((100, 8, 8, 1), np.float32)
    a = checkpoint.fingerprint(
        model=models.SeedMLP(num_classes=10),
        optimizer={"name": "adam", "l2": 0.1},
        batch_size=64,
        train_data=(x, np.zeros(100, np.int32)),
        fn=jnp.tanh,
    )
    assert a["train_data"] == "(float32[100, 8, 8, 1], int32[100])"
    assert a["optimizer"] == "{l2: 0.1, name: 'adam'}" and a["batch_size"] == "64"
    assert " at 0x" not in a["model"] and "\n" not in a["model"]
    b = checkpoint.fingerprint(
        model=models.SeedMLP(num_classes=10),
        optimizer={"l2": 0.1, "name": "adam"},
        batch_size=64,
        train_data=(x, np.zeros(100, np.int32)),
        fn=jnp.tanh,
    )
    assert json.loads(json.dumps(a)) == b
    c = checkpoint.fingerprint(model=models.SeedMLP(num_classes=3))
    assert checkpoint.differences({"model": a["model"]}, c) == [
        f"model: {a['model']} -> {c['model']}"] and a["model"] != c["model"]


# fit's checkpoints: a directory of another run is refused, a resumed run must be the same run,
# and every saved epoch is complete on disk when fit returns or raises.

def _fit(directory, **kwargs):
    from jaxreg import models
    from jaxreg.train import fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    settings = dict(
        epochs=2, batch_size=64, progress=False, test=False, checkpoint_dir=str(directory)
    )
    return fit(
        models.Linear(num_classes=2),
        dict(name="sgd", learning_rate=0.1),
        (x, (x[:, 0] > 0).astype(np.int32)),
        **{**settings, **kwargs},
    )


def test_fit_refuses_a_directory_holding_another_run(tmp_path):
    _fit(tmp_path, epochs=1)
    with pytest.raises(rundir.RunDirError, match=r"checkpoint_dir .* already holds a run \(1\)"):
        _fit(tmp_path, epochs=2, seed=1)
    assert sorted(p.name for p in rundir.step_dirs(tmp_path)) == ["1"]


def test_fit_resume_refuses_another_runs_checkpoint_naming_what_differs(tmp_path):
    _fit(tmp_path, epochs=1)
    with pytest.raises(checkpoint.CheckpointError, match=r"batch_size: 64 -> 32"):
        _fit(tmp_path, resume=True, batch_size=32)
    resumed = _fit(tmp_path, resume=True, epochs=2)  # the same run continues
    assert len(resumed.history["loss"]) == 2


def test_fit_checkpoint_every_and_everything_complete_on_return(tmp_path):
    _fit(tmp_path, epochs=5, checkpoint_every=2)
    assert sorted(int(p.name) for p in rundir.step_dirs(tmp_path)) == [
        4,
        5,
    ]  # 2, 4, the last; keep 2
    assert all(checkpoint.verify(p) is None for p in rundir.step_dirs(tmp_path))


def test_fit_error_leaves_the_last_checkpoint_complete(tmp_path):
    def fail(epoch, state, logs):
        if epoch == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, epochs=5, callbacks=[fail])
    assert sorted(int(p.name) for p in rundir.step_dirs(tmp_path)) == [2, 3]
    assert all(checkpoint.verify(p) is None for p in rundir.step_dirs(tmp_path))


def test_orbax_log_lines_do_not_reach_the_user(tmp_path, caplog):
    """Issue 25 item 11: a step left half-written (a killed run) is removed and saved again
    without orbax's "WARNING:absl:Attempted to create temporary directory ..." line, and its
    other chatter (e.g. "Waiting for previous save") stays out too."""
    mngr = checkpoint.manager(tmp_path, asynchronous=True)
    checkpoint.save(mngr, 1, _state(1), {"loss": [1.0]}, run=RUN)
    mngr.close()
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp")
    with caplog.at_level(logging.DEBUG):
        mngr = checkpoint.manager(tmp_path, asynchronous=True)
        checkpoint.save(mngr, 2, _state(2), {"loss": [1.0, 2.0]}, run=RUN)
        checkpoint.save(mngr, 3, _state(3), {"loss": [1.0, 2.0, 3.0]}, run=RUN)
        mngr.close()
    assert [r.getMessage() for r in caplog.records if "orbax" in r.pathname] == []
    assert sorted(p.name for p in rundir.step_dirs(tmp_path)) == ["2", "3"]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_failed_write_is_one_line_naming_the_intact_checkpoint(tmp_path, asynchronous):
    """Issue 25 item 13: a disk that fills (here: a file size limit, so orbax's own writes
    fail) raises one OSError line saying which step could not be written and which is intact."""
    mngr = checkpoint.manager(tmp_path, asynchronous=asynchronous)
    checkpoint.save(mngr, 1, _state(1), {"loss": [1.0]}, run=RUN)
    checkpoint.finish(mngr)
    big = {"w": jax.random.normal(jax.random.key(0), (100_000,)), "b": jnp.zeros(3)}
    limit, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, limit[1]))
    try:
        with pytest.raises(OSError) as error:
            checkpoint.save(mngr, 2, big, {"loss": [1.0, 2.0]}, run=RUN)
            checkpoint.finish(mngr)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    mngr.close()
    message = error.value.strerror
    assert "\n" not in message and message.startswith(
        f"could not write the checkpoint of epoch 2 to {tmp_path / '2'} (")
    assert message.endswith(f"the newest intact checkpoint is {tmp_path / '1'} (epoch 1): free "
                            f"some space and continue from it (--resume / resume=True)")
    epoch, _, _ = checkpoint.restore_latest(checkpoint.manager(tmp_path), STATE, run=RUN)
    assert epoch == 1
