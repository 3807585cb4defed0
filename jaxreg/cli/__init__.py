"""The ``jaxreg`` command: ``jaxreg <command> [options]`` (``jaxreg <command> --help``).

Each command lives in a module of this package with ``add_parser(subparsers)``, which adds its
subparser(s) and sets ``run=<function(args) -> int>`` as a default; :data:`COMMANDS` lists the
modules, in ``--help`` order. To add a command, write ``jaxreg/cli/<name>.py`` and append the
module here. The library never imports this package.

Errors are one line on stderr, ``jaxreg <command>: error: <message>``, with exit status 2:
argparse's for bad flags, and the same for the library's ``DataError``, ``ValueError`` and
``OSError`` raised while a command runs (unreadable or corrupt data, an unusable ``--out``, a
run directory another run holds). A diverged training run (:class:`jaxreg.train.TrainingDiverged`:
an epoch ending with most of its steps skipped, or too many non-finite steps in a row:
:mod:`jaxreg.train.divergence`) is the same one line with exit status 1; its last good
checkpoint stays in ``--out``. A warning (e.g. a damaged checkpoint skipped) is one line,
``jaxreg <command>: warning: <message>``. Ctrl-C (SIGINT) stops a command at its next safe
point (:mod:`jaxreg.train.interrupt`: for training, the end of an epoch, with its checkpoint
complete) with the one line ``jaxreg <command>: interrupted`` and exit status 130; SIGTERM (how
clusters and preemptible VMs stop a job) the same way with ``jaxreg <command>: terminated`` and
exit status 143: ``jaxreg train --out DIR --resume`` continues the run. Before ``main`` runs,
while Python imports jaxreg, the console script's first module (``_jaxreg_command``) handles
them, and for ``python -m jaxreg`` the package's first lines call it: the same line,
``jaxreg: interrupted`` (130) or ``jaxreg: terminated`` (143).

Every command keeps XLA's compiled programs in JAX's persistent compilation cache,
``$XDG_CACHE_HOME/jaxreg/xla`` (``~/.cache/jaxreg/xla``), so a repeated run (the same model,
shapes and settings) loads them instead of compiling again; ``--no-compile-cache`` turns this
off, and a cache directory the user configured for JAX (``JAX_COMPILATION_CACHE_DIR``) is used
as is. ``--deterministic`` asks XLA for deterministic GPU kernels before jax starts
(:mod:`jaxreg.cli.determinism`), so that a resumed run is bit-exact on a GPU too. The library
itself (``jaxreg.train.fit``) leaves JAX's configuration alone.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax

from jaxreg.cli import compare, determinism, evaluate, sweep, train
from jaxreg.data import DataError
from jaxreg.data.sources import cache_root
from jaxreg.train import TrainingDiverged, interrupt

__all__ = [
    "COMMANDS", "ArgumentParser", "build_parser", "compile_cache", "compile_cache_dir", "main",
    "unrecognized",
]

COMMANDS = [train, evaluate, sweep, compare]
"""Command modules, each with ``add_parser(subparsers)``."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is the single line ``<prog>: error: <message>`` (no usage block,
    which for ``train`` would be a dozen lines above the message; ``--help`` has the usage),
    and no abbreviated flags (``allow_abbrev=False``: ``sweep --seed`` is not ``--seeds``, and
    a new flag cannot change what an old command line means). Subparsers are of this class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --seed must never be taken for --seeds
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> ArgumentParser:
    """The top-level parser with every command of :data:`COMMANDS` registered."""
    parser = ArgumentParser(prog="jaxreg", description="Train and evaluate regularized JAX models.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    for command_parser in subparsers.choices.values():
        command_parser.add_argument(
            "--no-compile-cache", dest="compile_cache", action="store_false",
            help=f"do not keep compiled XLA programs in {compile_cache_dir()} (default: kept, so a "
                 f"repeated run skips most compilation)")
        command_parser.add_argument(
            "--deterministic", action="store_true",
            help="XLA's deterministic GPU kernels, without autotuning: a resumed run is "
                 "bit-exact on a GPU too, at some speed (jaxreg.cli.determinism; no effect on CPU)")
    return parser


def compile_cache_dir() -> Path:
    """Where the commands keep XLA's compiled programs: ``$XDG_CACHE_HOME/jaxreg/xla``, a
    directory of its own next to (not one of) the datasets' download caches."""
    return cache_root() / "xla"


@contextlib.contextmanager
def compile_cache(enabled: bool) -> Iterator[None]:
    """JAX's persistent compilation cache in ``$XDG_CACHE_HOME/jaxreg/xla`` for the duration
    of a command, every program cached whatever its compile time (jax's default skips those
    under 1 s, most of a small model's); the previous settings are restored afterwards, as
    ``main`` may be called from Python. A directory already configured for JAX wins."""
    if not enabled or jax.config.values["jax_compilation_cache_dir"] is not None:
        yield
        return
    min_seconds = jax.config.values["jax_persistent_cache_min_compile_time_secs"]
    jax.config.update("jax_compilation_cache_dir", str(compile_cache_dir()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)


def unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """argparse's "unrecognized arguments: ..." with, for each unknown flag, the command's
    closest flags (``difflib``): ``--epoch 2`` -> "(did you mean --epochs?)"."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    hints = {}
    for extra in extras:
        name = extra.split("=", 1)[0]
        if name.startswith("--") and (close := difflib.get_close_matches(name, flags, 2, 0.75)):
            hints[name] = f"did you mean {' or '.join(close)}?"
    text = "; ".join(hint if len(hints) == 1 else f"{name}: {hint}" for name, hint in hints.items())
    return f"unrecognized arguments: {' '.join(extras)}" + (f" ({text})" if text else "")


def _text(error: BaseException) -> str:
    """What an error says: an ``OSError(errno, message)`` of jaxreg's without Python's
    ``[Errno N]`` prefix (an OSError naming a file keeps it: "[Errno 2] ...: 'path'")."""
    if isinstance(error, OSError) and error.strerror and error.filename is None:
        return error.strerror
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxreg`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    prog = "jaxreg"

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with interrupt.deferred(), warnings.catch_warnings():
            warnings.showwarning = one_line
            parser = build_parser()
            args, extras = parser.parse_known_args(argv)
            prog = args.parser.prog
            if extras:  # the command's error, not jaxreg's (argparse names the top parser)
                args.parser.error(unrecognized(args.parser, extras))
            try:
                determinism.request(args.deterministic)  # before jax starts its backend
                with compile_cache(args.compile_cache):
                    return args.run(args)
            except TrainingDiverged as e:  # the run failed, not its arguments: status 1
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 1
            except (DataError, ValueError, OSError) as e:
                command_parser: argparse.ArgumentParser = args.parser  # the command's usage
                command_parser.error("; ".join(line.strip() for line in _text(e).splitlines()
                                               if line.strip()) or type(e).__name__)
    except interrupt.Terminated as e:  # SIGTERM, at a safe point
        print(f"{prog}: terminated", file=sys.stderr)
        return int(e.code or 143)
    except SystemExit as e:  # argparse's --help (0) and errors (2)
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
