"""Run directories: what is a run, preparing an output directory before any work, the lock."""
import os
import subprocess
import sys
import textwrap

import pytest

from jaxreg.train import rundir


@pytest.mark.parametrize("content", ["config.json", "metrics.json", "sweep.json", "study.json",
                                     "checkpoints/3", "checkpoints/4.orbax-checkpoint-tmp", "2"])
def test_a_record_or_any_checkpoint_makes_a_run(tmp_path, content):
    path = tmp_path / content
    if content.endswith(".json"):
        path.write_text("{}")
    else:
        path.mkdir(parents=True)
    assert rundir.describe_run(tmp_path) == content
    with pytest.raises(rundir.RunDirError, match=f"already holds a run \\({content}\\)"):
        rundir.prepare(tmp_path)
    assert rundir.prepare(tmp_path, resume=True) == tmp_path


def test_other_files_do_not_make_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "3.damaged").mkdir()
    (tmp_path / rundir.LOCK).write_text("123\n")
    assert rundir.describe_run(tmp_path) is None
    assert rundir.prepare(tmp_path) == tmp_path


def test_prepare_creates_the_directory_and_its_parents(tmp_path):
    assert rundir.prepare(tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_prepare_refuses_what_is_not_a_writable_directory(tmp_path, where):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match=f"--out {tmp_path / where} is not a writable directory"):
        rundir.prepare(tmp_path / where)


HOLD = textwrap.dedent("""
    import sys, time
    from jaxreg.train import rundir
    with rundir.lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            rundir.RunDirError, match=f"in use by another run \\(pid {holder.pid}\\)"
        ):
            with rundir.lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with rundir.lock(tmp_path):  # released by the kernel when the holder died
        assert (tmp_path / rundir.LOCK).read_text() == f"{os.getpid()}\n"


def test_claim_removes_a_directory_it_created_when_the_block_fails_before_writing(tmp_path):
    with pytest.raises(RuntimeError), rundir.claim(tmp_path / "new"):
        assert (tmp_path / "new" / rundir.LOCK).exists()
        raise RuntimeError
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), rundir.claim(tmp_path / "kept") as out:
        (out / "config.json").write_text("{}")
        raise RuntimeError
    assert (tmp_path / "kept" / "config.json").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError), rundir.claim(tmp_path / "old"):
        raise RuntimeError
    assert (tmp_path / "old").is_dir()  # not created by the claim: left alone


@pytest.mark.parametrize("plotted", [True, False])
@pytest.mark.parametrize("record", ["sweep.json", "study.json"])
def test_a_finished_sweep_says_it_cannot_be_continued(tmp_path, record, plotted):
    """Issue 25 item 15: ``jaxreg sweep`` has no --resume; the message says what to do, and
    that a sweep.json without its plot is still a finished sweep."""
    (tmp_path / record).write_text("{}")
    plot = record.replace(".json", ".png")
    if plotted:
        (tmp_path / plot).write_bytes(b"")
    with pytest.raises(rundir.RunDirError) as error:
        rundir.prepare(tmp_path)
    assert str(error.value) == (
        f"--out {tmp_path} already holds a run ({record}): a finished sweep, its results in "
        f"{record}{'' if plotted else f', though its plot {plot} was not written'}; a sweep "
        f"cannot be continued: choose another --out, or delete {tmp_path} to run it again")


def test_a_training_run_says_how_to_continue_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match=r"\(config.json\): continue it \(jaxreg train "
                                                 r"--resume / fit\(resume=True\)\) or choose"):
        rundir.prepare(tmp_path)


HOLD_NEW = textwrap.dedent("""
    import os, sys, time
    from jaxreg.train import rundir
    os.mkdir(sys.argv[1])
    with rundir.lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_claim_that_loses_the_race_removes_nothing(tmp_path, monkeypatch):
    """Issue 25 item 15: two processes both find ``new`` missing; the other one creates and
    locks it first. The loser is refused and must not remove the winner's directory (it used
    to: the directory it thought it had created held only the lock file)."""
    new = tmp_path / "new"
    holder = []
    prepare = rundir.prepare

    def the_other_process_wins(directory, **kwargs):  # runs after claim checked exists()
        holder.append(subprocess.Popen([sys.executable, "-c", HOLD_NEW, str(new)],
                                       stdout=subprocess.PIPE, text=True))
        assert holder[0].stdout.readline().strip() == "locked"
        return prepare(directory, **kwargs)

    monkeypatch.setattr(rundir, "prepare", the_other_process_wins)
    try:
        with pytest.raises(rundir.RunDirError, match="in use by another run"):
            with rundir.claim(new):
                pass
        assert new.is_dir() and (new / rundir.LOCK).read_text() == f"{holder[0].pid}\n"
    finally:
        for proc in holder:
            proc.kill()
            proc.wait()
