"""jaxreg: regularization and normalization as composable optax/flax building blocks.

Layers, lowest first: transforms (masks, penalties, transforms, proximal, schedules,
plateau) -> nn (flax modules) -> data -> train -> cli. A lower layer never imports a higher one.
"""

__version__ = "0.1.0"

# --- regularization transforms (masks, penalties, transforms, proximal) ---

# --- schedules and plateau ---
from jaxreg import schedules
from jaxreg.plateau import ReduceOnPlateauState, reduce_on_plateau
