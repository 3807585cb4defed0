"""The run description: :class:`RunConfig` and its :class:`OptimizerConfig`, one home for a
run's settings.

Each field's metadata (:func:`option`) carries its default (the field's), ``help``, ``kind``
and bounds (``low``/``high``, ``open``: which ends are excluded) or ``choices``, the command-line
``flag`` (``None``: none), whether a sweep vmaps it or groups by it (``sweep``: ``"vmapped"`` /
``"static"``) and whether ``--resume`` may change it (``resumable``). ``jaxreg train``'s flags,
``config.json`` (written by :meth:`RunConfig.to_dict`, read back by :meth:`RunConfig.from_dict`
with every value checked as a flag is), the resume rules and :class:`jaxreg.train.Setting`
derive from it; :meth:`OptimizerConfig.kwargs` are :func:`jaxreg.train.make_optimizer`'s
keyword arguments, whose defaults are the description's. Bounds are what the engine can
represent: a run's steps fit the int32 step counter (:data:`STEP_LIMIT`), strengths and learning
rates are finite float32 numbers, a poly schedule's power keeps it finite.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxreg import models
from jaxreg._validate import SEED_LIMIT, message
from jaxreg.data import DATASETS
from jaxreg.train import batching
from jaxreg.train.optimizer import OPTIMIZERS, POLY_POWER, SCHEDULE_FORMULAS, SCHEDULES
from jaxreg.transforms.scaling import RULES

STEP_LIMIT = 2**31 - 1
"""Most steps a run can take: the state's step counter is an int32."""
FLOAT_LIMIT = float(np.finfo(np.float32).max)
"""Largest strength or learning rate: parameters and optimizer states are float32."""
POWER_LIMIT = 100.0
"""Largest power of ``schedule="poly"``: ``(1 - t/T)^a`` of a float32 ``t/T`` stays a normal
float32 number (``a = 1e308`` gave overflow warnings and a learning rate of exactly 0)."""

ADAM_STRENGTH_LIMIT = float(np.sqrt(FLOAT_LIMIT) / 16)
"""Largest ``l2``/``l1``/``weight_decay``: a penalty gradient ``l2 w`` for ``|w|`` up to 16
whose square (Adam's second moment) is a finite float32 (``1e23`` overflowed it: every step
skipped, nothing trained)."""


def option(default: Any, help: str, kind: type, *, low: float | None = None,
           high: float | None = None, open: str = "", choices: Any = None,
           flag: str | None = "", sweep: str | None = None, resumable: bool = False) -> Any:
    """A dataclass field of the run description with its metadata (see the module docstring);
    ``flag=""`` spells the field's own name as a flag (``--batch-size`` for ``batch_size``)."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, kind=kind, low=low, high=high, open=open, choices=choices, flag=flag,
        sweep=sweep, resumable=resumable))


def flag_name(field: dataclasses.Field) -> str | None:
    """The field's command-line flag, without ``--`` (``None``: it has none)."""
    flag = field.metadata.get("flag")
    return field.name.replace("_", "-") if flag == "" else flag


def condition(field: dataclasses.Field) -> str:
    """What a value of ``field`` must be, in words ("a positive integer", "a number in [0, 1)")."""
    m = field.metadata
    low, high, exclusive = m["low"], m["high"], m["open"]
    if m["choices"] is not None:
        return "one of " + ", ".join(map(repr, m["choices"]))
    if m["kind"] is bool:
        return "true or false"
    if m["kind"] is str:
        return "a string"
    if m["kind"] is int:
        if low == 1:
            return "a positive integer" + ("" if high is None else f" up to {high}")
        return f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if high is not None and high <= 1:
        return (f"a number in {'(' if 'low' in exclusive else '['}{low:g}, "
                f"{high:g}{')' if 'high' in exclusive else ']'}")
    words = "a positive number" if "low" in exclusive else f"a number >= {low:g}"
    return words + ("" if high is None else f" up to {high:.4g}")


def check(field: dataclasses.Field, value: Any, name: str | None = None) -> Any:
    """``value`` if it is a valid ``field`` value (``None`` for an optional field), else
    ValueError naming ``name`` (default the field's) and the value."""
    m, name = field.metadata, name or field.name
    if value is None and field.default is None:
        return None
    kind = m["kind"]
    number = {int: numbers.Integral, float: numbers.Real}.get(kind)  # float: ints too
    ok = (isinstance(value, kind) if number is None
          else isinstance(value, number) and not isinstance(value, bool))
    if ok and m["choices"] is not None:
        ok = value in m["choices"]
    elif ok and kind in (int, float):
        low, high, exclusive = m["low"], m["high"], m["open"]
        ok = ((low is None or (value > low if "low" in exclusive else value >= low))
              and (high is None or (value < high if "high" in exclusive else value <= high)))
    if not ok:
        raise ValueError(message(name, condition(field), value))
    return float(value) if kind is float else int(value) if kind is int else value


def check_scaling(scaling: str | None, scale_from: int | None) -> None:
    """ValueError naming ``scaling`` unless it is ``None`` or rule names of
    :data:`jaxreg.scaling.RULES` separated by commas, or naming ``scale_from`` unless it is
    given with ``scaling`` (and only with it)."""
    if scaling is not None:
        for rule in scaling.split(","):
            if rule not in RULES:
                raise ValueError(message("scaling", "rule names separated by commas, each one "
                                         "of " + ", ".join(RULES), scaling))
    if (scaling is None) != (scale_from is None):
        raise ValueError(message("scale_from", "given with scaling (and only with it)",
                                 scale_from))


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_all(obj: Any) -> None:
    """Checks every described field of the dataclass ``obj`` (ValueError naming it)."""
    for f in dataclasses.fields(obj):
        if "kind" in f.metadata:
            object.__setattr__(obj, f.name, check(f, getattr(obj, f.name)))


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """A run's optimizer: :func:`jaxreg.train.make_optimizer`'s settings (checked when
    constructed). :meth:`kwargs` are that function's keyword arguments."""

    name: str = option("adam", "momentum is SGD with momentum 0.9", str,
                       choices=tuple(sorted(OPTIMIZERS)), flag="optimizer", sweep="static")
    learning_rate: float = option(1e-3, "(initial) learning rate", float, low=0.0,
                                  high=FLOAT_LIMIT, open="low", flag="lr", sweep="vmapped")
    schedule: str = option("fixed", "learning rate at step t of the run's T steps: " + "; ".join(
        f"{k}: {v}" for k, v in SCHEDULE_FORMULAS.items()), str, choices=SCHEDULES,
                           sweep="static")
    lr_power: float | None = option(None, f"the power a of --schedule poly (default: "
                                          f"{POLY_POWER}); only with --schedule poly", float,
                                    low=0.0, high=POWER_LIMIT, open="low")
    l2: float = option(0.0, "L2 strength on kernels, penalty LAMBDA/2 ||w||^2", float, low=0.0,
                       high=ADAM_STRENGTH_LIMIT, sweep="vmapped")
    batch_scaled: bool = option(False, "divide the L2 strength by the batch size at each step, "
                                       "LAMBDA/B", bool, sweep="vmapped")
    l1: float = option(0.0, "L1 strength on kernels, penalty LAMBDA ||w||_1", float, low=0.0,
                       high=ADAM_STRENGTH_LIMIT, sweep="vmapped")
    proximal: bool = option(False, "with --l1: apply L1 as a proximal soft-thresholding step "
                                   "(exact zeros) instead of a subgradient", bool, sweep="static")
    plateau: bool = option(False, "reduce the learning rate when val_loss stops improving", bool)
    plateau_factor: float = option(0.5, "with --plateau: multiply the learning rate by F", float,
                                   low=0.0, high=1.0, open="low high")
    plateau_patience: int = option(2, "with --plateau: after N epochs without improvement", int,
                                   low=1, high=STEP_LIMIT)
    weight_decay: float | None = option(
        None, "adamw's decoupled weight decay, on kernels only like the penalties (default: "
              "optax's 1e-4); only with --optimizer adamw", float, low=0.0,
        high=ADAM_STRENGTH_LIMIT)
    scaling: str | None = option(
        None, "RULE[,RULE]: move the hyperparameters tuned at batch --scale-from to --batch-size "
              "(and along --batch-size-schedule): " + ", ".join(RULES) + " (docs: Batch-size "
              "scaling rules); the resolved values are printed and written to config.json", str,
        sweep="static")
    scale_from: int | None = option(None, "B0, the batch size the hyperparameters were tuned "
                                          "at; with --scaling", int, low=1, sweep="static")
    warmup_steps: int = option(0, "linear warmup: the learning rate (any --schedule) times "
                                  "min(1, (t+1)/W) at step t; with --scaling, W at --scale-from, "
                                  "moved by the rule; 0: none", int, low=0, high=STEP_LIMIT,
                               sweep="static")

    def __post_init__(self) -> None:
        _check_all(self)
        check_scaling(self.scaling, self.scale_from)

    def kwargs(self) -> dict[str, Any]:
        """:func:`jaxreg.train.make_optimizer`'s keyword arguments (``config.json``'s
        ``optimizer``): ``plateau`` as ``dict(factor, patience)`` or ``None``; ``weight_decay``,
        ``warmup_steps`` (when > 0) and ``schedule_kwargs`` (``power``, with ``schedule="poly"``)
        only when they apply."""
        kwargs: dict[str, Any] = dict(
            name=self.name, learning_rate=self.learning_rate, schedule=self.schedule, l2=self.l2,
            l1=self.l1, batch_scaled=self.batch_scaled, proximal=self.proximal,
            plateau=(dict(factor=self.plateau_factor, patience=self.plateau_patience)
                     if self.plateau else None))
        if self.weight_decay is not None:
            kwargs["weight_decay"] = self.weight_decay
        if self.warmup_steps:
            kwargs["warmup_steps"] = self.warmup_steps
        if self.schedule == "poly":
            kwargs["schedule_kwargs"] = {"power": POLY_POWER if self.lr_power is None
                                         else self.lr_power}
        if self.scaling is not None:
            kwargs.update(scaling=self.scaling.split(","), scale_from=self.scale_from)
        return kwargs

    @classmethod
    def from_kwargs(cls, kwargs: Any, name: str = "optimizer") -> OptimizerConfig:
        """The inverse of :meth:`kwargs` (keys left out take their defaults); ValueError naming
        ``name.<key>`` for an unknown key or a bad value."""
        _require_mapping(kwargs, name)
        kwargs = dict(kwargs)
        plateau = kwargs.pop("plateau", None)
        schedule_kwargs = kwargs.pop("schedule_kwargs", None)
        flat = dict(kwargs, plateau=plateau is not None)
        if isinstance(flat.get("scaling"), list):
            flat["scaling"] = ",".join(map(str, flat["scaling"]))
        if plateau is not None:
            _require_mapping(plateau, f"{name}.plateau", ("factor", "patience"))
            flat.update(plateau_factor=plateau["factor"], plateau_patience=plateau["patience"])
        if schedule_kwargs is not None:
            _require_mapping(schedule_kwargs, f"{name}.schedule_kwargs", ("power",))
            flat["lr_power"] = schedule_kwargs["power"]
        return _construct(cls, flat, name)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run: its data, model, length, seed and :class:`OptimizerConfig` (checked when
    constructed). ``config.json`` is :meth:`to_dict`; the data fields after ``dataset``
    (``fingerprint``, ``input_shape``, ``num_classes``) record the data the run trained on."""

    dataset: str | None = option(None, "default: fashion-mnist if its files are found locally "
                                       "(never downloaded by default), else digits; stdout says "
                                       "which and why", str, choices=DATASETS)
    data_dir: str | None = option(None, "directory holding the IDX files", str, flag=None,
                                  resumable=True)
    fingerprint: str | None = option(None, "sha256 of the training data", str, flag=None)
    input_shape: list | None = option(None, "the shape of one example", list, flag=None)
    num_classes: int | None = option(None, "classes of the labels", int, low=1, flag=None)
    model: str = option("seed-mlp", "seed-mlp: Dense(50)+BN+Dense; keras-mlp: Dense(128)+BN, "
                                    "Dense(64)+BN; small-cnn: 2 conv blocks + Dense(128); linear",
                        str, choices=tuple(models.MODELS))
    api: str = option("linen", "the model's flax API: linen, or nnx (jaxreg.models.nnx, "
                               "the same architecture as an nnx.Module)", str,
                      choices=("linen", "nnx"))
    epochs: int = option(10, "training epochs; with --resume, more epochs train a run further",
                         int, low=1, high=STEP_LIMIT, resumable=True)
    batch_size: int = option(128, "examples per step; the last partial batch is dropped", int,
                             low=1, sweep="static")
    batch_size_schedule: str | None = option(
        None, "change the batch size at epoch boundaries, EPOCH:B,... (5:256,8:512: 256 from "
              "epoch 5, 512 from epoch 8; --batch-size is epoch 0's)", str)
    seed: int = option(0, "initialization and data-order seed, 0 to 2**32 - 1", int, low=0,
                       high=SEED_LIMIT - 1, sweep="vmapped")
    validation_split: float = option(0.0, "hold out the last fraction F of the training split "
                                          "for val_* metrics", float, low=0.0, high=1.0,
                                     open="high")
    checkpoint_every: int = option(1, "checkpoint every N epochs (and after the last)", int,
                                   low=1, high=STEP_LIMIT, resumable=True)
    deterministic: bool = option(False, "trained under jaxreg --deterministic (XLA's "
                                        "deterministic GPU kernels)", bool, flag=None,
                                 resumable=True)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        _check_all(self)
        if self.batch_size_schedule is not None:
            batching.parse(self.batch_size_schedule)
        if self.input_shape is not None:
            for dim in self.input_shape:
                if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                    raise ValueError(message("input_shape", "a list of positive integers",
                                             self.input_shape))

    def batch_sizes(self) -> int | dict[int, int]:
        """:func:`jaxreg.train.fit`'s ``batch_size``: ``batch_size``, or with
        ``batch_size_schedule`` the boundaries ``{0: batch_size, epoch: size, ...}``."""
        if self.batch_size_schedule is None:
            return self.batch_size
        return {0: self.batch_size, **batching.parse(self.batch_size_schedule)}

    def to_dict(self) -> dict[str, Any]:
        """``config.json``'s contents: every field, ``optimizer`` as
        :meth:`OptimizerConfig.kwargs`."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "optimizer": self.optimizer.kwargs()}

    @classmethod
    def from_dict(cls, config: Any, source: str = "config", *,
                  required: tuple[str, ...] = ()) -> RunConfig:
        """The run ``config`` (a :meth:`to_dict`), every value checked; ValueError
        ``"<source>: <message naming the key>"`` for a bad value, an unknown key, or a missing
        one of ``required`` (and of ``optimizer``'s)."""
        try:
            _require_mapping(config, "config")
            config = dict(config)
            for key in required:
                if key not in config:
                    raise ValueError(f"no key {key!r} (a run directory of another jaxreg "
                                     f"version, or an edited file)")
            config.pop("scaled", None)  # what --scaling resolved: for the reader, recomputed
            optimizer = OptimizerConfig.from_kwargs(config.pop("optimizer", {}))
            return _construct(cls, {**config, "optimizer": optimizer}, "")
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def read(cls, path: str | Path, *, required: tuple[str, ...] = ()) -> RunConfig:
        """The run described by the JSON file ``path`` (a run's ``config.json``, or a file
        written for ``jaxreg train --config``); ValueError naming the file and the key."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        return cls.from_dict(config, str(path), required=required)


def _require_mapping(value: Any, name: str, keys: tuple[str, ...] = ()) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(message(name, "an object (a dict)", value))
    for key in keys:
        if key not in value:
            raise ValueError(f"`{name}` has no key {key!r}")
    if keys and (unknown := [k for k in value if k not in keys]):
        raise ValueError(message(f"{name}.{unknown[0]}", "a known key (one of "
                                 + ", ".join(keys) + ")", value[unknown[0]]))


def _construct(cls: Any, values: dict[str, Any], prefix: str) -> Any:
    """``cls(**values)``: ValueError for an unknown key or a bad value (named
    ``prefix.name``)."""
    known, dotted = _fields(cls), f"{prefix}." if prefix else ""
    for key, value in values.items():
        if key not in known:
            raise ValueError(message(dotted + key, "a known key (one of " + ", ".join(known)
                                     + ")", value))
        if "kind" in known[key].metadata:
            check(known[key], value, dotted + key)
    return cls(**values)


def field(cls: type, name: str) -> dataclasses.Field:
    """The field ``name`` of the run description class ``cls``."""
    return _fields(cls)[name]


def default(cls: type, name: str) -> Any:
    """The default of the field ``name`` of ``cls``."""
    return field(cls, name).default


def check_steps(epochs: int, steps_per_epoch: int) -> int:
    """``epochs * steps_per_epoch``, the run's total steps; ValueError naming ``epochs``
    when it passes :data:`STEP_LIMIT` (the int32 step counter)."""
    total = epochs * steps_per_epoch
    if total > STEP_LIMIT:
        raise ValueError(message("epochs", f"at most {STEP_LIMIT // steps_per_epoch} at "
                                 f"{steps_per_epoch} steps per epoch (the step counter is an "
                                 f"int32: at most {STEP_LIMIT} steps)", epochs))
    return total


__all__ = ["FLOAT_LIMIT", "POWER_LIMIT", "STEP_LIMIT", "OptimizerConfig", "RunConfig", "check",
           "check_scaling", "check_steps", "condition", "default", "field", "flag_name", "option"]
