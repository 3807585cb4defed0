"""The ``jaxreg`` console script's first module: it imports only the standard library.

Importing jaxreg (jax, flax, orbax) takes seconds; a Ctrl-C (SIGINT) or SIGTERM meanwhile
would print Python's ``KeyboardInterrupt`` traceback, or be swallowed by an XLA callback, or
kill the process with status -15. :func:`command` first makes either signal print one line,
``jaxreg: interrupted`` (status 130) or ``jaxreg: terminated`` (143), and exit at once (nothing
has been written yet), then imports and runs :func:`jaxreg.__main__.command`, whose commands
defer the signals to safe points (:mod:`jaxreg.train.interrupt`). A signal ignored by the
parent (``SIG_IGN``, e.g. SIGINT in a background job) stays ignored.
"""
from __future__ import annotations

import os
import signal

STATUS = {signal.SIGINT: (130, b"interrupted"), signal.SIGTERM: (143, b"terminated")}
"""Exit status and word of each signal handled while jaxreg is imported."""


def _exit_now(signum, frame) -> None:
    status, word = STATUS[signum]
    os.write(2, b"jaxreg: " + word + b"\n")
    os._exit(status)


def command() -> int:
    """The ``jaxreg`` console script: the signals handled, then :func:`jaxreg.__main__.command`."""
    for signum in STATUS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _exit_now)
    from jaxreg.__main__ import command as run

    return run()
