"""Argument validation for every layer: one module, one message format.

Every error about a bad argument reads ::

    `<name>` must be <condition>; got <name>=<value>

(:func:`message`), e.g. "`patience` must be an integer >= 0; got patience=-1": the argument
named as the caller wrote it, the condition it breaks, the value received (``repr`` for
strings and containers, ``str`` for numbers and arrays). Errors are raised at construction
time, before any state changes. ``ValueError`` for a bad value, ``TypeError`` for a bad type.

The API, for any layer (this module imports nothing of jaxreg):

* :func:`message` ``(name, condition, value) -> str``: the format itself;
* :func:`require` ``(ok, name, condition, value, error=ValueError)``: raise unless ``ok``;
* :func:`check_real` ``(name, value, *, positive=False) -> float``: finite, >= 0 (> 0), not a
  bool (``TypeError`` for a non-number such as a string);
* :func:`check_int` ``(name, value, minimum, maximum=None, *, exact=False) -> int``: an
  integer in ``[minimum, maximum]`` (not a bool; with ``exact``, of an integer type;
  ``TypeError`` for a non-number);
* :func:`check_seed` ``(name, value) -> int``: a PRNG seed, an integer in ``[0, 2**32)``;
* :func:`check_fraction` ``(name, value, *, closed=False) -> float``: in (0, 1) or [0, 1];
* :func:`check_choice` ``(name, value, choices)``: one of ``choices``;
* :func:`check_bool` ``(name, value) -> bool``: ``True`` or ``False``;
* :func:`check_hyperparam` ``(name, value, *, schedule=True, positive=False, integer=False)``:
  a transform's strength, which may also be an optax schedule or a traced value; a concrete
  one must be representable in the default float dtype (``1e39`` overflows float32).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _show(value: Any) -> str:
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return str(value)
    return repr(value)


def message(name: str, condition: str, value: Any) -> str:
    """The package's one error format: "`name` must be condition; got name=value"."""
    return f"`{name}` must be {condition}; got {name}={_show(value)}"


def require(ok: bool, name: str, condition: str, value: Any, error: type[Exception] = ValueError
            ) -> None:
    """Raises ``error(message(name, condition, value))`` unless ``ok``."""
    if not ok:
        raise error(message(name, condition, value))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_number(name: str, value: Any, kind: str) -> None:
    """TypeError naming ``name`` unless ``value`` is a real scalar (not a string, ``None``...).
    A bool passes here: the callers refuse it with a ``ValueError``."""
    number = isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array))
    require(number and np.ndim(value) == 0, name, kind, value, TypeError)


def _float_max() -> float:
    """Largest finite value of the default float dtype (float32; float64 under x64)."""
    return float(jnp.finfo(jax.dtypes.canonicalize_dtype(jnp.float64)).max)


def check_real(name: str, value: Any, *, positive: bool = False) -> float:
    """Returns ``float(value)``; TypeError unless a real number, ValueError unless finite and
    >= 0 (> 0 if ``positive``); a bool is refused."""
    _check_number(name, value, "a number")
    number = float(value)
    ok = math.isfinite(number) and number >= 0 and not (positive and number == 0)
    require(ok and not isinstance(value, bool), name,
            f"a finite {'positive' if positive else 'non-negative'} number", value)
    return number


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None, *,
              exact: bool = False) -> int:
    """Returns ``int(value)``; TypeError unless a real number, ValueError unless an integer in
    ``[minimum, maximum]`` (no upper bound when ``maximum`` is None). A bool is refused
    (``True`` would pass ``>= 0``); an integral float such as ``2.0`` is accepted unless
    ``exact``, which requires an integer type (TypeError otherwise: for counts that index and
    divide, such as a batch size)."""
    condition = (f"an integer >= {minimum}" if maximum is None
                 else f"an integer in [{minimum}, {maximum}]")
    _check_number(name, value, condition)
    if exact:
        require(isinstance(value, numbers.Integral) and not isinstance(value, bool), name,
                condition, value, TypeError)
    ok = (not isinstance(value, bool) and (exact or float(value).is_integer())
          and minimum <= value and (maximum is None or value <= maximum))
    require(ok, name, condition, value)
    return int(value)


SEED_LIMIT = 2**32
"""Seeds are ``0 <= seed < SEED_LIMIT``: ``jax.random.key`` keeps 32 bits (``2**32`` would be
seed 0 again, ``-1`` seed ``2**32 - 1``; ``2**64`` and more overflow)."""


def check_seed(name: str, value: Any) -> int:
    """Returns ``int(value)``: an integer (of an integer type) in ``[0, 2**32)``."""
    return check_int(name, value, 0, SEED_LIMIT - 1, exact=True)


def check_fraction(name: str, value: Any, *, closed: bool = False) -> float:
    """Returns ``float(value)``; ValueError unless in ``(0, 1)`` (``[0, 1]`` if ``closed``)."""
    condition = "a number in [0, 1]" if closed else "a number in (0, 1)"
    ok = _is_real(value) and (0 <= value <= 1 if closed else 0 < value < 1)
    require(ok, name, condition, value)
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Returns ``value``; ValueError unless it is one of ``choices``."""
    choices = list(choices)
    require(value in choices, name, "one of " + ", ".join(map(repr, choices)), value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """Returns ``value``; ValueError unless it is ``True`` or ``False``."""
    require(isinstance(value, bool), name, "True or False", value)
    return value


def check_hyperparam(name: str, value: Any, *, schedule: bool = True, positive: bool = False,
                     integer: bool = False) -> None:
    """Validate a transform's scalar hyperparameter at construction time.

    Args:
      name: the argument name, used in the error message.
      value: the value given by the user: a number, a 0-d array, a tracer (checked for type
        and shape only) or, when ``schedule``, a callable (an optax schedule, not checked).
      schedule: whether a callable (optax schedule) is allowed.
      positive: require ``value > 0`` instead of ``value >= 0``.
      integer: require an integer (e.g. a number of examples).

    Raises:
      TypeError: not a real scalar (or schedule), or not an integer when ``integer``.
      ValueError: a concrete value that is negative (or zero when ``positive``), NaN or Inf,
        or too large for the default float dtype (``1e39`` is Inf in float32).
    """
    kind = "an integer" if integer else ("a number or a schedule" if schedule else "a number")
    if callable(value):
        require(schedule, name, f"{kind}, not a callable", value, TypeError)
        return
    require(not isinstance(value, bool) and isinstance(
        value, (numbers.Real, np.ndarray, np.generic, jax.Array)), name, kind, value, TypeError)
    dtype = np.dtype(value.dtype) if hasattr(value, "dtype") else np.result_type(value)
    require(jnp.ndim(value) == 0 and dtype.kind in ("iu" if integer else "iuf"),
            name, f"{kind} (a scalar)", value, TypeError)
    if isinstance(value, jax.core.Tracer):
        return
    number = float(value)
    require(math.isfinite(number) and number >= 0 and not (positive and number == 0),
            name, f"finite and {'> 0' if positive else '>= 0'}", value)
    if not integer:
        require(number <= _float_max(), name,
                f"at most {_float_max():.4g}, the default float dtype's largest value (larger "
                "overflows to inf)", value)
