"""A sweep's settings: the :class:`Setting` schema (defined once), expansion of a grid or list
into settings, and the grouping of settings that share a compiled program."""
from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, cast

from jaxreg._validate import (
    SEED_LIMIT,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_real,
    require,
)
from jaxreg.train import config as run_config
from jaxreg.train.config import OptimizerConfig, RunConfig
from jaxreg.train.optimizer import OPTIMIZERS, SCHEDULES


def _described(cls: type, name: str) -> Any:
    """The run description's field ``name`` of ``cls`` (:mod:`jaxreg.train.config`) as a
    setting field: its default, bounds and whether a sweep vmaps it."""
    f = run_config.field(cls, name)
    return dataclasses.field(default=f.default, metadata={
        **f.metadata, "vmapped": f.metadata["sweep"] == "vmapped", "described": f})


def _static(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"vmapped": False})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a sweep: its hyperparameters (meanings as in
    :func:`jaxreg.train.make_optimizer`), validated on construction (ValueError naming the
    field and value).

    The fields shared with a run take their defaults and bounds from the run description
    (:mod:`jaxreg.train.config`). A field's ``metadata["vmapped"]`` says where it lives:
    *vmapped* fields (``learning_rate``, ``l2``, ``l1``, ``batch_scaled``, ``seed``) are values
    in the stacked state, so any mix shares one program; *static* fields (``batch_size``,
    ``optimizer``, ``schedule``, ``schedule_kwargs``, ``proximal``, ``bn_momentum``,
    ``scaling``, ``scale_from``, ``warmup_steps``) are baked into the program, and each
    distinct combination is its own group (:func:`group_key`). ``bn_momentum=None`` keeps the
    model's own; ``schedule_kwargs`` is stored as sorted ``(name, value)`` pairs (hashable).
    With ``scaling`` (rule names of :data:`jaxreg.scaling.RULES`, comma-separated) the
    hyperparameters are those tuned at batch ``scale_from`` (``B0``), moved to ``batch_size``
    as :func:`jaxreg.train.fit` moves them.
    """

    learning_rate: float = _described(OptimizerConfig, "learning_rate")
    l2: float = _described(OptimizerConfig, "l2")
    l1: float = _described(OptimizerConfig, "l1")
    batch_scaled: bool = _described(OptimizerConfig, "batch_scaled")
    seed: int = _described(RunConfig, "seed")
    batch_size: int = _described(RunConfig, "batch_size")
    optimizer: str = _described(OptimizerConfig, "name")
    schedule: str = _described(OptimizerConfig, "schedule")
    schedule_kwargs: tuple[tuple[str, Any], ...] = _static(())
    proximal: bool = _described(OptimizerConfig, "proximal")
    bn_momentum: float | None = _static(None)
    scaling: str | None = _described(OptimizerConfig, "scaling")
    scale_from: int | None = _described(OptimizerConfig, "scale_from")
    warmup_steps: int = _described(OptimizerConfig, "warmup_steps")

    def __post_init__(self):
        for name in ("learning_rate", "l2", "l1"):
            value = getattr(self, name)
            # exactly a real number: check_real alone would take True (1.0) or "0.1"
            require(isinstance(value, numbers.Real) and not isinstance(value, bool), name,
                    "a finite positive number" if name == "learning_rate"
                    else "a finite non-negative number", value)
            check_real(name, value, positive=name == "learning_rate")
        check_bool("batch_scaled", self.batch_scaled)
        check_bool("proximal", self.proximal)
        for name, minimum, maximum in (("seed", 0, SEED_LIMIT - 1), ("batch_size", 1, None)):
            value = getattr(self, name)
            # exactly an integer: check_int alone would take 2.0
            require(isinstance(value, numbers.Integral), name, f"an integer >= {minimum}", value)
            check_int(name, value, minimum, maximum)  # seeds: 32 bits, as fit's
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        kwargs = self.schedule_kwargs
        require(isinstance(kwargs, (Mapping, tuple)), "schedule_kwargs", "a dict", kwargs)
        object.__setattr__(self, "schedule_kwargs", tuple(sorted(dict(kwargs).items())))
        if self.bn_momentum is not None:
            check_fraction("bn_momentum", self.bn_momentum, closed=True)
        for f in dataclasses.fields(self):  # the run description's bounds
            if "described" in f.metadata:
                run_config.check(f.metadata["described"], getattr(self, f.name), f.name)
        run_config.check_scaling(self.scaling, self.scale_from)

    @property
    def vmapped_learning_rate(self) -> bool:
        """Whether the learning rate is a value in the stacked state (``schedule="fixed"``, no
        warmup); else it is in the chain's closure and part of :func:`group_key`."""
        return self.schedule == "fixed" and not self.warmup_steps

    @classmethod
    def fields(cls, vmapped: bool | None = None) -> tuple[str, ...]:
        """The field names, in order; only the vmapped (or static) ones when given."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if vmapped is None or f.metadata["vmapped"] == vmapped)

    @classmethod
    def from_mapping(cls, setting: Mapping[str, Any]) -> Setting:
        """``Setting(**setting)``, with a ValueError naming an unknown key."""
        known = cls.fields()
        for key, value in setting.items():
            require(key in known, key, f"a sweep setting key (one of {', '.join(known)})", value)
        return cls(**setting)

    def as_dict(self) -> dict[str, Any]:
        """Every field by name, ``schedule_kwargs`` as a dict."""
        return {**dataclasses.asdict(self), "schedule_kwargs": dict(self.schedule_kwargs)}

    # A setting also reads like the dict of its fields: ``setting["l2"]``, ``{**setting}``.
    def keys(self) -> tuple[str, ...]:
        return self.fields()

    def __getitem__(self, name: str) -> Any:
        if name not in self.fields():
            raise KeyError(name)
        return getattr(self, name)


def expand(settings_or_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
           seeds: int | Sequence[int] = 1, **defaults: Any) -> list[Setting]:
    """The list of settings a sweep trains.

    A grid (dict of non-empty lists) gives the cartesian product of its lists, in
    ``itertools.product`` order (the last key varies fastest); a list of dicts is taken as is.
    Settings without a ``seed`` are crossed with ``seeds`` (``n``: seeds ``0..n-1``; or a list);
    fields a setting leaves out take their value from ``defaults``, then from :class:`Setting`.

    Raises:
        ValueError: empty grid, list or value list; unknown key; bad value (negative lambda,
            non-positive learning rate, ...). The message names the key and value.
    """
    if isinstance(settings_or_grid, Mapping):
        if not settings_or_grid:
            raise ValueError("empty sweep grid: give at least one key with a list of values")
        for key, values in settings_or_grid.items():
            if (
                isinstance(values, (str, bytes, Mapping))
                or not isinstance(values, Sequence)
                or not values
            ):
                raise ValueError(
                    f"sweep grid key {key!r} needs a non-empty list of values; got {values!r}"
                )
        keys = list(settings_or_grid)
        combos = itertools.product(*settings_or_grid.values())
        settings = [dict(zip(keys, combo, strict=True)) for combo in combos]
    else:
        settings = [dict(s) for s in settings_or_grid]
        if not settings:
            raise ValueError("empty list of sweep settings")
    seed_list = (list(range(seeds)) if isinstance(seeds, numbers.Integral)
                 else list(cast(Sequence[int], seeds)))
    if not seed_list:
        raise ValueError(f"sweep seeds must be a positive count or a non-empty list; got {seeds!r}")
    return [Setting.from_mapping({**defaults, **setting, "seed": seed})
            for setting in settings
            for seed in ([setting["seed"]] if "seed" in setting else seed_list)]


def group_key(setting: Setting | Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The static part of ``setting`` as ``(name, value)`` pairs: settings with equal keys
    share a compiled program. With a schedule other than ``fixed`` or a warmup the learning rate
    is static too (a schedule is a Python closure over ``eta_0``)."""
    if not isinstance(setting, Setting):
        setting = Setting.from_mapping(setting)
    key = {name: getattr(setting, name) for name in Setting.fields(vmapped=False)}
    if not setting.vmapped_learning_rate:
        key["learning_rate"] = setting.learning_rate
    return tuple(key.items())


def group(settings: Sequence[Setting]) -> dict[tuple, list[int]]:
    """``group_key -> indices`` of the settings with that key, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, setting in enumerate(settings):
        groups.setdefault(group_key(setting), []).append(i)
    return groups
