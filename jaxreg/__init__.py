"""jaxreg: regularization and normalization as composable optax/flax building blocks.

Layers, lowest first, one folder each; a lower layer never imports a higher one:

* :mod:`jaxreg.transforms`: the optax layer (masks, penalties, regularizers, proximal,
  schedules, plateau), re-exported here (``jaxreg.add_l2``, ``jaxreg.masks``, ...);
* :mod:`jaxreg.nn`: flax modules (the batch normalization family);
* :mod:`jaxreg.data`: datasets;
* :mod:`jaxreg.train`: the training engine and its models (:mod:`jaxreg.train.models`);
* :mod:`jaxreg.cli`: the ``jaxreg`` command and its plots.

``jaxreg._validate`` (argument checks) sits below them all.
"""

__version__ = "0.1.0"

from jaxreg import transforms
from jaxreg.transforms import *  # noqa: F403  (the optax layer, re-exported: its __all__)

__all__ = [*transforms.__all__, "cli", "data", "models", "nn", "train", "transforms"]

# The higher layers are imported on first use (``jaxreg.nn``, ``jaxreg.train``, ...), so that
# the transforms stay light to import (no flax modules, orbax or matplotlib). ``jaxreg.models``
# is :mod:`jaxreg.train.models`; ``jaxreg.plots`` is :mod:`jaxreg.cli.plots`.
_LAZY = {"nn": "jaxreg.nn", "data": "jaxreg.data", "train": "jaxreg.train", "cli": "jaxreg.cli",
         "models": "jaxreg.train.models", "plots": "jaxreg.cli.plots"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
