"""``python -m jaxreg.cli``: the ``jaxreg`` command."""
import sys

from jaxreg.cli import main

sys.exit(main())
