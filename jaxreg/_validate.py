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
      ValueError: a concrete value that is negative (or zero when ``positive``), NaN or Inf.
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


def message(name: str, condition: str, value: Any) -> str:
    """```name` must be condition; got name=value``: the format of every argument error."""
    shown = str(value) if isinstance(value, (jax.Array, np.ndarray, np.generic)) else repr(value)
    return f"`{name}` must be {condition}; got {name}={shown}"


def require(ok: bool, name: str, condition: str, value: Any,
            error: type[Exception] = ValueError) -> None:
    """Raises ``error(message(name, condition, value))`` unless ``ok``."""
    if not ok:
        raise error(message(name, condition, value))


def check_integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Returns ``value``, an ``int`` (any integral type, not a bool or a float) in
    ``[minimum, maximum]``; TypeError for another type, ValueError for a value out of range."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    require(integral, name, f"an integer {bounds}", value, TypeError)
    require(minimum <= value and (maximum is None or value <= maximum), name,
            f"an integer {bounds}", value)
    return int(value)


SEED_LIMIT = 2**32
"""Seeds are ``0 <= seed < SEED_LIMIT``: ``jax.random.key`` keeps 32 bits (``2**32`` would
be seed 0 again, ``-1`` seed ``2**32 - 1``; 2**64 and more overflow)."""


def check_seed(name: str, value: Any) -> int:
    """Returns ``int(value)``; TypeError/ValueError unless an integer in ``[0, 2**32)``."""
    return check_integer(name, value, 0, SEED_LIMIT - 1)
