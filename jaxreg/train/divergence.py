"""Divergence: when skipped (non-finite) steps end a run, and when they are worth a warning.

A step whose gradient, or whose new parameters, optimizer state or batch statistics, hold a
NaN/Inf is skipped (:func:`jaxreg.train.train_step`). The policy, applied after every epoch by
:func:`jaxreg.train.fit` (so by ``jaxreg train``) and to every setting of
:func:`jaxreg.train.sweep` (so of ``jaxreg sweep``):

* the run has diverged (:class:`TrainingDiverged`) when an epoch *ended* with more than half
  of its steps skipped in a row (every step, or the last ones: once a step overflows, every
  later step is skipped, as the parameters stay those that overflow; a bad example here and
  there skips a step here and there), or when ``max_consecutive_skips`` steps in a row were
  (across epochs, and across a resume: the count is saved with each checkpoint);
* a warning (:class:`SkipWarning`, one line) when more than :data:`WARN_FRACTION` of an epoch's
  steps were skipped: the run goes on, but the data or the learning rate deserve a look.

A sweep trains its settings together, so a diverged setting does not stop the others: it gets
one warning, saying that it diverged (an epoch with every step skipped: the sweep keeps counts
per epoch) or is unstable (more than :data:`WARN_FRACTION` of an epoch's steps skipped). See
``docs/training.md`` ("Divergence").
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_CONSECUTIVE_SKIPS", "WARN_FRACTION", "SkipWarning", "TrainingDiverged",
           "check_epoch", "problem", "warn_setting"]

MAX_CONSECUTIVE_SKIPS = 100
"""Default ``max_consecutive_skips`` of :func:`jaxreg.train.fit`."""
WARN_FRACTION = 0.1
"""An epoch with more than this fraction of its steps skipped gets a :class:`SkipWarning`."""


class TrainingDiverged(RuntimeError):
    """Raised by :func:`jaxreg.train.fit` when the run diverged (see the module docstring).
    The checkpoint of the last completed epoch before it (if any) is kept; ``history`` holds
    the epochs up to and including the diverged one."""

    def __init__(self, message: str, history: dict[str, list]):
        super().__init__(message)
        self.history = history


class SkipWarning(UserWarning):
    """Many of an epoch's steps were skipped (non-finite), or a sweep's setting diverged."""


def problem(skipped: int, steps: int, epoch: int) -> str | None:
    """What is wrong with epoch ``epoch`` (0-based) when ``skipped`` of its ``steps`` were
    skipped: ``"every step ..."`` (diverged), ``"N of M steps ..."`` (a warning), else
    ``None``."""
    if steps and skipped == steps:
        return f"every step of epoch {epoch + 1} ({steps}) was skipped"
    if skipped > WARN_FRACTION * steps:
        return (f"{skipped} of epoch {epoch + 1}'s {steps} steps ({skipped / steps:.0%}) "
                f"were skipped")
    return None


_CAUSE = ("gave non-finite gradients, parameters or optimizer state (NaN/Inf in the data, or a "
          "learning rate or penalty too large)")


def check_epoch(skipped: Any, before: int, *, epoch: int, max_consecutive_skips: int | None,
                history: dict[str, list], checkpointed: bool) -> int:
    """Applies the policy after epoch ``epoch`` (0-based); returns the skipped steps in a row
    at its end. Every run of skipped steps counts, the one continuing the last epoch's too.

    Args:
        skipped: per step of the epoch, whether it was skipped.
        before: skipped steps in a row at the end of the previous epoch.
        max_consecutive_skips: as :func:`jaxreg.train.fit`'s; ``None``: never diverged (an
            epoch ending with more than half its steps skipped is then a warning).
        history: the run's history so far (this epoch included), for the error.
        checkpointed: whether the run has a checkpoint directory (the error says it is kept).

    Raises:
        TrainingDiverged: the epoch ended with more than half its steps skipped in a row, or
            ``max_consecutive_skips`` were skipped in a row.
    """
    skipped = np.asarray(skipped, bool)
    in_a_row = longest = before
    for s in skipped.tolist():
        in_a_row = in_a_row + 1 if s else 0
        longest = max(longest, in_a_row)
    steps = skipped.size
    last = min(in_a_row, steps)  # the epoch's own steps at its end, skipped in a row
    found = problem(int(skipped.sum()), steps, epoch)
    ended = last * 2 > steps
    if max_consecutive_skips is not None and (ended or longest >= max_consecutive_skips):
        why = (found if last == steps else
               f"the last {last} of epoch {epoch + 1}'s {steps} steps were skipped") if ended else (
            f"{longest} steps in a row (to epoch {epoch + 1}) were skipped "
            f"(max_consecutive_skips={max_consecutive_skips})")
        raise TrainingDiverged(
            f"training diverged: {why}: they {_CAUSE}; {sum(history['skipped_steps'])} steps "
            f"skipped in all. Lower the learning rate, or check the data."
            + (" The checkpoint of the last completed epoch is kept." if checkpointed else ""),
            history)
    if found is not None:
        warnings.warn(f"{found}: they {_CAUSE}", SkipWarning, stacklevel=3)
    return in_a_row


def warn_setting(name: str, skipped_steps: Sequence[int], steps: int) -> None:
    """One :class:`SkipWarning` for a sweep's setting ``name`` whose epochs skipped
    ``skipped_steps`` of ``steps`` each: it diverged (the first epoch with every step skipped
    is named), else it is unstable (the first epoch with many skipped), else nothing."""
    every = [e for e, skipped in enumerate(skipped_steps) if skipped == steps]
    many = [e for e, skipped in enumerate(skipped_steps) if problem(skipped, steps, e)]
    for epochs, verdict in ((every, "diverged"), (many, "unstable")):
        if epochs:
            found = problem(skipped_steps[epochs[0]], steps, epochs[0])
            warnings.warn(f"sweep setting {name} {verdict}: {found}: they {_CAUSE}",
                          SkipWarning, stacklevel=2)
            return
