"""Construction-time validation of plain Python hyperparameters (schedules, plateau).

Transforms validate their strengths with :func:`jaxreg.transforms.check_hyperparam`, which also
accepts schedules and traced values; these two are for arguments that are always concrete.
"""
from __future__ import annotations

import math


def check_real(name: str, value: float, *, positive: bool = False) -> float:
    """Returns ``float(value)``; ValueError naming ``name`` if NaN/inf or negative (or zero)."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "positive" if positive else "non-negative"
        raise ValueError(f"`{name}` must be a finite {need} number, got {value}.")
    return value


def check_int(name: str, value: int, minimum: int) -> int:
    """Returns ``int(value)``; ValueError naming ``name`` unless an integer >= ``minimum``."""
    if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)
