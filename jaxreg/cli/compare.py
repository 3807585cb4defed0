"""``jaxreg compare RUN [RUN ...]``: several runs' curves on shared axes, a PNG and a table.

A RUN is a finished ``jaxreg train`` directory (its ``metrics.json``: settings, per-epoch
history, final test metrics) or a ``jaxreg sweep`` directory (``sweep.json`` or ``study.json``:
one curve per setting, its history averaged over the seeds). Each curve's settings are the
run's configuration with the ``optimizer`` keys flattened (``learning_rate``, ``l2``,
``plateau.factor``; ``optimizer`` is its name); the legend and the table name each curve by
the settings in which the curves differ, the title holds those they share.

Writes ``--out`` (default ``compare.png`` in the current directory: a picture of several runs
belongs to none of them, and the run directories stay as their commands left them) with
:func:`jaxreg.cli.plots.plot_runs`, and prints one row per curve: its differing settings,
epochs and final training loss, validation and test metrics. A directory that is not a
finished run, or runs on different datasets, is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from jaxreg.cli._common import readable_dir

RUN_KEYS = ("dataset", "model", "api", "epochs", "batch_size", "seed", "validation_split")
"""The settings of a run's ``metrics.json`` besides its ``optimizer`` (the rest of its
configuration is bookkeeping: where the data is, how often it checkpoints)."""
SWEEP_SETTINGS = ("dataset", "model", "epochs", "validation_split")
"""The settings of a sweep's ``config`` that its rows share; the rows hold the rest
(:data:`SWEEP_ROW_KEYS`, and ``seeds``, read as ``seed``)."""
SWEEP_ROW_KEYS = ("l2", "l1", "learning_rate", "batch_scaled", "batch_size", "optimizer")
"""The settings of a sweep's row (``jaxreg.cli.sweep.HYPERPARAMETERS``)."""
TITLE_SETTINGS = ("dataset", "model", "optimizer", "epochs", "batch_size")
"""The shared settings named in the title (when the curves share them)."""
COLUMNS = (("loss", "loss"), ("val_loss", "val loss"), ("val_accuracy", "val acc"),
           ("test_loss", "test loss"), ("test_accuracy", "test acc"))
"""The table's metric columns: final values, key and heading."""


class Curve(NamedTuple):
    """One curve: ``run`` (its directory, ``#k`` for a sweep's ``k``-th setting), its
    ``settings`` (flat), ``history`` (per-epoch lists) and ``final`` metrics (:data:`COLUMNS`
    keys, ``None`` when absent)."""

    run: str
    settings: dict[str, Any]
    history: dict[str, list[float]]
    final: dict[str, float | None]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``compare``."""
    parser = subparsers.add_parser(
        "compare", help="draw several runs' curves on shared axes (a PNG and a table)",
        description="Draw the loss, accuracy, validation and learning-rate curves of finished "
                    "runs (jaxreg train directories) and of every setting of sweeps (jaxreg "
                    "sweep directories) on shared axes, the legend naming the settings in "
                    "which they differ; print the final metrics as a table.")
    parser.add_argument("runs", nargs="+", type=readable_dir, metavar="RUN",
                        help="a run or sweep directory")
    parser.add_argument("--out", type=Path, default=Path("compare.png"), metavar="PNG",
                        help="the picture to write (default: %(default)s)")
    parser.set_defaults(run=run_compare, parser=parser)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys, the ``optimizer`` prefix dropped: ``{"optimizer": {"name":
    "adam", "plateau": {"factor": 0.5}}}`` -> ``{"optimizer": "adam", "plateau.factor": 0.5}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, dict) and value:
            flat.update(flatten(value, "" if name == "optimizer" else f"{name}."))
        else:
            flat["optimizer" if name == "name" and not prefix else name] = value
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: not a JSON object")
    return content


def _checked(path: Path, content: dict[str, Any], key: str, ok: Any, what: str) -> Any:
    """``content[key]``, ValueError naming the file and the key unless ``ok(value)``."""
    value = content.get(key)
    if not ok(value):
        raise ValueError(f"{path}: {key!r} must be {what}; got {value!r:.60}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history(path: Path, content: dict[str, Any]) -> dict[str, list[float]]:
    return _checked(path, content, "history",
                    lambda h: isinstance(h, dict) and "loss" in h and all(
                        isinstance(v, list) and all(_number(x) for x in v) for v in h.values()),
                    "per-epoch lists of numbers, loss among them (a file of another jaxreg "
                    "version, or an edited one)")


def _final(history: dict[str, list[float]], **metrics: Any) -> dict[str, float | None]:
    """The table's final values: the history's last entries, then ``metrics`` (numbers only)."""
    final = {key: values[-1] if values else None for key, values in history.items()}
    final.update({k: v if _number(v) else None for k, v in metrics.items()})
    return {key: final.get(key) for key, _ in COLUMNS}


def read_run(path: Path) -> list[Curve]:
    """The curves of a run directory (one) or a sweep directory (one per setting).

    Raises:
        ValueError: ``path`` is no finished run or sweep, or its file is not what jaxreg
            writes (the message names the file and the key).
    """
    if (path / "metrics.json").is_file():
        metrics = _read_json(path / "metrics.json")
        _checked(path / "metrics.json", metrics, "optimizer", lambda o: isinstance(o, dict),
                 "the optimizer settings")
        _checked(path / "metrics.json", metrics, "dataset", lambda d: isinstance(d, str), "a name")
        history = _history(path / "metrics.json", metrics)
        settings = flatten({k: metrics[k] for k in ("optimizer", *RUN_KEYS) if k in metrics})
        return [Curve(str(path), settings, history,
                      _final(history, test_loss=metrics.get("test_loss"),
                             test_accuracy=metrics.get("test_accuracy")))]
    for name in ("sweep.json", "study.json"):
        if (path / name).is_file():
            report = _read_json(path / name)
            config = _checked(path / name, report, "config",
                              lambda c: isinstance(c, dict) and isinstance(c.get("dataset"), str),
                              "the sweep's configuration, its dataset's name among it")
            rows = _checked(path / name, report, "rows", lambda r: isinstance(r, list) and r and
                            all(isinstance(row, dict) for row in r), "a list of settings")
            curves = []
            for i, row in enumerate(rows, 1):
                history = _history(path / name, row)
                seeds = _checked(path / name, row, "seeds", lambda v: isinstance(v, list) and v
                                 and all(isinstance(x, int) for x in v), "a list of seeds")
                settings = {**{k: config.get(k) for k in SWEEP_SETTINGS},
                            **{k: v for k, v in row.items() if k in SWEEP_ROW_KEYS},
                            "seed": seeds[0] if len(seeds) == 1 else ",".join(map(str, seeds))}
                curves.append(Curve(f"{path}#{i}", settings, history, _final(
                    history, **{k: row.get(f"{k}_mean") for k, _ in COLUMNS if k != "loss"})))
            return curves
    if (path / "config.json").is_file():
        raise ValueError(f"{path}: a run that has not finished (no metrics.json yet); watch it "
                         f"with --tensorboard, or finish it with jaxreg train --resume")
    raise ValueError(f"{path}: not a jaxreg run or sweep directory (no metrics.json, sweep.json "
                     f"or study.json)")


def differences(curves: list[Curve]) -> list[str]:
    """The settings whose values differ among the curves that have them (a sweep's rows lack
    some of a run's, e.g. ``schedule``), in first-seen order."""
    keys = dict.fromkeys(k for c in curves for k in c.settings)
    return [k for k in keys if len({json.dumps(c.settings[k], sort_keys=True)
                                    for c in curves if k in c.settings}) > 1]


def label(curve: Curve, keys: list[str]) -> str:
    """``"l2=0.001, learning_rate=0.003"`` (the ``keys`` it has); its directory when none."""
    return ", ".join(f"{k}={curve.settings[k]}" for k in keys if k in curve.settings) or curve.run


def table(curves: list[Curve], keys: list[str]) -> str:
    """One line per curve: run, the differing settings, epochs and the final metrics."""
    def show(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    header = ["run", *keys, "epochs", *(heading for _, heading in COLUMNS)]
    rows = [[c.run, *(show(c.settings.get(k)) for k in keys), str(len(c.history["loss"])),
             *(show(c.final[key]) for key, _ in COLUMNS)] for c in curves]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def run_compare(args: argparse.Namespace) -> int:
    """``jaxreg compare``: reads every RUN, checks they share a dataset, prints the table and
    writes the PNG."""
    if not args.out.absolute().parent.is_dir():
        raise ValueError(f"--out {args.out}: its directory does not exist")
    runs = {path: read_run(path) for path in args.runs}
    curves = [curve for run_curves in runs.values() for curve in run_curves]
    datasets = {c.settings["dataset"] for c in curves}
    if len(datasets) > 1:
        raise ValueError("runs on different datasets cannot be compared: " + ", ".join(
            f"{path} ({run_curves[0].settings['dataset']})" for path, run_curves in runs.items()))
    keys = differences(curves)
    shared = [f"{k}={curves[0].settings[k]}" for k in TITLE_SETTINGS
              if k != "dataset" and k in curves[0].settings and k not in keys
              and all(k in c.settings for c in curves)]
    title = f"{datasets.pop()}" + (f": {', '.join(shared)}" if shared else "")
    print(table(curves, keys))
    from jaxreg.cli.plots import plot_runs  # matplotlib, only now

    plot_runs([(label(c, keys), c.history, {"loss": c.final["test_loss"],
                                             "accuracy": c.final["test_accuracy"]})
               for c in curves], args.out, title=title)
    print(f"wrote {args.out} ({len(curves)} curves)")
    return 0
