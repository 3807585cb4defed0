"""Argument validation shared by every layer (the lowest module of the package).

``check_hyperparam`` validates a transform's strength (a number, a schedule or a traced value);
``check_real`` and ``check_int`` validate plain Python arguments that are always concrete.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _check_number(name: str, value: Any, kind: str) -> None:
    """TypeError naming ``name`` unless ``value`` is a real number (not a bool, a string...)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, np.generic,
                                                         jax.Array)) or np.ndim(value) != 0:
        raise TypeError(f"`{name}` must be {kind}; got {type(value).__name__}: {value!r}")


def _float_max() -> float:
    """Largest finite value of the default float dtype (float32; float64 under x64)."""
    return float(jnp.finfo(jax.dtypes.canonicalize_dtype(jnp.float64)).max)


def check_real(name: str, value: float, *, positive: bool = False) -> float:
    """Returns ``float(value)``; TypeError naming ``name`` if not a real number, ValueError if
    NaN/inf or negative (or zero)."""
    _check_number(name, value, "a number")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "positive" if positive else "non-negative"
        raise ValueError(f"`{name}` must be a finite {need} number, got {value}.")
    return value


def check_int(name: str, value: int, minimum: int) -> int:
    """Returns ``int(value)``; TypeError naming ``name`` if not a number, ValueError unless an
    integer >= ``minimum``."""
    _check_number(name, value, f"an integer >= {minimum}")
    number = float(value)
    if not math.isfinite(number) or not number.is_integer() or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)


def check_hyperparam(name: str, value: Any, *, schedule: bool = True, positive: bool = False,
                     integer: bool = False) -> None:
    """Validate a scalar hyperparameter at construction time.

    Args:
      name: the argument name, used in the error message.
      value: the value given by the user.
      schedule: whether a callable (optax schedule) is allowed.
      positive: require ``value > 0`` instead of ``value >= 0``.
      integer: require an integer (e.g. a number of examples).

    Raises:
      TypeError: not a real scalar (or schedule), or not an integer when ``integer``.
      ValueError: a concrete value that is negative (or zero when ``positive``), NaN or Inf,
        or too large for the default float dtype (``1e39`` is Inf in float32).
    """
    if callable(value):
        if schedule:
            return
        raise TypeError(f"`{name}` must be a number, not a callable: got {value!r}")
    kind = "an integer" if integer else ("a number or a schedule" if schedule else "a number")
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, np.generic,
                                                         jax.Array)):
        raise TypeError(f"`{name}` must be {kind}; got {type(value).__name__}: {value!r}")
    dtype = np.dtype(value.dtype) if hasattr(value, "dtype") else np.result_type(value)
    if jnp.ndim(value) != 0 or dtype.kind not in ("iu" if integer else "iuf"):
        raise TypeError(f"`{name}` must be {kind} (a scalar); got {value!r}")
    if isinstance(value, jax.core.Tracer):
        return
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be finite and {bound}; got {name}={value}")
    if not integer and number > _float_max():
        raise ValueError(f"`{name}` overflows the default float dtype (max {_float_max():.4g}); "
                         f"got {name}={value}")
