"""TensorBoard event files of training runs: a :func:`jaxreg.train.fit` callback and sweeps.

``fit(..., callbacks=[TensorBoardCallback("runs/a/tensorboard", config)])`` writes, after each
epoch, every entry of the epoch's logs as a scalar at global step ``epoch + 1`` (epochs
completed, the x-axis of ``curves.png``), under the tag :func:`tag` gives it, and the run's
configuration as text; :func:`write_sweep` writes a :func:`jaxreg.train.sweep` result, one
subdirectory per setting. ``tensorboard --logdir runs/`` then shows every run side by side.

Written with tensorboardX (the ``[tensorboard]`` extra, imported only when a writer opens), on
the host after the compiled epoch, by process 0 only (:func:`jaxreg.train.distributed.is_primary`).
A resumed run appends: its writer marks its first step as a restart (tensorboardX's
``purge_step``), so TensorBoard drops what an earlier run wrote from that step on.
"""
from __future__ import annotations

import json
import math
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxreg._extras import require_extra
from jaxreg.train import distributed

__all__ = ["TensorBoardCallback", "tag", "write_sweep"]

TAGS = {"learning_rate": "optimizer/learning_rate", "l2_strength": "regularization/l2_strength",
        "l1_strength": "regularization/l1_strength", "skipped_steps": "steps/skipped",
        "epoch_seconds": "time/epoch_seconds", "batch_size": "steps/batch_size"}
"""The tags of the history keys that are not metrics."""


def tag(key: str) -> str:
    """The TensorBoard tag of a history key: ``val_loss`` -> ``loss/validation``, ``test_*`` ->
    ``*/test``, ``loss`` -> ``loss/train``, ``learning_rate`` -> ``optimizer/learning_rate``
    (:data:`TAGS`), so a metric's splits sit side by side in one section."""
    for prefix, split in (("val_", "validation"), ("test_", "test")):
        if key.startswith(prefix):
            return f"{key.removeprefix(prefix)}/{split}"
    return TAGS.get(key, f"{key}/train")


def _config_text(config: Mapping[str, Any]) -> str:
    """``config`` as indented JSON in a Markdown code block (TensorBoard's text tab)."""
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    return "\n".join("    " + line for line in text.splitlines())


def _open_writer(logdir: str | Path, first_step: int) -> Any:
    """A tensorboardX ``SummaryWriter`` on ``logdir`` whose steps from ``first_step`` on replace
    any written before (``purge_step``); its own file name, so a restart never overwrites one."""
    require_extra("TensorBoard output", "tensorboard")
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=first_step, flush_secs=10,
                         filename_suffix=f".{time.time_ns()}")


def _write_scalars(writer: Any, step: int, logs: Mapping[str, float]) -> None:
    """Each entry of ``logs`` as a scalar under :func:`tag`, at ``step``."""
    for key, value in logs.items():
        writer.add_scalar(tag(key), float(value), step)


class TensorBoardCallback:
    """A :func:`jaxreg.train.fit` callback writing each epoch's logs to ``logdir``.

    Its first call (epoch ``e``, ``e > 0`` when resumed) opens a new event file whose steps
    from ``e + 1`` on replace any written before, and writes ``config`` (if any) as text;
    each call writes the logs at step ``epoch + 1`` and flushes them, so TensorBoard shows
    the run as it trains. In a multi-process run only process 0 writes. :meth:`close` (also
    when the callback is garbage collected, or as a context manager) closes the file; it
    never stops training.

    Args:
        logdir: the directory of this run's event files (created when needed).
        config: the run's configuration (JSON-serializable), written as text.
    """

    def __init__(self, logdir: str | Path, config: Mapping[str, Any] | None = None):
        self.logdir, self.config = Path(logdir), config
        self._writer: Any = None
        self._close: Any = None

    def __call__(self, epoch: int, state: Any, logs: Mapping[str, float]) -> None:
        if not distributed.is_primary():
            return
        step = epoch + 1
        if self._writer is None:
            self._writer = _open_writer(self.logdir, step)
            self._close = weakref.finalize(self, self._writer.close)
            if self.config is not None:
                self._writer.add_text("config", _config_text(self.config), step)
        _write_scalars(self._writer, step, logs)
        self._writer.flush()

    def close(self) -> None:
        """Closes the event file (if one was opened); a later call opens a new one."""
        if self._close is not None:
            self._close()
        self._writer = self._close = None

    def __enter__(self) -> TensorBoardCallback:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _setting_name(values: Mapping[str, Any]) -> str:
    """A sweep setting's subdirectory: ``"l2=0.0001,learning_rate=0.001,seed=1"``."""
    return ",".join(f"{k}={v}" for k, v in values.items())


def write_sweep(logdir: str | Path, results: Any, config: Mapping[str, Any] | None = None) -> None:
    """Writes each setting of a :func:`jaxreg.train.sweep` result (its ``results``) to
    ``logdir/<setting_name>``: its history per epoch and, at the last epoch, its final
    ``val_*`` and ``test_*`` metrics; ``config`` plus the setting as text. A setting is named
    by the fields that vary over the sweep (``seed`` among them), else by ``l2`` and
    ``learning_rate``. Process 0 only."""
    if not distributed.is_primary():
        return
    settings = [r.setting.as_dict() for r in results]
    varying = [k for k in settings[0] if len({repr(s[k]) for s in settings}) > 1]
    names = varying or ["l2", "learning_rate"]
    for result, values in zip(results, settings, strict=True):
        name = _setting_name({k: values[k] for k in names})
        writer = _open_writer(Path(logdir) / name, 1)
        try:
            writer.add_text("config", _config_text({**(config or {}), "setting": values}), 1)
            epochs = len(result.history["loss"])
            for epoch in range(epochs):
                _write_scalars(writer, epoch + 1,
                               {k: v[epoch] for k, v in result.history.items()})
            final = {k: v for k, v in result.final.items()
                     if k.startswith(("val_", "test_")) and not math.isnan(v)}
            _write_scalars(writer, epochs, final)
        finally:
            writer.close()
