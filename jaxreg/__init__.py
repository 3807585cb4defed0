"""jaxreg: regularization and normalization as composable optax/flax building blocks.

Layers, lowest first: transforms (masks, penalties, transforms, proximal, schedules,
plateau) -> nn (flax modules) -> data -> train -> cli. A lower layer never imports a higher one.
"""

__version__ = "0.1.0"

# --- regularization transforms (masks, penalties, transforms, proximal) ---
from jaxreg import masks, penalties
from jaxreg.proximal import proximal_elastic_net, proximal_l1
from jaxreg.transforms import (ScheduleState, add_l1, add_l2, batch_scaled_l2, data_scaled_l1,
                               data_scaled_l2)

# --- schedules and plateau ---
from jaxreg import schedules
from jaxreg.plateau import ReduceOnPlateauState, reduce_on_plateau

# --- higher layers, imported on first use (``jaxreg.nn``, ``jaxreg.train``, ...) so that the
# transforms stay light to import (no flax modules, orbax or matplotlib) ---
_SUBPACKAGES = ("nn", "nnx", "data", "models", "train", "plots")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"jaxreg.{name}")
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
