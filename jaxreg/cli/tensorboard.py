"""The ``--tensorboard`` flag of ``jaxreg train`` and ``jaxreg sweep``: TensorBoard event files
in the run directory's ``tensorboard/`` folder (:mod:`jaxreg.train.tensorboard`).

Off by default: the writer is the optional ``[tensorboard]`` extra, and a flag that worked or
not depending on what is installed would surprise. Given without the extra, the flag is refused
while the command line is parsed (one line naming the install, exit status 2), before any
work. ``tensorboard --logdir runs/`` shows every run (and every setting of a sweep) side by side.
"""
from __future__ import annotations

import argparse
from typing import Any

from jaxreg._extras import EXTRAS, install, missing

FOLDER = "tensorboard"
"""The event files' folder in a run (sweep) directory."""


class _Flag(argparse.Action):
    """``store_true`` that refuses the flag when the ``[tensorboard]`` extra is missing."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if absent := missing(EXTRAS["tensorboard"]):
            parser.error(f"{option_string} needs the [tensorboard] extra (missing: "
                         f"{', '.join(absent)}); install it with: {install('tensorboard')}")
        setattr(namespace, self.dest, True)


def add_flag(parser: Any, what: str) -> None:
    """Adds ``--tensorboard`` to ``parser`` (or an argument group); ``what``: what is written."""
    parser.add_argument("--tensorboard", action=_Flag,
                        help=f"also write TensorBoard event files of {what} to "
                             f"<out>/{FOLDER}/ (view with: tensorboard --logdir runs/); needs "
                             f"{install('tensorboard')}")
