"""The ``jaxreg`` command (and ``python -m jaxreg``): the CLI, or one line saying what to install.

This module imports nothing heavy, so that without the ``[train]`` extra the command prints
``jaxreg: error: ... pip install "jaxreg[train]"`` and exits with status 1 instead of a traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Runs :func:`jaxreg.cli.main` if the ``[train]`` extra is installed; returns the status."""
    from jaxreg._extras import require_train

    try:
        require_train("the jaxreg command")
    except ModuleNotFoundError as e:
        print(f"jaxreg: error: {e}", file=sys.stderr)
        return 1
    from jaxreg.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
