"""The ``jaxreg`` command: ``jaxreg <command> [options]`` (``jaxreg <command> --help``).

Each command lives in a module of this package with ``add_parser(subparsers)``, which adds its
subparser(s) and sets ``run=<function(args) -> int>`` as a default; :data:`COMMANDS` lists the
modules, in ``--help`` order. To add a command, write ``jaxreg/cli/<name>.py`` and append the
module here. The library never imports this package.

Errors are one line on stderr, ``jaxreg <command>: error: <message>``, with exit status 2:
argparse's for bad flags, and the same for the library's ``DataError``, ``ValueError`` and
``OSError`` raised while a command runs (unreadable or corrupt data, an unusable ``--out``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxreg.cli import sweep, train
from jaxreg.data import DataError

COMMANDS = [train, sweep]
"""Command modules, each with ``add_parser(subparsers)``."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is the single line ``<prog>: error: <message>`` (no usage block,
    which for ``train`` would be a dozen lines above the message); ``--help`` has the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> ArgumentParser:
    """The top-level parser with every command of :data:`COMMANDS` registered."""
    parser = ArgumentParser(prog="jaxreg", description="Train and evaluate regularized JAX models.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxreg`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        try:
            return args.run(args)
        except (DataError, ValueError, OSError) as e:
            args.parser.error("; ".join(line.strip() for line in str(e).splitlines() if line.strip())
                              or type(e).__name__)
    except SystemExit as e:  # argparse's --help (0) and errors (2)
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
