"""What the commands share: the default L2 strength, argparse value types, the dataset loader,
a run's model and plan, and a run directory's JSON files."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxreg import models
from jaxreg._validate import SEED_LIMIT
from jaxreg.data import DataError, Dataset, load, sources
from jaxreg.train import config as run_config
from jaxreg.train import distributed
from jaxreg.train.config import RunConfig
from jaxreg.train.plan import Plan, make_plan

DEFAULT_L2 = 0.025
"""Default L2 strength, batch-scaled: the penalty gradient is ``(0.025 / 128) w`` (about
``2e-4 w``) at batch 128. Chosen on Fashion-MNIST with the default recipe and a 10% validation
hold-out: final validation accuracy, mean of seeds 0 and 1, for LAMBDA = 0.0128 / 0.025 / 0.05 /
0.1 was 0.8573 / 0.8594 / 0.8556 / 0.8458 (mean of the last 3 epochs: 0.8660 / 0.8668 / 0.8647
/ 0.8597). Without L2 it was 0.8662 (0.8694): in 10 epochs this small model hardly overfits, so
the penalty costs a little accuracy (seeds differ by about 0.02) and 0.025 costs least."""

def _checked(convert, ok, expected: str):
    """An argparse ``type``: ``convert(text)``, rejected unless ``ok(value)``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type by it in some messages
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
seed_int = _checked(int, lambda v: 0 <= v < SEED_LIMIT, f"an integer in [0, {SEED_LIMIT - 1}]")
positive_float = _checked(float, lambda v: 0 < v < math.inf, "a positive number")
non_negative_float = _checked(float, lambda v: 0 <= v < math.inf, "a number >= 0")
fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
open_fraction = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
readable_dir = _checked(Path, lambda p: p.is_dir() and os.access(p, os.R_OK | os.X_OK),
                        "a readable directory")
mesh_spec = _checked(distributed.parse_mesh, bool, "a mesh like data=8 or data=4,fsdp=2")


def field_type(field: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse ``type`` of a run description field (:mod:`jaxreg.train.config`): the
    field's kind (``int``, ``float``) of the text, within the field's bounds."""
    def valid(value: Any) -> bool:
        try:
            run_config.check(field, value)
        except ValueError:
            return False
        return True
    return _checked(field.metadata["kind"], valid, run_config.condition(field))


@contextlib.contextmanager
def imported_alongside(modules: Sequence[str]) -> Iterator[None]:
    """Imports ``modules``, in order, in a daemon thread while the block runs; waits for the
    thread when the block ends.

    For the modules a command needs after the block (orbax for its checkpoints, matplotlib for
    its plot): importing them is Python work holding the GIL, ~0.65 s on a 2-core CPU, which
    then overlaps the block's GIL-free work (reading an IDX dataset: gzip, sha256 and numpy
    release it) instead of adding to it. **The block must import nothing**: two threads
    importing at once can deadlock on modules that import each other, which Python reports as
    an error in one of them. The thread keeps its own errors to itself: the command's later
    ``import`` raises them.
    """
    def run() -> None:
        for module in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    thread = threading.Thread(target=run, name="jaxreg-imports", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def load_dataset(name: str | None, data_dir: Path | None,
                 import_alongside: Sequence[str] = ()) -> tuple[Dataset, str]:
    """The dataset ``name`` and a line saying which and why. ``None``: Fashion-MNIST from
    ``data_dir`` if given (used or refused, never replaced: not digits instead), else
    Fashion-MNIST if its files are found without downloading, else digits.

    ``import_alongside``: modules imported while an IDX dataset loads, which imports nothing
    (:func:`imported_alongside`); digits imports scikit-learn, so they are not imported then.
    """
    if data_dir is not None and name is not None and name not in sources.IDX_SOURCES:
        raise ValueError(f"--data-dir applies to the IDX datasets "
                         f"({', '.join(sources.IDX_SOURCES)}), not {name}")
    download = True  # each line below names its source as "{source}", filled in once loaded
    if name is not None:
        why = f"dataset: {name}, from {{source}}"
    elif data_dir is not None:
        name, why = "fashion-mnist", "dataset: fashion-mnist (default, from --data-dir {source})"
    else:
        try:
            sources.locate("fashion-mnist", download=False)
        except DataError:  # not found locally; files found but bad are an error, below
            searched = ", ".join(map(str, sources.search_dirs("fashion-mnist")))
            name, why = "digits", (
                f"dataset: digits (default fallback: no directory holds the four fashion-mnist "
                f"files, searched {searched}; --dataset fashion-mnist may download them)")
        else:
            name, download = "fashion-mnist", False
            why = "dataset: fashion-mnist (default; files found in {source})"
    idx = name in sources.IDX_SOURCES
    with imported_alongside(import_alongside) if idx else contextlib.nullcontext():
        data = load(name, data_dir=data_dir, download=download)
    return data, why.replace("{source}", data.source)  # not format(): paths may hold braces


def build_model(config: RunConfig, data: Dataset) -> Any:
    """The run's model: ``config.model`` from :data:`jaxreg.models.MODELS`, linen or, with
    ``config.api == "nnx"``, NNX (built for ``data``'s input shape with
    ``nnx.Rngs(config.seed)``)."""
    return models.get(config.model, data.num_classes, api=config.api,
                      input_shape=data.x_train.shape[1:], seed=config.seed)


def plan_config(config: RunConfig, data: Dataset, mesh: Any = None, trains: bool = True) -> Plan:
    """The :class:`jaxreg.train.plan.Plan` of the run ``config`` on ``data`` (every setting
    checked as ``fit`` checks it, the initial state built, nothing trained); ``trains``: the
    epoch and the training-set evaluation are compiled ahead (``jaxreg train``)."""
    return make_plan(build_model(config, data), config.optimizer.kwargs(), data,
                     epochs=config.epochs, batch_size=config.batch_sizes(), seed=config.seed,
                     validation_split=config.validation_split, mesh=mesh, trains=trains,
                     evaluates_train=trains)


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig)
                    if f.name not in ("checkpoint_every", "batch_size_schedule"))
"""The keys a run directory's ``config.json`` must have (:class:`jaxreg.train.config.RunConfig`;
``checkpoint_every`` may be left out: 1, and ``batch_size_schedule``: none)."""


def read_config(run_dir: Path) -> RunConfig:
    """A run directory's ``config.json``; ValueError when it is not a run directory, or the
    file is not JSON, lacks a key of :data:`CONFIG_KEYS` or has a bad value (the message names
    the file and the key)."""
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir}: not a jaxreg run directory (no config.json)")
    return RunConfig.read(run_dir / "config.json", required=CONFIG_KEYS)


def check_run_data(config: RunConfig, data: Dataset, run_dir: Path) -> None:
    """Refuses ``data`` for the run ``config`` describes (ValueError): the run's dataset with
    another fingerprint (other files), or another dataset with examples of other shapes."""
    def shape(dims):
        return "x".join(map(str, dims))
    if data.name == config.dataset:
        if data.fingerprint != config.fingerprint:
            raise ValueError(f"{data.source} holds other data than the run was trained on: "
                             f"{data.name} with fingerprint {data.fingerprint}, not "
                             f"{config.fingerprint} ({run_dir / 'config.json'})")
        return
    theirs, ours = list(data.x_train.shape[1:]), config.input_shape or []
    if theirs != ours or data.num_classes != config.num_classes:
        classes = ("" if data.num_classes == config.num_classes else
                   f"; {data.num_classes} classes, the run's {config.num_classes}")
        raise ValueError(f"--dataset {data.name}: its examples are {shape(theirs)}, the run's "
                         f"({config.dataset}) {shape(ours)}{classes}: the model cannot take "
                         f"them")
