"""Run directories: what makes a directory a run, preparing one for output, and its lock.

A directory *holds a run* if it has a run's record (``config.json``, ``metrics.json``, a sweep's
``sweep.json`` or ``study.json``) or any checkpoint, complete or not (an orbax step directory,
in it or in its ``checkpoints/``): a run's checkpoints are never mixed with another's, and a
directory whose ``config.json`` is lost is still a run.

:func:`prepare` creates an output directory and checks it before any work: it is a writable
directory, and it holds no run unless the caller continues that run. :func:`lock` holds an
exclusive lock on it for the life of a run: ``fcntl.flock`` on ``DIR/.lock``, released by the
kernel when the process ends however it ends (no stale locks); the file keeps the holder's pid
for the message a second run gets. :func:`claim` does both for a command's output directory.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK", "RECORDS", "RunDirError", "claim", "describe_run", "lock", "prepare",
           "step_dirs"]

RECORDS = ("config.json", "metrics.json", "sweep.json", "study.json")
"""Files that make a directory a run by themselves."""
LOCK = ".lock"
"""The lock file, ``DIR/.lock``: it holds the pid of the process holding the lock."""


_STEP = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?")
"""An orbax step directory ``<k>``, or one being written (``<k>.orbax-checkpoint-tmp...``)."""


class RunDirError(ValueError):
    """A directory cannot take this run: it holds another, or another process holds it."""


def step_dirs(directory: str | Path) -> list[Path]:
    """The checkpoint step directories in ``directory``, complete or being written, by name
    (not ``<k>.damaged``, set aside by :func:`jaxreg.train.checkpoint.restore_latest`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and _STEP.fullmatch(p.name)),
                  key=lambda p: int(p.name.partition(".")[0]))


def describe_run(directory: str | Path) -> str | None:
    """What makes ``directory`` a run (e.g. ``"config.json"``, ``"checkpoints/2"``), or ``None``."""
    directory = Path(directory)
    for name in RECORDS:
        if (directory / name).exists():
            return name
    for where in (directory, directory / "checkpoints"):
        if steps := step_dirs(where):
            return str(steps[-1].relative_to(directory)) or "."
    return None


def prepare(directory: str | Path, *, resume: bool = False, what: str = "--out") -> Path:
    """Creates ``directory`` (and its parents) and checks that this process can write files in
    it and, unless ``resume``, that it holds no run. Returns it.

    Raises:
        RunDirError: it holds a run (and not ``resume``), naming what makes it one.
        OSError: it cannot be created or written (an existing file, no permission, ...), with
            ``what`` and the path in the message.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise OSError(e.errno, f"{what} {directory} is not a writable directory "
                               f"({e.strerror or type(e).__name__})") from None
    if not resume and (held := describe_run(directory)) is not None:
        raise RunDirError(f"{what} {directory} already holds a run ({held}): "
                          + _what_to_do(directory, held, what))
    return directory


def _what_to_do(directory: Path, held: str, what: str) -> str:
    """The way out for a directory holding the run ``held``: a training run can be continued;
    a sweep (its ``sweep.json`` or ``study.json`` is written once every setting is trained)
    is finished, its plot perhaps not written, and cannot be continued."""
    if held not in ("sweep.json", "study.json"):
        return "continue it (jaxreg train --resume / fit(resume=True)) or choose another directory"
    plot = Path(held).with_suffix(".png").name
    missing = "" if (directory / plot).exists() else f", though its plot {plot} was not written"
    return (f"a finished sweep, its results in {held}{missing}; a sweep cannot be continued: "
            f"choose another {what}, or delete {directory} to run it again")


@contextlib.contextmanager
def lock(directory: str | Path) -> Iterator[Path]:
    """Holds an exclusive lock on ``directory`` (which must exist) while the block runs.

    Raises:
        RunDirError: another process holds it; the message names that process's pid.
    """
    path = Path(directory) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{directory} is in use by another run (pid {holder}); wait for it "
                              f"to end or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield Path(directory)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def claim(directory: str | Path, *, resume: bool = False, locked: bool = True) -> Iterator[Path]:
    """:func:`prepare` ``directory``, then hold its :func:`lock` (if ``locked``) while the block
    runs. If the block fails before writing anything there, a directory this call created is
    removed again, while the lock is still held (a failed command leaves no empty run
    directory behind); a claim refused because another process holds the lock removes
    nothing, even if both processes found the directory new."""
    directory = Path(directory)
    created = not directory.exists()
    prepare(directory, resume=resume)
    with lock(directory) if locked else contextlib.nullcontext(directory):
        try:
            yield directory
        except BaseException:
            if created and all(p.name == LOCK for p in directory.iterdir()):
                shutil.rmtree(directory, ignore_errors=True)
            raise
