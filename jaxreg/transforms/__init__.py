"""The optax layer: regularization as composable :mod:`optax` gradient transformations.

Modules, lowest first: ``masks`` (which leaves are regularized) -> ``penalties`` (the penalty
values, for the loss side) -> ``regularizers`` (``add_l2``, ``add_l1``, ``batch_scaled_l2``,
``data_scaled_l1/l2``: a penalty's gradient added to the update) -> ``proximal`` (proximal
steps, exact zeros) -> ``schedules`` (learning-rate and batch-size schedules) -> ``plateau``
(``reduce_on_plateau``); ``scaling`` (batch-size scaling rules for a recipe's hyperparameters,
pure arithmetic); ``ravel`` (``raveled``: a chain run over per-dtype buffers, for many leaves).
``_leafwise`` is the per-leaf map every transform is built on.
Everything here depends only on jax, optax and numpy; :mod:`jaxreg` re-exports it.
"""
from jaxreg.transforms import masks, penalties, scaling, schedules
from jaxreg.transforms._leafwise import ScheduleState
from jaxreg.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from jaxreg.transforms.proximal import proximal_elastic_net, proximal_l1
from jaxreg.transforms.ravel import raveled
from jaxreg.transforms.regularizers import (
    add_l1,
    add_l2,
    batch_scaled_l2,
    batch_scaled_strength,
    data_scaled_l1,
    data_scaled_l2,
)

__all__ = [
    "ReduceOnPlateauState", "ScheduleState", "add_l1", "add_l2", "batch_scaled_l2",
    "batch_scaled_strength", "data_scaled_l1", "data_scaled_l2", "masks", "penalties",
    "proximal_elastic_net", "proximal_l1", "raveled", "reduce_on_plateau", "scaling",
    "schedules",
]
