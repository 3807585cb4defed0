"""The ``jaxreg`` console script's first module: it imports only the standard library.

Importing jaxreg (jax, flax, orbax) takes seconds; a Ctrl-C (SIGINT) or SIGTERM meanwhile
would print Python's ``KeyboardInterrupt`` traceback, or be swallowed by an XLA callback, or
kill the process with status -15. :func:`command` first makes either signal print one line,
``jaxreg: interrupted`` (status 130) or ``jaxreg: terminated`` (143), and exit at once (nothing
has been written yet), then imports and runs :func:`jaxreg.__main__.command`, whose commands
defer the signals to safe points (:mod:`jaxreg.train.interrupt`). A signal ignored by the
parent (``SIG_IGN``, e.g. SIGINT in a background job) stays ignored. ``python -m jaxreg``
gets the same handling from ``jaxreg/__init__.py`` (:func:`located_by_python_m`).
"""
from __future__ import annotations

import os
import signal
import sys

STATUS = {signal.SIGINT: (130, b"interrupted"), signal.SIGTERM: (143, b"terminated")}
"""Exit status and word of each signal handled while jaxreg is imported."""


def _exit_now(signum, frame) -> None:
    status, word = STATUS[signum]
    os.write(2, b"jaxreg: " + word + b"\n")
    os._exit(status)


def handle_signals() -> None:
    """SIGINT and SIGTERM print one line and exit at once, unless the parent ignores them."""
    for signum in STATUS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _exit_now)


def located_by_python_m() -> None:
    """:func:`handle_signals` if Python is importing jaxreg to run ``python -m jaxreg`` or
    ``python -m jaxreg.cli`` (``sys.argv[0]`` is ``"-m"`` while it locates the module, and
    ``sys.orig_argv`` names it), before the package's imports; nothing for other modules.
    Called by ``jaxreg/__init__.py``, so that ``python -m jaxreg`` is the console script."""
    argv = sys.orig_argv
    module = next((arg[2:] or argv[i + 1] for i, arg in enumerate(argv[1:], 1)
                   if arg.startswith("-m")), None)
    if sys.argv[:1] == ["-m"] and module in ("jaxreg", "jaxreg.cli"):
        handle_signals()


def command() -> int:
    """The ``jaxreg`` console script: the signals handled, then :func:`jaxreg.__main__.command`."""
    handle_signals()
    from jaxreg.__main__ import command as run

    return run()
