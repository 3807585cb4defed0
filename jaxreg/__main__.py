"""The ``jaxreg`` command (and ``python -m jaxreg``): the CLI, or one line saying what to install.

This module imports nothing heavy, so that without the ``[train]`` extra the command prints
``jaxreg: error: ... pip install "jaxreg[train]"`` and exits with status 1 instead of a traceback.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence


def _cli() -> Callable[[Sequence[str] | None], int] | None:
    """:func:`jaxreg.cli.main` if the ``[train]`` extra is installed, else ``None`` after
    printing what to install."""
    from jaxreg._extras import require_train

    try:
        require_train("the jaxreg command")
    except ModuleNotFoundError as e:
        print(f"jaxreg: error: {e}", file=sys.stderr)
        return None
    from jaxreg.cli import main as cli_main

    return cli_main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs :func:`jaxreg.cli.main` if the ``[train]`` extra is installed; returns the status."""
    cli_main = _cli()
    return 1 if cli_main is None else cli_main(argv)


def command() -> int:
    """The ``jaxreg`` console script: :func:`main` in a process of its own.

    It calls ``gc.freeze()`` twice, which moves every object tracked by the garbage collector
    to its permanent generation: once the ~180,000 objects of the imports (jax, flax, optax)
    exist, so that the collections during the command skip them (0.54 s of collections in a
    ~5 s ``jaxreg train`` on a 2-core CPU without it), and after the command, so that the
    interpreter's final collections skip everything (~0.5 s more). Those objects live as long
    as the process anyway; atexit handlers and module finalization still run. :func:`main`, for
    calls from Python, leaves the collector alone.
    """
    gc.disable()  # importing creates objects, hardly any garbage
    cli_main = _cli()
    gc.freeze()
    gc.enable()
    if cli_main is None:
        return 1
    status = cli_main(None)
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(command())
