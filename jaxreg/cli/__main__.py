"""``python -m jaxreg.cli``: the ``jaxreg`` command."""
import sys

from jaxreg.__main__ import command

sys.exit(command())
