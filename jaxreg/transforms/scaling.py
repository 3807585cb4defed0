"""Batch-size scaling rules: a recipe tuned at batch ``B0``, moved to batch ``B = k B0``.

A :class:`Recipe` holds the hyperparameters that depend on the batch size; :func:`scale` maps
it to batch ``B`` by one or more named rules of :data:`RULES` (``name -> rule``), each a pure
function ``rule(recipe, k) -> {field: new value}`` whose docstring states its formula and
source. The rules, their derivations and when each holds are on the documentation page
"Batch-size scaling rules" (``docs/batch_scaling.md``).
"""

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from jaxreg._validate import check_choice, check_int, check_real, require
from jaxreg.transforms.regularizers import batch_scaled_strength

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


def _check_momentum(name: str, value: float | None, context: str = "") -> None:
    if value is not None:
        condition = "a number in [0, 1)" + context
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        require(real, name, condition, value, TypeError)
        require(0.0 <= value < 1.0, name, condition, value)


def _check_count(name: str, value: int | None, minimum: int) -> None:
    if value is not None:
        check_int(name, value, minimum, exact=True)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The batch-size-dependent hyperparameters of a training run, as tuned at ``batch_size``.

    Attributes:
      batch_size: ``B0``, the batch size the recipe was tuned at.
      learning_rate: ``eta > 0``.
      optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"`` (which rules apply).
      l2: coupled L2 strength ``lambda`` (the gradient gains ``lambda w``, :func:`jaxreg.add_l2`).
      weight_decay: AdamW's decoupled weight decay ``lambda``.
      momentum: SGD momentum in ``[0, 1)``, or ``None``.
      b1, b2, eps: Adam's moment decays (in ``[0, 1)``) and ``eps > 0``.
      bn_momentum: BatchNorm's running-statistics momentum in ``[0, 1)``, or ``None``.
      warmup_steps: linear warmup length in steps, ``>= 0``.
      epochs: ``T``, or ``None``.
      num_examples: ``N``, the training-set size, or ``None``.
    """

    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    l2: float = 0.0
    weight_decay: float = 0.0
    momentum: float | None = None
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    bn_momentum: float | None = None
    warmup_steps: int = 0
    epochs: int | None = None
    num_examples: int | None = None

    def __post_init__(self):
        _check_count("batch_size", self.batch_size, 1)
        check_real("learning_rate", self.learning_rate, positive=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_real("l2", self.l2)
        check_real("weight_decay", self.weight_decay)
        for name in ("momentum", "b1", "b2", "bn_momentum"):
            _check_momentum(name, getattr(self, name))
        check_real("eps", self.eps, positive=True)
        _check_count("warmup_steps", self.warmup_steps, 0)
        _check_count("epochs", self.epochs, 1)
        _check_count("num_examples", self.num_examples, 1)


def _needs(recipe: Recipe, rule: str, *, optimizers: Sequence[str] = OPTIMIZERS,
           fields: Sequence[str] = ()) -> None:
    """One line naming ``rule`` if it does not apply to the optimizer or lacks a field."""
    require(recipe.optimizer in optimizers, "rule",
            f"a rule for the recipe's optimizer {recipe.optimizer!r} ({rule!r} applies to "
            + ", ".join(optimizers) + ")", rule)
    for name in fields:
        require(getattr(recipe, name) is not None, name,
                f"set in the recipe: rule {rule!r} needs it", None)


def _warmup(recipe: Recipe, k: float) -> int:
    """Warmup steps that keep the warmup's number of examples: ``ceil(steps / k)``."""
    return math.ceil(recipe.warmup_steps / k)


def none(recipe: Recipe, k: float) -> dict[str, Any]:
    """The baseline: every hyperparameter unchanged (only the batch size moves)."""
    del recipe, k
    return {}


def batch_scaled(recipe: Recipe, k: float) -> dict[str, Any]:
    """Seed 000's ``lambda_b = lambda / b``: ``l2' = l2 / k``.

    The strength ``l2`` tuned at ``B0`` is ``lambda / B0``; at ``B`` it is
    ``batch_scaled_strength(lambda, B) = lambda / B`` (what :func:`jaxreg.batch_scaled_l2`
    applies at each step). Any optimizer.
    """
    lam = recipe.l2 * recipe.batch_size
    return {"l2": batch_scaled_strength(lam, k * recipe.batch_size)}


def linear(recipe: Recipe, k: float) -> dict[str, Any]:
    """Linear scaling for SGD (Goyal et al. 2017, arXiv:1706.02677): ``eta' = k eta``.

    With the gradual warmup kept at the same number of examples, ``warmup' = ceil(warmup /
    k)`` steps (Goyal et al. warm up for 5 epochs: ``warmup_steps = 5 N / B0``); momentum and
    L2 unchanged. SGD only (``"sgd"``, ``"momentum"``).
    """
    _needs(recipe, "linear", optimizers=("sgd", "momentum"))
    return {"learning_rate": k * recipe.learning_rate, "warmup_steps": _warmup(recipe, k)}


def sqrt(recipe: Recipe, k: float) -> dict[str, Any]:
    """Square-root scaling for Adam, the SDE rule (Malladi et al. 2022, arXiv:2205.10287).

    ``eta' = sqrt(k) eta``, ``1 - b1' = k (1 - b1)``, ``1 - b2' = k (1 - b2)``,
    ``eps' = eps / sqrt(k)``; the warmup keeps its number of examples, as in :func:`linear`.
    Adam and AdamW only. Raises ``ValueError`` naming ``b1`` (``b2``) when ``k`` pushes it
    out of ``[0, 1)`` (``k > 1 / (1 - b1)``).
    """
    _needs(recipe, "sqrt", optimizers=("adam", "adamw"))
    b1, b2 = 1 - k * (1 - recipe.b1), 1 - k * (1 - recipe.b2)
    context = f" after the sqrt rule at k = {k:g} (1 - b' = k (1 - b))"
    _check_momentum("b1", b1, context)
    _check_momentum("b2", b2, context)
    return {"learning_rate": math.sqrt(k) * recipe.learning_rate, "b1": b1, "b2": b2,
            "eps": recipe.eps / math.sqrt(k), "warmup_steps": _warmup(recipe, k)}


def sqrt_lr(recipe: Recipe, k: float) -> dict[str, Any]:
    """Square-root learning-rate scaling alone (Krizhevsky 2014, arXiv:1404.5997; Hoffer et
    al. 2017, arXiv:1705.08741): ``eta' = sqrt(k) eta``, the momenta and ``eps`` unchanged,
    the warmup kept at its number of examples as in :func:`linear`.

    Keeps the update's noise (``eta / sqrt(B)``) constant. Any optimizer, at any ``k``: where
    :func:`sqrt` cannot go (``k > 1 / (1 - b1)``) this still applies.
    """
    return {"learning_rate": math.sqrt(k) * recipe.learning_rate,
            "warmup_steps": _warmup(recipe, k)}


def normalized_weight_decay(recipe: Recipe, k: float) -> dict[str, Any]:
    """AdamW's normalized weight decay (Loshchilov & Hutter 2019, arXiv:1711.05101).

    ``lambda = lambda_norm sqrt(b / (N T))``, with ``lambda_norm`` fixed by the reference
    (``b = B0``), so ``weight_decay' = weight_decay sqrt(k)`` at equal ``N`` and ``T``. AdamW
    only; needs ``num_examples`` (``N``) and ``epochs`` (``T``).
    """
    _needs(recipe, "normalized_weight_decay", optimizers=("adamw",),
           fields=("num_examples", "epochs"))
    n_t = recipe.num_examples * recipe.epochs  # type: ignore[operator]  # checked by _needs
    lam_norm = recipe.weight_decay / math.sqrt(recipe.batch_size / n_t)
    return {"weight_decay": lam_norm * math.sqrt(k * recipe.batch_size / n_t)}


def timescale(recipe: Recipe, k: float) -> dict[str, Any]:
    """The AdamW timescale rule (Wang & Aitchison 2024, arXiv:2405.13698).

    Keeps ``tau_epoch = B / (eta lambda N)`` (the EMA timescale of AdamW's weights, in
    epochs) constant at an unchanged ``eta``: ``weight_decay' = B' / (eta tau_epoch N) =
    k weight_decay``. AdamW only; needs ``num_examples`` (``N``) and ``weight_decay > 0``.
    """
    _needs(recipe, "timescale", optimizers=("adamw",), fields=("num_examples",))
    require(recipe.weight_decay > 0, "weight_decay", "> 0 for rule 'timescale' (tau_epoch = "
            "B / (eta lambda N) is infinite)", recipe.weight_decay)
    n, eta = recipe.num_examples, recipe.learning_rate
    tau_epoch = recipe.batch_size / (eta * recipe.weight_decay * n)  # type: ignore[operator]
    return {"weight_decay": k * recipe.batch_size / (eta * tau_epoch * n)}  # type: ignore[operator]


def ema(recipe: Recipe, k: float) -> dict[str, Any]:
    """The EMA scaling rule (Busbridge et al. 2023, arXiv:2307.13813): ``rho' = rho^k``.

    For BatchNorm's running statistics (``bn_momentum``; any parameter EMA alike): ``k``
    steps at ``B0`` average as one step at ``k B0``. Any optimizer; needs ``bn_momentum``.
    """
    _needs(recipe, "ema", fields=("bn_momentum",))
    return {"bn_momentum": recipe.bn_momentum ** k}  # type: ignore[operator]  # checked


RULES: dict[str, Callable[[Recipe, float], dict[str, Any]]] = {
    "none": none, "batch_scaled": batch_scaled, "linear": linear, "sqrt": sqrt, "sqrt_lr": sqrt_lr,
    "normalized_weight_decay": normalized_weight_decay, "timescale": timescale, "ema": ema,
}
"""Rule name -> ``rule(recipe, k) -> {field: new value}``, for :func:`scale` and the CLI."""


def scale(recipe: Recipe, batch_size: int, rule: str | Sequence[str] = "none") -> Recipe:
    """``recipe`` moved to batch ``B = batch_size = k B0`` by the named rule(s).

    Args:
      recipe: the reference :class:`Recipe`, tuned at ``B0 = recipe.batch_size``.
      batch_size: ``B``, a positive integer.
      rule: a name of :data:`RULES`, or several applied together (``("sqrt", "ema")``); each
        sees the reference recipe, and no two may set the same field.

    Returns:
      A new :class:`Recipe` with ``batch_size = B`` and the rules' fields changed.

    Examples:
      >>> import jaxreg
      >>> ref = jaxreg.scaling.Recipe(batch_size=128, learning_rate=1e-3, bn_momentum=0.99)
      >>> new = jaxreg.scaling.scale(ref, 512, ("sqrt", "ema"))
      >>> new.learning_rate, round(new.b1, 6), round(new.b2, 6), round(new.bn_momentum, 6)
      (0.002, 0.6, 0.996, 0.960596)
    """
    check_int("batch_size", batch_size, 1, exact=True)
    names = [rule] if isinstance(rule, str) else list(rule)
    require(bool(names), "rule", "a rule name or a non-empty sequence of them", rule)
    k = batch_size / recipe.batch_size
    changes: dict[str, Any] = {}
    for name in names:
        check_choice("rule", name, RULES)
        for field, value in RULES[name](recipe, k).items():
            require(field not in changes, "rule", f"rules that set different fields ({field!r} "
                    "is set twice)", rule)
            changes[field] = value
    return dataclasses.replace(recipe, batch_size=batch_size, **changes)
