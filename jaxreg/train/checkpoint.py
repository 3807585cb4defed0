"""Epoch checkpoints with orbax: the train state plus the history, one directory per epoch.

Layout of ``checkpoint_dir`` (orbax ``CheckpointManager``; ``<k>`` = completed epochs)::

    <k>/state/            TrainState (params, model_state, opt_state incl. step counts, RNG key)
    <k>/history/          JSON: {"epoch": k, "history": {name: [per-epoch values]},
                          "skips": skipped steps in a row at its end}
    <k>/run/              JSON: the run's configuration fingerprint (see :func:`differences`)
    <k>/integrity.json    sha256 and size of every other file of <k>, written once <k> is complete

The epoch count is also the data-order position: epoch ``e`` shuffles with a key derived
from ``(seed, e)``, so resuming needs no RNG replay. orbax writes a temporary directory and
renames it when complete, so a process killed at any time leaves only whole checkpoints; the
latest ``keep`` are kept.

Asynchronous saves (``manager(..., asynchronous=True)``): :func:`save` returns once the state
is copied off the device; orbax writes it in a background thread while training goes on, and
a second thread writes ``integrity.json`` as soon as orbax has committed the step.
:func:`finish` (called by the next :func:`save` and by ``close``) waits for both, so after
``close`` every saved step is complete on disk.

Integrity. :func:`restore_latest` checks every file of a step against its ``integrity.json``
(a step without one was never completed) before orbax reads it, and falls back to the newest
step that verifies and restores, with one :class:`CheckpointWarning` naming the damaged steps
and what is wrong with each; with no intact step left it raises :class:`CheckpointError`.

A write that fails (a full disk, no permission) raises one ``OSError`` line from :func:`save`
or :func:`finish`: the step that could not be written, why, and the newest intact step to
continue from. orbax's own log lines are dropped while a manager is open: jaxreg reports what
matters once, in its own words.

Sharded states (:mod:`jaxreg.train.distributed`): every process calls :func:`save` and
:func:`restore_latest` (they synchronize); each writes the shards it holds, process 0 the
metadata, the history and the integrity record, into a directory all processes can reach. A
checkpoint is not tied to a device count: :func:`restore_latest` reads each array straight into
the sharding of the template's array, so a state saved on 8 devices restores on 1, on 4, or on
another host count.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["RECORD", "CheckpointError", "CheckpointWarning", "differences", "fingerprint", "finish",
           "manager", "restore_latest", "save", "skips", "verify"]

RECORD = "integrity.json"
"""Name of a step's integrity record: ``{"files": {relative path: [size, sha256]}}``."""



class CheckpointError(ValueError):
    """No checkpoint of a directory can be restored (all damaged), or it is another run's."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped: an older one was restored instead."""


class _Manager(ocp.CheckpointManager):
    """orbax's manager; :meth:`wait_until_finished` also waits for the integrity record of
    the last asynchronous save, and raises a failed write as :func:`_write_error`'s line."""

    asynchronous: bool = False
    _recorder: threading.Thread | None = None
    _record_error: BaseException | None = None
    _quiet = False
    _saving: int | None = None
    """The step of the last save until it is complete."""
    _reported: BaseException | None = None
    """The last failed write, raised once (as an ``OSError``)."""

    def wait_until_finished(self) -> None:
        try:
            super().wait_until_finished()
            if self._recorder is not None:
                self._recorder.join()
                self._recorder = None
            if (error := self._record_error) is not None:
                self._record_error = None
                raise error
        except Exception as e:
            if e is self._reported:  # orbax raises a failed write at every wait: once is enough
                return
            if self._saving is None:
                raise
            self._reported = e
            raise _write_error(self, self._saving, e) from e
        finally:
            self._saving = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._quiet:
                _QUIET.exit()  # orbax's log lines again, once its threads are done
                self._quiet = False


class _OrbaxQuiet(logging.Filter):
    """Drops orbax's log records (absl's logger) from :meth:`enter` to the matching
    :meth:`exit` (a manager's life, a restore): jaxreg says what matters once, in its own words
    (a damaged step: :func:`restore_latest`'s warning; a failed write: :func:`save`'s error),
    not orbax's lines such as "Attempted to create temporary directory ... which already
    exists" (a step left half-written by a killed run, removed as it should be) or "Waiting
    for previous save"."""

    users = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname

    def enter(self) -> None:
        logging.getLogger("absl").addFilter(self)  # once: a filter already there is not added
        self.users += 1

    def exit(self) -> None:
        self.users -= 1
        if self.users == 0:
            logging.getLogger("absl").removeFilter(self)


_QUIET = _OrbaxQuiet()


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax's log lines dropped within the block (see :class:`_OrbaxQuiet`)."""
    _QUIET.enter()
    try:
        yield
    finally:
        _QUIET.exit()


def manager(
    directory: str | Path, keep: int = 2, *, asynchronous: bool = False
) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``directory`` keeping the latest ``keep`` epochs; with
    ``asynchronous``, :func:`save` writes in the background (see the module docstring)."""
    with _orbax_quiet():  # it reads every step's metadata
        mngr = _Manager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=asynchronous,
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            ),
        )
    _QUIET.enter()  # until close(): orbax logs from its own threads too
    mngr.asynchronous, mngr._quiet = asynchronous, True
    return mngr


def _digest(path: Path) -> list:
    digest = hashlib.sha256()  # hashlib.file_digest is Python >= 3.11; we support 3.10
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return [path.stat().st_size, digest.hexdigest()]


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != RECORD)


def _relative(step_dir: Path) -> list[str]:
    return [p.relative_to(step_dir).as_posix() for p in _files(step_dir)]


def _valid_record(files: Any) -> bool:
    """Whether ``files`` is ``{relative path: [size, sha256]}`` with an int size and a str hash."""
    return isinstance(files, dict) and all(
        isinstance(name, str) and isinstance(entry, list) and len(entry) == 2
        and type(entry[0]) is int and isinstance(entry[1], str)
        for name, entry in files.items())


def _write_record(step_dir: Path) -> None:
    """Writes ``step_dir/integrity.json`` (atomically: a temporary file renamed into place)."""
    record = {"files": {name: _digest(step_dir / name) for name in _relative(step_dir)}}
    tmp = step_dir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, step_dir / RECORD)


def verify(step_dir: str | Path) -> str | None:
    """``None`` if ``step_dir/integrity.json`` lists every file of the step and each is there
    with its size and sha256, else what is wrong (the first problem found): a malformed record,
    or one listing fewer files than the step holds, is damage too."""
    step_dir = Path(step_dir)
    try:
        files = json.loads((step_dir / RECORD).read_text())["files"]
    except FileNotFoundError:
        return f"no {RECORD} (the save did not complete)"
    except (OSError, ValueError, TypeError, KeyError) as e:
        return f"{RECORD} is not a valid integrity record ({_first_line(e)})"
    if not _valid_record(files):
        return f"{RECORD} is not a valid integrity record (not {{path: [size, sha256]}})"
    if unlisted := sorted(set(_relative(step_dir)) - set(files)):
        return f"{unlisted[0]} is not in {RECORD} (the record lists {len(files)} of " \
               f"{len(files) + len(unlisted)} files)"
    for name, (size, sha256) in files.items():
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if _digest(path)[1] != sha256:
            return f"{name} does not match its sha256 (its bytes changed)"
    return None


def _write_error(mngr: ocp.CheckpointManager, step: int, error: BaseException) -> OSError:
    """``OSError`` (the cause's errno, else EIO) saying in one line which step could not be
    written, why (the first line of ``error``), and which checkpoint is intact."""
    directory = Path(mngr.directory)
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
    intact = next((k for k in steps if k != step and verify(directory / str(k)) is None), None)
    return OSError(
        getattr(error, "errno", None) or errno.EIO,
        f"could not write the checkpoint of epoch {step} to {directory / str(step)} "
        f"({_first_line(error)}); "
        + (f"no checkpoint in {directory} is intact" if intact is None else
           f"the newest intact checkpoint is {directory / str(intact)} (epoch {intact}): "
           f"free some space and continue from it (--resume / resume=True)"))


def finish(mngr: ocp.CheckpointManager) -> None:
    """Waits until every save of ``mngr`` is complete on disk with its integrity record."""
    mngr.wait_until_finished()


def save(mngr: ocp.CheckpointManager, epoch: int, state: Any, history: dict[str, list],
         run: dict[str, Any] | None = None, *, skips: int = 0) -> None:
    """Writes the state, history and run fingerprint ``run`` after ``epoch`` completed epochs,
    then the step's integrity record (in the background for an asynchronous manager).
    ``skips``: the skipped steps in a row at the end of the epoch (:func:`skips` reads it back,
    so that a resumed run counts them as an uninterrupted one does)."""
    finish(mngr)
    # Copies, taken now: an asynchronous save serializes them later, while the caller goes on
    # (appending the next epoch to ``history`` would save it with this step).
    saved = copy.deepcopy({"epoch": epoch, "history": history, "skips": int(skips)})
    try:
        mngr.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            history=ocp.args.JsonSave(saved),
            run=ocp.args.JsonSave(copy.deepcopy(run or {})),
        ))
    except Exception as e:
        raise _write_error(mngr, epoch, e) from e
    mngr._saving = epoch
    step_dir = Path(mngr.directory) / str(epoch)

    def record() -> None:
        ocp.CheckpointManager.wait_until_finished(mngr)  # the step is committed (renamed)
        if jax.process_index() == 0:
            _write_record(step_dir)

    def record_caught() -> None:
        try:
            record()
        except BaseException as e:  # noqa: BLE001 (raised by finish(), as a write error)
            mngr._record_error = e

    if getattr(mngr, "asynchronous", False):
        mngr._recorder = threading.Thread(target=record_caught, name=f"jaxreg-record-{epoch}",
                                          daemon=True)
        mngr._recorder.start()
    else:
        record_caught()
        finish(mngr)


def skips(mngr: ocp.CheckpointManager, epoch: int) -> int:
    """The ``skips`` :func:`save` wrote with step ``epoch`` (0 for a step saved without it)."""
    with _orbax_quiet():
        record = mngr.restore(epoch, args=ocp.args.Composite(history=ocp.args.JsonRestore()))
    count = record.history.get("skips", 0)
    return count if type(count) is int and count >= 0 else 0


def _describe(value: Any) -> str:
    """A stable one-line description: arrays by dtype and shape, containers element-wise,
    anything else by its ``repr`` without memory addresses."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in sorted(value.items(), key=str)) + "}"
        )
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return " ".join(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value)).split())


def fingerprint(**settings: Any) -> dict[str, str]:
    """A run's configuration as ``{name: description}`` (JSON; see :func:`differences`):
    e.g. ``fingerprint(model=model, batch_size=128, train_data=(x, y))``; arrays are described
    by dtype and shape, other values by their ``repr`` (without memory addresses), so two
    fingerprints are equal when the settings are."""
    return {name: _describe(value) for name, value in settings.items()}


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: saved -> current"`` for each key of two run fingerprints that differs (long
    values shortened)."""
    def short(value: Any) -> str:
        text = str(value)
        return text if len(text) <= 80 else f"{text[:38]}...{text[-38:]}"
    return [f"{k}: {short(saved.get(k, '(none)'))} -> {short(current.get(k, '(none)'))}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def _set_aside(step_dir: Path) -> Path:
    """Renames a damaged step ``<k>`` to ``<k>.damaged[-n]`` (orbax ignores it from then on)."""
    target, n = step_dir.with_name(f"{step_dir.name}.damaged"), 1
    while target.exists():
        target, n = step_dir.with_name(f"{step_dir.name}.damaged-{n}"), n + 1
    step_dir.rename(target)
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def restore_latest(mngr: ocp.CheckpointManager, template: Any, *, run: dict[str, Any] | None = None,
                   set_aside: bool = False) -> tuple[int, Any, dict[str, list]] | None:
    """``(epoch, state, history)`` of the newest intact checkpoint, or ``None`` if there is none.

    Newer damaged steps (failing :func:`verify`, or unreadable by orbax) are skipped with one
    :class:`CheckpointWarning`; with ``set_aside`` they are also renamed ``<k>.damaged`` so that
    training can save those epochs again.

    Args:
        mngr: from :func:`manager`.
        template: a state of the same structure (e.g. freshly created); only its shapes,
            dtypes and shardings are used: the restored arrays have the template's shardings.
        run: the current run's fingerprint; if given, a checkpoint saved with a different one
            is refused.

    Raises:
        CheckpointError: every checkpoint is damaged, or (``run``) the newest intact one
            belongs to a run whose fingerprint differs (the message names what differs).
    """
    with _orbax_quiet():
        return _restore_latest(mngr, template, run, set_aside)


def _restore_latest(mngr: ocp.CheckpointManager, template: Any, run: dict[str, Any] | None,
                    set_aside: bool) -> tuple[int, Any, dict[str, list]] | None:
    directory = Path(mngr.directory)
    damaged: list[tuple[Path, str]] = []
    found = None
    for step in sorted(mngr.all_steps(), reverse=True):
        step_dir = directory / str(step)
        problem = verify(step_dir)
        if problem is None:
            try:
                meta = mngr.restore(step, args=ocp.args.Composite(
                    history=ocp.args.JsonRestore(), run=ocp.args.JsonRestore()))
                saved_run = meta.run
                if run is not None and (diff := differences(saved_run, run)):
                    raise CheckpointError(
                        f"{step_dir} was saved by another run (its settings differ: "
                        f"{'; '.join(diff)}); choose another checkpoint directory, or call with "
                        f"that run's settings"
                    )
                abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
                state = mngr.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )
                found = meta.history["epoch"], state.state, meta.history["history"]
                break
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 (orbax's errors for unreadable data have no common type)
                problem = f"orbax cannot read it ({_first_line(e)})"
        damaged.append((step_dir, problem))
    if damaged:
        listing = "; ".join(f"{path} is damaged: {why}" for path, why in damaged)
        if found is None:
            raise CheckpointError(f"no intact checkpoint in {directory}: {listing}")
        if set_aside:
            if jax.process_index() == 0:
                for path, _ in damaged:
                    _set_aside(path)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("jaxreg: damaged checkpoints set aside")
            mngr.reload()
        warnings.warn(f"{listing}; restored {directory / str(found[0])} (epoch {found[0]}) instead"
                      + ("; the damaged ones were renamed *.damaged" if set_aside else ""),
                      CheckpointWarning, stacklevel=3)
    return found
