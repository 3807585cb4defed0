"""``jaxreg sweep``: train a grid of regularization settings at once (:func:`jaxreg.train.sweep`).

``jaxreg sweep --l2 0,1e-5,1e-4,1e-3 --lr 1e-3,3e-3 --seeds 3`` trains every combination of
the comma-separated values, each with seeds ``0..2`` (``--seed S``: ``S..S+2``), vmapped in one
compiled program per group of compatible settings, and writes to ``--out`` (default
``runs/sweep-<UTC timestamp>``):

    sweep.json   ``config``, one ``row`` per setting (its hyperparameters, the seeds, test and
                 train accuracy and loss as mean and std over the seeds, seconds, the
                 per-epoch ``history`` averaged over the seeds), the groups
    sweep.png    test accuracy (mean +- std over seeds) against lambda, one curve per
                 combination of the other settings
    tensorboard/ with ``--tensorboard``: TensorBoard event files, a folder per setting and seed
                 (:func:`jaxreg.train.tensorboard.write_sweep`)

and prints the best setting: the highest mean *validation* accuracy (lowest validation loss
without labels) on the held-out ``--validation-split`` (default 0.1) of the training split;
its test metrics are reported, never used to choose. With ``--validation-split 0`` no setting
is chosen. ``last_epoch_loss`` in ``sweep.json`` is the mean over the last epoch's training
batches (training mode), not ``metrics.json``'s ``train_loss`` (the final model on the whole
training set).

With ``--scaling none,sqrt+ema --scale-from B0`` (grid values separated by commas, rules applied
together by ``+``) each setting's hyperparameters are those tuned at batch ``B0``, trained moved to
``--batch-size`` by its rules (:class:`jaxreg.train.Setting`'s ``scaling``); each row of
``sweep.json`` has the resolved values under ``scaled``.

``jaxreg sweep --study batch-scaling`` tests seed 000's claim that dividing the L2 strength by
the batch size, ``lambda / b``, makes the regularization effect independent of ``b``: for each
batch size of ``--batch-sizes`` (its own group) it trains a fixed-strength model
(``l2 = lambda / 128`` at every step) and a batch-scaled one (``lambda / b``; the two coincide at
``b = 128``, the seed recipe's batch size), with the same learning rate and epochs, and writes
``study.json`` and ``study.png`` (test accuracy and kernel weight norm ``||W||_2`` against ``b``).

``jaxreg sweep --study batch-size-rules`` trains the model at each of ``--batch-sizes`` with the
hyperparameters of ``--optimizer``/``--lr`` tuned at ``--batch-size`` (B0) unchanged and moved by
each scaling rule that applies (:data:`STUDY_RULES`, or ``--scaling RULES[,RULES]``), one
vmapped sweep per rule and size with the seeds vmapped (each seed's run is ``fit(seed=...)``'s:
its own initialization and data order, ``sweep(data_seed=None)``), and writes ``rules.json`` (a
row per rule and size: test accuracy per seed, its mean and std, steps, the sweep's seconds
(all seeds, compilation included), whether it is within one point of B0's, the learning rate in
effect and the resolved values; or why the rule does not apply) and ``rules.png`` (test accuracy
against ``b``).

One such study's results (Fashion-MNIST, Adam) are in ``benchmarks/RESULTS.md`` ("Notes moved
from docstrings"); "seed NNN": the project's numbered source documents, ``docs/formulas.md``.
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxreg import models
from jaxreg._validate import SEED_LIMIT
from jaxreg.cli import tensorboard
from jaxreg.cli._common import (
    DEFAULT_L2,
    field_type,
    fraction,
    load_dataset,
    positive_int,
    readable_dir,
    seed_int,
)
from jaxreg.data import DATASETS
from jaxreg.train import rundir
from jaxreg.train.config import OptimizerConfig, RunConfig, default, field
from jaxreg.train.optimizer import OPTIMIZERS
from jaxreg.transforms import penalties

if TYPE_CHECKING:
    from jaxreg.train.sweep import SweepResult

DEFAULT_GRID_L2 = (0.0, 1e-5, 1e-4, 1e-3)
STUDY_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
PANEL_SIZE = (5.0, 3.8)
SWEEP_VALIDATION_SPLIT = 0.1
"""Default ``--validation-split``: what the best setting is chosen by."""
REFERENCE_BATCH = default(RunConfig, "batch_size")
"""The study's fixed-strength model uses ``lambda / REFERENCE_BATCH`` (equal to lambda/b there)."""
STUDY_RULES = {"adam": ("none", "sqrt", "sqrt,ema", "sqrt_lr,ema"),
               "adamw": ("none", "sqrt", "sqrt,ema", "sqrt_lr,ema", "timescale"),
               "momentum": ("none", "linear", "linear,ema", "sqrt_lr,ema"),
               "sgd": ("none", "linear", "linear,ema", "sqrt_lr,ema")}
"""The rules ``--study batch-size-rules`` compares, per optimizer (``none``: unchanged)."""


def comma_list(convert: Callable[[str], Any], noun: str) -> Callable[[str], list]:
    """An argparse ``type`` for ``"a,b,c"``: ``[convert(a), convert(b), convert(c)]``, or
    ``expected comma-separated <noun>`` (the library checks the values themselves)."""
    def parse(text: str) -> list:
        try:
            return [convert(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun}, got {text!r}") from None
    return parse


float_list = comma_list(float, "numbers")
"""``"0,1e-5,1e-4"`` -> ``[0.0, 1e-05, 0.0001]``."""
int_list = comma_list(int, "integers")
"""``"32,64"`` -> ``[32, 64]``."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``sweep``."""
    p = subparsers.add_parser(
        "sweep", help="train a grid of regularization settings at once (vmapped)",
        description="Train every combination of the given values (comma-separated lists), each "
                    "with --seeds seeds, vmapped in one compiled program per group of compatible "
                    "settings; write sweep.json and sweep.png. --study batch-scaling compares "
                    "fixed lambda with lambda/b over batch sizes.")
    p.add_argument("--l2", type=float_list, metavar="LIST",
                   help="L2 strengths lambda (default: 0,1e-5,1e-4,1e-3; study: one value, "
                        f"default {DEFAULT_L2})")
    p.add_argument(
        "--l1", type=float_list, default=[0.0], metavar="LIST", help="L1 strengths (default: 0)"
    )
    p.add_argument(
        "--lr",
        type=float_list,
        default=[default(OptimizerConfig, "learning_rate")],
        metavar="LIST",
        help=f"learning rates (default: {default(OptimizerConfig, 'learning_rate')})",
    )
    p.add_argument("--batch-scaled", choices=("on", "off", "both"), default="on",
                   help="divide lambda by the batch size at each step (default: %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="seeds per setting: S..S+N-1, S the --seed (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="the first seed, as jaxreg train's --seed (default: %(default)s)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="default: fashion-mnist if found locally, else digits")
    p.add_argument(
        "--data-dir", type=readable_dir, metavar="DIR", help="directory holding the IDX files"
    )
    p.add_argument("--model", choices=models.MODELS, default=default(RunConfig, "model"),
                   help="(default: %(default)s)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                   default=default(OptimizerConfig, "name"), help="(default: %(default)s)")
    p.add_argument("--epochs", type=field_type(field(RunConfig, "epochs")),
                   default=default(RunConfig, "epochs"), help="(default: %(default)s)")
    p.add_argument("--batch-size", type=field_type(field(RunConfig, "batch_size")),
                   default=default(RunConfig, "batch_size"), metavar="B",
                   help="(default: %(default)s)")
    p.add_argument("--data-seed", type=seed_int, default=0,
                   help="data order of every setting (default: %(default)s)")
    p.add_argument("--validation-split", type=fraction, default=SWEEP_VALIDATION_SPLIT, metavar="F",
                   help="hold out the last fraction F of the training split; the best setting is "
                        "chosen by its validation metric (0: none chosen; default: %(default)s)")
    p.add_argument("--chunk-size", type=positive_int, metavar="K",
                   help="at most K settings per compiled call (default: as many as fit in memory)")
    p.add_argument("--study", choices=("batch-scaling", "batch-size-rules"),
                   help="run a study instead of a grid")
    p.add_argument("--scaling", type=rule_grid, metavar="RULES[,RULES]",
                   help="scaling rules, one grid value per comma, rules applied together joined "
                        "by + (none,sqrt+ema: unchanged, then sqrt with ema): the hyperparameters "
                        "given are tuned at --scale-from and moved to --batch-size (docs: "
                        "Batch-size scaling rules); --study batch-size-rules: these against the "
                        "unchanged ones (default: the optimizer's rules)")
    p.add_argument("--scale-from", type=field_type(field(OptimizerConfig, "scale_from")),
                   metavar="B0", help="the batch size the hyperparameters were tuned at; with "
                                      "--scaling (the study: --batch-size is B0)")
    p.add_argument("--warmup-steps", type=field_type(field(OptimizerConfig, "warmup_steps")),
                   default=default(OptimizerConfig, "warmup_steps"), metavar="W",
                   help=field(OptimizerConfig, "warmup_steps").metadata["help"]
                   + " (default: %(default)s)")
    p.add_argument("--batch-sizes", type=int_list, default=list(STUDY_BATCH_SIZES), metavar="LIST",
                   help="the study's batch sizes (default: 32,64,...,1024)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output directory (default: runs/sweep-<UTC timestamp>)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    tensorboard.add_flag(p, "each setting's epochs (one folder per setting)")
    p.set_defaults(run=run_sweep, parser=p)


def rule_grid(text: str) -> list[str]:
    """An argparse ``type`` for ``--scaling``: ``"none,sqrt+ema"`` -> ``["none", "sqrt,ema"]``,
    grid values separated by commas, the rules of one value (applied together) by ``+``; each
    value as :class:`jaxreg.train.Setting`'s ``scaling`` spells it (rules separated by
    commas)."""
    from jaxreg.transforms.scaling import RULES

    values = [value.replace("+", ",") for value in text.split(",")]
    if not all(rule in RULES for value in values for rule in value.split(",")):
        raise argparse.ArgumentTypeError(
            f"expected rule names, grid values separated by commas and rules applied together "
            f"by +, each one of {', '.join(RULES)}; got {text!r}")
    return values


def _stats(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def kernel_norm(params: Any) -> float:
    """``||W||_2`` over the leaves the L2 penalty applies to by default (kernels only)."""
    return float(np.sqrt(penalties.l2(params)))


HYPERPARAMETERS = ("l2", "l1", "learning_rate", "batch_scaled", "batch_size", "optimizer",
                   "scaling", "scale_from", "warmup_steps")


def summarize(result: SweepResult) -> list[dict[str, Any]]:
    """One row per setting: its hyperparameters and, over its seeds, mean and std of the
    final metrics and of the kernel norm; ``seconds``: mean wall time of the chunks that
    trained it (shared by the settings of a chunk); ``history``: the mean over its seeds of
    each per-epoch history list (what ``jaxreg compare`` draws); ``scaled``: with
    ``scaling``, the hyperparameters the rules resolved (those of every seed)."""
    by_setting: dict[tuple, list] = {}
    for r in result.results:
        by_setting.setdefault(tuple(r.setting[k] for k in HYPERPARAMETERS), []).append(r)
    rows = []
    for key, runs in by_setting.items():
        row: dict[str, Any] = dict(zip(HYPERPARAMETERS, key, strict=True))
        row["seeds"] = [r.setting["seed"] for r in runs]
        for metric in runs[0].final:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _stats([r.final[metric] for r in runs])
        row["weight_norm_mean"], row["weight_norm_std"] = _stats(
            [kernel_norm(r.params) for r in runs]
        )
        row["seconds"] = float(np.mean([r.seconds for r in runs]))
        if runs[0].scaled:
            row["scaled"] = runs[0].scaled
        row["history"] = {k: np.mean([r.history[k] for r in runs], axis=0).tolist()
                          for k in runs[0].history}  # per epoch, mean over the seeds
        rows.append(row)
    return rows


def _score(rows: list[dict[str, Any]]) -> str:
    """The metric plotted (reported): test accuracy, else the last epoch's training loss."""
    return "test_accuracy_mean" if "test_accuracy_mean" in rows[0] else "last_epoch_loss_mean"


def select_best(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
    """The best row and the metric it won by: highest mean validation accuracy, else lowest
    mean validation loss; ``None`` without a validation split (the test split never chooses)."""
    for metric, pick in (("val_accuracy_mean", max), ("val_loss_mean", min)):
        if metric in rows[0]:
            return pick(rows, key=lambda r: r[metric]), metric
    return None


def plot_sweep(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy (or loss) mean +- std against lambda (symlog x, as lambda = 0 is usual), one
    curve per combination of the other hyperparameters that vary."""
    metric = _score(rows)
    varying = [k for k in HYPERPARAMETERS if k != "l2" and len({r[k] for r in rows}) > 1]
    from jaxreg.cli.plots import figure_row  # matplotlib, only now

    fig, (ax,) = figure_row(1, PANEL_SIZE)
    for other, group in itertools.groupby(sorted(rows, key=lambda r: [r[k] for k in varying]),
                                          key=lambda r: tuple(r[k] for k in varying)):
        curve = sorted(group, key=lambda r: r["l2"])
        label = ", ".join(f"{k}={v}" for k, v in zip(varying, other, strict=True)) or None
        ax.errorbar(
            [r["l2"] for r in curve],
            [r[metric] for r in curve],
            yerr=[r[metric.replace("_mean", "_std")] for r in curve],
            marker="o",
            capsize=3,
            label=label,
        )
    positive = [r["l2"] for r in rows if r["l2"] > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xlabel("lambda (l2)")
    ax.set_ylabel(metric.removesuffix("_mean").replace("_", " "))
    ax.set_title(title)
    if varying:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def plot_study(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy and kernel norm against the batch size, fixed lambda vs lambda/b."""
    metric = _score(rows)
    from jaxreg.cli.plots import figure_row

    fig, axes = figure_row(2, PANEL_SIZE)
    for scaled, label in ((False, f"fixed lambda/{REFERENCE_BATCH}"), (True, "lambda/b")):
        curve = sorted(
            (r for r in rows if r["batch_scaled"] == scaled), key=lambda r: r["batch_size"]
        )
        b = [r["batch_size"] for r in curve]
        for ax, m in zip(axes, (metric, "weight_norm_mean"), strict=True):
            ax.errorbar(
                b,
                [r[m] for r in curve],
                yerr=[r[m.replace("_mean", "_std")] for r in curve],
                marker="o",
                capsize=3,
                label=label,
            )
    names = (metric.removesuffix("_mean").replace("_", " "), "kernel norm ||W||_2")
    for ax, name in zip(axes, names, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size b")
        ax.set_ylabel(name)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def _rules_study(args: argparse.Namespace, out: Path, seeds: list[int], data: Any,
                 model: Any) -> int:
    """``--study batch-size-rules`` (the module docstring): ``rules.json``, ``rules.png`` and
    a table on stdout."""
    from jaxreg.train.plan import split_data
    from jaxreg.train.sweep import sweep

    b0, lr = args.batch_size, args.lr[0]
    rules = (tuple(dict.fromkeys(("none", *args.scaling))) if args.scaling
             else STUDY_RULES[args.optimizer])
    n_train = len(split_data(data, args.validation_split)[0][0])
    rows: list[dict[str, Any]] = []
    for rule, b in itertools.product(rules, args.batch_sizes):
        row: dict[str, Any] = {"rule": rule, "batch_size": b}
        try:  # the group's seeds vmapped, each with its own data order (fit(seed=s)'s)
            result = sweep(model, data, [{"seed": s} for s in seeds], epochs=args.epochs,
                           batch_size=b, optimizer=args.optimizer, learning_rate=lr,
                           scaling=rule, scale_from=b0, warmup_steps=args.warmup_steps,
                           data_seed=None, validation_split=args.validation_split,
                           chunk_size=args.chunk_size, progress=False)
        except ValueError as e:  # the rule does not apply at this k
            rows.append({**row, "error": str(e)})
            continue
        runs = result.results
        mean, std = _stats([r.final["test_accuracy"] for r in runs])
        rows.append({**row, "test_accuracy_mean": mean, "test_accuracy_std": std,
                     "test_accuracy": {r.setting.seed: r.final["test_accuracy"] for r in runs},
                     "steps": args.epochs * (n_train // b),
                     "learning_rate": runs[0].history["learning_rate"][-1],
                     "seconds": result.seconds, "scaled": runs[0].scaled,
                     "loss": np.mean([r.history["loss"] for r in runs], axis=0).tolist()})
    for row in rows:
        ref = next((r for r in rows if r["rule"] == row["rule"] and r["batch_size"] == b0), {})
        if "test_accuracy_mean" in row and "test_accuracy_mean" in ref:
            row["within_one_point"] = bool(
                abs(row["test_accuracy_mean"] - ref["test_accuracy_mean"]) <= 0.01)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("run", "parser")}
    (out / "rules.json").write_text(json.dumps(
        {"config": {**config, "dataset": data.name, "seeds": seeds}, "rows": rows}, indent=2)
        + "\n")
    from jaxreg.cli.plots import figure_row

    fig, (ax,) = figure_row(1, PANEL_SIZE)
    for rule in rules:
        curve = [r for r in rows if r["rule"] == rule and "test_accuracy_mean" in r]
        ax.errorbar([r["batch_size"] for r in curve], [r["test_accuracy_mean"] for r in curve],
                    yerr=[r["test_accuracy_std"] for r in curve], marker="o", capsize=3,
                    label=rule if rule != "none" else "unchanged")
    ax.set(xscale="log", xlabel="batch size b", ylabel="test accuracy")
    ax.legend(fontsize="small")
    fig.suptitle(f"{args.model} on {data.name}, {args.optimizer} tuned at B0 = {b0}")
    fig.savefig(out / "rules.png", dpi=100)
    for row in rows:
        print(f"{row['rule']:>10} b={row['batch_size']:<5} " + (
            f"n/a: {row['error']}" if "error" in row else
            f"test acc {row['test_accuracy_mean']:.4f} +- {row['test_accuracy_std']:.4f}, "
            f"{row['steps']} steps" + (", within 1 point of B0" if row.get("within_one_point")
                                       else "")))
    print(f"wrote {out / 'rules.json'} and {out / 'rules.png'}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """``jaxreg sweep``: the grid (or the study), its JSON and plot, the best setting. ``--out``
    is created and checked before any work (:func:`jaxreg.train.rundir.claim`: a writable
    directory holding no run) and locked while the sweep runs."""
    out = args.out or Path("runs") / datetime.now(timezone.utc).strftime("sweep-%Y%m%d-%H%M%S")
    last = args.seed + args.seeds - 1
    if last >= SEED_LIMIT:
        raise ValueError(f"--seed {args.seed} with --seeds {args.seeds} reaches seed {last}; "
                         f"seeds are below 2**32 = {SEED_LIMIT}")
    seeds = list(range(args.seed, last + 1))
    with rundir.claim(out):
        return _run_sweep(args, out, seeds)


def _run_sweep(args: argparse.Namespace, out: Path, seeds: list[int]) -> int:
    from jaxreg.train.sweep import sweep  # the sweep engine, only for this command

    if args.study and args.scale_from is not None:
        raise ValueError(f"--scale-from is not used by --study {args.study} (batch-size-rules: "
                         f"B0 is --batch-size)")
    if args.study == "batch-scaling" and args.scaling:
        raise ValueError("--scaling is not used by --study batch-scaling (it compares lambda "
                         "with lambda/b)")
    data, why = load_dataset(args.dataset, args.data_dir)
    print(why)
    model = models.get(args.model, data.num_classes)
    if args.study == "batch-size-rules":
        return _rules_study(args, out, seeds, data, model)
    if args.study:
        if args.l2 and len(args.l2) != 1:
            raise ValueError(f"--study batch-scaling takes one --l2 value; got {args.l2}")
        lam = args.l2[0] if args.l2 else DEFAULT_L2
        pairs = [{"batch_size": b, "l2": lam / REFERENCE_BATCH, "batch_scaled": False}
                 for b in args.batch_sizes]
        pairs += [{"batch_size": b, "l2": lam, "batch_scaled": True} for b in args.batch_sizes]
        grid: list[dict[str, Any]] | dict[str, Any] = [
            {**s, "learning_rate": lr} for s in pairs for lr in args.lr]
        name = "study"
    else:
        scaled = {"on": [True], "off": [False], "both": [False, True]}[args.batch_scaled]
        grid = {
            "l2": args.l2 or list(DEFAULT_GRID_L2),
            "l1": args.l1,
            "learning_rate": args.lr,
            "batch_scaled": scaled,
            **({"scaling": args.scaling} if args.scaling else {}),
        }
        name = "sweep"
    result = sweep(model, data, grid, epochs=args.epochs, batch_size=args.batch_size, seeds=seeds,
                   optimizer=args.optimizer, data_seed=args.data_seed, chunk_size=args.chunk_size,
                   validation_split=args.validation_split, scale_from=args.scale_from,
                   warmup_steps=args.warmup_steps,
                   progress=not args.no_progress)
    rows = summarize(result)
    config = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("run", "parser")
    }
    report: dict[str, Any] = {
        "config": {
            **config,
            "dataset": data.name,
            "data_source": data.source,
            "backend": jax.default_backend(),
            "devices": jax.device_count(),
        },
        "rows": rows,
        "groups": [{**g, "key": {k: str(v) for k, v in g["key"].items()}} for g in result.groups],
        "seconds": result.seconds,
    }
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    if args.tensorboard:
        from jaxreg.train.tensorboard import write_sweep

        write_sweep(out / tensorboard.FOLDER, result.results, report["config"])
    title = f"{args.model} on {data.name}, {args.epochs} epochs, {args.seeds} seed(s)"
    (plot_study if args.study else plot_sweep)(rows, out / f"{name}.png", title)
    chosen = select_best(rows)
    if chosen is None:
        print("no best setting chosen: --validation-split 0 leaves no validation data "
              "(settings are never chosen on the test split)")
    else:
        best, metric = chosen
        reported = [m for m in ("test_accuracy_mean", "test_loss_mean") if m in best][:1]
        print(
            "best by validation: "
            + ", ".join(f"{k}={best[k]}" for k in HYPERPARAMETERS)
            + "".join(
                f": {m.removesuffix('_mean')} {best[m]:.4f} "
                f"+- {best[m.replace('_mean', '_std')]:.4f}"
                for m in [metric, *reported]
            )
        )
    print(
        f"{len(result.results)} runs in {len(result.groups)} group(s), {result.seconds:.1f} s; "
        f"wrote "
        f"{out / (name + '.json')} and {out / (name + '.png')}"
    )
    return 0
