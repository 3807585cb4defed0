"""jaxreg: regularization and normalization as composable optax/flax building blocks.

Layers, lowest first, one folder each; a lower layer never imports a higher one:

* :mod:`jaxreg.transforms`: the optax layer (masks, penalties, regularizers, proximal,
  schedules, plateau, batch-size scaling rules), re-exported here (``jaxreg.add_l2``,
  ``jaxreg.masks``, ``jaxreg.scaling``, ...);
* :mod:`jaxreg.batchnorm`: the batch normalization family (one core, the linen and NNX front
  ends, the tools), whose public faces are :mod:`jaxreg.nn` (linen, with the layer functions of
  :mod:`jaxreg.nn.layers`) and :mod:`jaxreg.nnx`;
* :mod:`jaxreg.models`, :mod:`jaxreg.data`: the built-in models (linen and NNX) and datasets;
* :mod:`jaxreg.train`: the training engine;
* :mod:`jaxreg.cli`: the ``jaxreg`` command and its plots.

``jaxreg._validate`` (argument checks) sits below them all.
"""

__version__ = "0.1.0"

import sys as _sys

if _sys.argv[:1] == ["-m"]:  # Python locates a ``python -m`` module: jaxreg's command?
    import _jaxreg_command  # the standard library only

    _jaxreg_command.located_by_python_m()  # ``python -m jaxreg``: as the console script

from jaxreg import transforms
from jaxreg.transforms import (
    ReduceOnPlateauState,
    ScheduleState,
    add_l1,
    add_l2,
    batch_scaled_l2,
    batch_scaled_strength,
    data_scaled_l1,
    data_scaled_l2,
    masks,
    penalties,
    proximal_elastic_net,
    proximal_l1,
    raveled,
    reduce_on_plateau,
    scaling,
    schedules,
)

__all__ = [  # transforms.__all__ and the layers
    "ReduceOnPlateauState", "ScheduleState", "add_l1", "add_l2", "batch_scaled_l2",
    "batch_scaled_strength", "batchnorm", "cli", "data", "data_scaled_l1", "data_scaled_l2",
    "masks", "models", "nn", "nnx", "penalties", "proximal_elastic_net", "proximal_l1",
    "raveled", "reduce_on_plateau", "scaling", "schedules", "train", "transforms",
]

# The higher layers are imported on first use (``jaxreg.nn``, ``jaxreg.train``, ...), so that
# the transforms stay light to import (no flax modules, orbax or matplotlib). ``jaxreg.plots``
# is :mod:`jaxreg.cli.plots`.
_LAZY = {"batchnorm": "jaxreg.batchnorm", "nn": "jaxreg.nn", "nnx": "jaxreg.nnx",
         "models": "jaxreg.models", "data": "jaxreg.data", "train": "jaxreg.train",
         "cli": "jaxreg.cli", "plots": "jaxreg.cli.plots"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
