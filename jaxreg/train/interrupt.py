"""Ctrl-C as a request to stop at the next safe point, not an exception raised anywhere.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens
to be: inside orbax's asyncio event loop in the middle of a checkpoint write, inside a
finalizer (where it is printed as "Exception ignored" and lost, so the run goes on), inside
an import. Within :func:`deferred` a SIGINT only sets a flag; the code checks it with
:func:`check` at points where stopping leaves everything consistent (``fit``: before
training and after each epoch's checkpoint), which raise ``KeyboardInterrupt`` there. Leaving
the outermost :func:`deferred` block after a SIGINT raises it too, so a SIGINT always stops
the program, at the latest when the block ends.

Signal handlers can only be installed from the main thread; elsewhere :func:`deferred` changes
nothing (and :func:`check` never raises).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["check", "deferred", "requested"]

_requested = threading.Event()
_depth = 0


def _handler(signum, frame) -> None:
    _requested.set()


def requested() -> bool:
    """Whether a SIGINT arrived in the current :func:`deferred` block."""
    return _requested.is_set()


def check() -> None:
    """Raises ``KeyboardInterrupt`` if a SIGINT arrived (a safe point)."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT sets the flag :func:`check` reads instead of raising; the
    previous handler is restored at the end (nested blocks share the outermost's flag)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _requested.clear()
        previous = signal.signal(signal.SIGINT, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            signal.signal(signal.SIGINT, previous)
    if _depth == 0:
        check()
