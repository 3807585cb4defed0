"""Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next safe point, not an exception
raised anywhere.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens
to be: inside orbax's asyncio event loop in the middle of a checkpoint write, inside a
finalizer (where it is printed as "Exception ignored" and lost, so the run goes on), inside
an import; the default SIGTERM action (how clusters and preemptible VMs stop a job) kills the
process at once, perhaps mid-write. Within :func:`deferred` either signal only sets a flag;
the code checks it with :func:`check` at points where stopping leaves everything consistent
(``fit``: before training and after each epoch's checkpoint), which raises there:
``KeyboardInterrupt`` for SIGINT, :class:`Terminated` (a ``SystemExit`` with status 143, so an
uncaught one ends the program quietly, as SIGTERM would) for SIGTERM. Leaving the outermost
:func:`deferred` block after a signal raises it too, so a signal always stops the program, at
the latest when the block ends. A signal ignored when the block starts (``SIG_IGN``, e.g. SIGINT
in a background job) stays ignored.

Signal handlers can only be installed from the main thread; elsewhere :func:`deferred` changes
nothing (and :func:`check` never raises).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["SIGNALS", "Terminated", "check", "deferred", "requested"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals :func:`deferred` defers."""

_received: list[int] = []
"""The signals received in the current block, in order."""
_depth = 0


class Terminated(SystemExit):
    """Raised by :func:`check` after a SIGTERM: ``SystemExit(143)`` (128 + SIGTERM), the
    status a shell reports for a process SIGTERM ended."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _handler(signum, frame) -> None:
    _received.append(signum)


def requested() -> bool:
    """Whether a SIGINT or SIGTERM arrived in the current :func:`deferred` block."""
    return bool(_received)


def check() -> None:
    """Raises :class:`Terminated` if a SIGTERM arrived, else ``KeyboardInterrupt`` if a SIGINT
    did (a safe point)."""
    if signal.SIGTERM in _received:
        raise Terminated
    if _received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set the flag :func:`check` reads instead of
    stopping the program; the previous handlers are restored at the end (nested blocks share
    the outermost's flag)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    if _depth == 0:
        _received.clear()
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if _depth == 0:
        check()
