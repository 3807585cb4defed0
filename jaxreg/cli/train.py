"""``jaxreg train``: train one model, write a run directory (``jaxreg eval`` re-evaluates it).

A run directory (``--out``, default ``runs/<UTC timestamp>``) holds::

    config.json    the resolved settings, written before training; ``--resume`` and ``eval``
                   rebuild the run from it, so a resumed run keeps its original settings
    checkpoints/   orbax checkpoints after each epoch (:mod:`jaxreg.train.checkpoint`)
    metrics.json   written when training finishes: config, data source, timings, final test
                   and training metrics, per-epoch history, jax version and backend
    curves.png     loss, accuracy and learning rate per epoch (:func:`jaxreg.cli.plots.plot_history`)
    eval.json      written by ``jaxreg eval`` (:mod:`jaxreg.cli.evaluate`)

With no flags, ``jaxreg train`` is seed 004's recipe (SeedMLP, Adam 1e-3, batch 128, 10 epochs)
plus a batch-scaled L2 penalty of strength :data:`DEFAULT_L2` (``DEFAULT_L2 / 128`` per step).
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxreg.cli._common import (
    DEFAULT_L2,
    build_model,
    fraction,
    load_dataset,
    mesh_spec,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    read_config,
    readable_dir,
    write_json,
)
from jaxreg.cli.plots import plot_history
from jaxreg.data import DATASETS, Dataset, load
from jaxreg.train import checkpoint, distributed, fit, models
from jaxreg.train.fit import _split_data
from jaxreg.train.optimizer import OPTIMIZERS, SCHEDULES

PLATEAU_VALIDATION_SPLIT = 0.1
"""``--validation-split`` default with ``--plateau`` (which monitors ``val_loss``); without
it the default is 0, training on the whole training split as seed 004 does."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``train``."""
    train = subparsers.add_parser(
        "train", help="train a model and write a run directory",
        description="Train a model and write config.json, checkpoints/, metrics.json and "
                    "curves.png to a run directory. With no flags: seed 004's recipe (SeedMLP, "
                    "Adam 1e-3, batch 128, 10 epochs) with a batch-scaled L2 penalty.")
    add_train_arguments(train)
    train.set_defaults(run=run_train, parser=train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """All of ``jaxreg train``'s flags, by group (add a group here for new settings)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS,
                      help="default: fashion-mnist if its files are found locally (never "
                           "downloaded by default), else digits; stdout says which and why")
    data.add_argument("--data-dir", type=readable_dir, metavar="DIR",
                      help="directory holding the IDX files (searched first)")
    data.add_argument("--validation-split", type=fraction, metavar="F",
                      help=f"hold out the last fraction F of the training split for val_* "
                           f"metrics (default: {PLATEAU_VALIDATION_SPLIT} with --plateau, else 0)")

    training = parser.add_argument_group("model and training")
    training.add_argument("--model", choices=models.MODELS, default="seed-mlp",
                          help="seed-mlp: Dense(50)+BN+Dense; keras-mlp: Dense(128)+BN, "
                               "Dense(64)+BN; small-cnn: 2 conv blocks + Dense(128); linear "
                               "(default: %(default)s)")
    training.add_argument("--api", choices=("linen", "nnx"), default="linen",
                          help="the model's flax API: linen, or nnx (jaxreg.train.models_nnx, "
                               "the same architecture as an nnx.Module) (default: %(default)s)")
    training.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default: %(default)s)")
    training.add_argument("--batch-size", type=positive_int, default=128, metavar="B",
                          help="examples per step; the last partial batch is dropped (default: %(default)s)")
    training.add_argument("--seed", type=non_negative_int, default=0,
                          help="initialization and data-order seed (default: %(default)s)")

    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                     help="momentum is SGD with momentum 0.9 (default: %(default)s)")
    opt.add_argument("--lr", type=positive_float, default=1e-3, help="(initial) learning rate (default: %(default)s)")
    opt.add_argument("--schedule", choices=SCHEDULES, default="fixed",
                     help="learning-rate schedule over the run: poly (linear to 0), step, cosine "
                     "(default: %(default)s)")

    reg = parser.add_argument_group("regularization")
    reg.add_argument("--l2", type=non_negative_float, metavar="LAMBDA",
                     help=f"L2 strength on kernels, penalty LAMBDA/2 ||w||^2 (default: "
                          f"{DEFAULT_L2} batch-scaled, 0 with --no-batch-scaled)")
    reg.add_argument("--batch-scaled", action=argparse.BooleanOptionalAction, default=True,
                     help="divide the L2 strength by the batch size at each step, LAMBDA/B "
                          "(default: on)")
    reg.add_argument("--l1", type=non_negative_float, default=0.0, metavar="LAMBDA",
                     help="L1 strength on kernels, penalty LAMBDA ||w||_1 (default: %(default)s)")
    reg.add_argument("--proximal", action="store_true",
                     help="apply L1 as a proximal soft-thresholding step (exact zeros) "
                          "instead of a subgradient")
    reg.add_argument("--plateau", action="store_true",
                     help="reduce the learning rate when val_loss stops improving")
    reg.add_argument("--plateau-factor", type=open_fraction, default=0.5, metavar="F",
                     help="with --plateau: multiply the learning rate by F (default: %(default)s)")
    reg.add_argument("--plateau-patience", type=positive_int, default=2, metavar="N",
                     help="with --plateau: after N epochs without improvement (default: %(default)s)")

    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="run directory (default: runs/<UTC timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest checkpoint, with the "
                          "settings of its config.json (a finished run is only re-reported)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (default: a tqdm bar on stderr)")

    scale = parser.add_argument_group(
        "devices and processes", "Data-parallel training (jaxreg.train.distributed): each batch is split "
        "over the devices. Several processes (hosts) each run the same command with their own "
        "--process-id; process 0 writes config.json, metrics.json and curves.png, all write the "
        "checkpoints; --out must be a directory every process reaches.")
    devices = scale.add_mutually_exclusive_group()
    devices.add_argument("--devices", type=positive_int, metavar="N",
                         help="train on the first N devices (default: all devices)")
    devices.add_argument("--mesh", type=mesh_spec, metavar="SPEC",
                         help="device mesh, e.g. data=8 or data=4,fsdp=2 (fsdp also splits large "
                              "parameters over that axis)")
    scale.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address, reachable by all processes, to join a "
                            "multi-process run; 'auto' detects it, the process count and id "
                            "(Cloud TPU pod slices, Slurm, Open MPI)")
    scale.add_argument("--num-processes", type=positive_int, metavar="P", help="with --coordinator: processes in all")
    scale.add_argument("--process-id", type=non_negative_int, metavar="I",
                       help="with --coordinator: this process, 0 to P-1")


def make_config(args: argparse.Namespace, data: Dataset) -> dict[str, Any]:
    """The run's settings, JSON-serializable; ``optimizer`` holds :func:`make_optimizer`'s
    keyword arguments (``total_steps`` aside, which ``fit`` fills in)."""
    validation_split = args.validation_split
    if validation_split is None:
        validation_split = PLATEAU_VALIDATION_SPLIT if args.plateau else 0.0
    (x_fit, _), _, _ = _split_data(data, validation_split, None)
    if len(x_fit) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {data.name} examples left "
                         f"for training (validation split {validation_split})")
    l2 = args.l2 if args.l2 is not None else (DEFAULT_L2 if args.batch_scaled else 0.0)
    plateau = dict(factor=args.plateau_factor, patience=args.plateau_patience) if args.plateau else None
    return dict(
        dataset=data.name, data_dir=None if args.data_dir is None else str(args.data_dir.absolute()),
        model=args.model, api=args.api, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        validation_split=validation_split,
        optimizer=dict(name=args.optimizer, learning_rate=args.lr, schedule=args.schedule, l2=l2,
                       l1=args.l1, batch_scaled=args.batch_scaled, proximal=args.proximal,
                       plateau=plateau),
    )


def _fit(config: dict[str, Any], data: Dataset, run_dir: Path, *, epochs: int, resume: bool,
         progress: bool, mesh: Any = None):
    """``fit`` with the run's settings, checkpointing to (and resuming from) ``run_dir``."""
    return fit(build_model(config, data), config["optimizer"], data, epochs=epochs, batch_size=config["batch_size"],
               seed=config["seed"], validation_split=config["validation_split"],
               checkpoint_dir=str(run_dir / "checkpoints"), resume=resume, progress=progress, mesh=mesh)


def _join_and_mesh(args: argparse.Namespace) -> Any:
    """Joins the multi-process run (``--coordinator``) and returns the ``--mesh``/``--devices``
    mesh (``None``: ``fit``'s default, all devices). Runs before any other JAX call."""
    if args.coordinator is not None:
        auto = args.coordinator == "auto"
        distributed.initialize(None if auto else args.coordinator, args.num_processes, args.process_id)
    elif args.num_processes is not None or args.process_id is not None:
        raise ValueError("--num-processes and --process-id need --coordinator")
    if jax.process_count() > 1 and args.out is None:
        raise ValueError("several processes need --out, the same run directory for all")
    if args.mesh is not None:
        return distributed.make_mesh(**args.mesh)
    return None if args.devices is None else distributed.make_mesh(data=args.devices)


def train_run(config: dict[str, Any], data: Dataset, run_dir: Path, *, resume: bool = False,
              progress: bool = True, mesh: Any = None) -> dict[str, Any]:
    """Trains the run ``config`` describes on ``data`` (continuing from the latest checkpoint
    in ``run_dir`` when ``resume``) on ``mesh`` (see ``fit``), writes ``metrics.json`` and
    ``curves.png`` (process 0 only), and returns the metrics. ``train_seconds`` is the wall time of this call's ``fit`` (compilation,
    epochs, validation, checkpoints, test evaluation); a resumed run counts only its own part,
    from ``resumed_from_epoch`` on."""
    start = 0
    if resume:
        mngr = checkpoint.manager(run_dir / "checkpoints")
        start = mngr.latest_step() or 0
        mngr.close()
    t0 = time.perf_counter()
    result = _fit(config, data, run_dir, epochs=config["epochs"], resume=resume, progress=progress, mesh=mesh)
    train_seconds = time.perf_counter() - t0
    (x_fit, y_fit), _, _ = _split_data(data, config["validation_split"], None)  # fit's training part
    train = result.evaluate(result.state, x_fit, y_fit)
    metrics = dict(
        config, data_source=data.source, epochs_completed=len(result.history.get("loss", [])),
        resumed_from_epoch=start, train_seconds=train_seconds,
        test_loss=result.test["loss"], test_accuracy=result.test.get("accuracy"),
        train_loss=train["loss"], train_accuracy=train.get("accuracy"),
        history=result.history, jax_version=jax.__version__, backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
    )
    if distributed.is_primary():
        plot_history(result.history, run_dir / "curves.png", title=f"{config['model']} on {config['dataset']}")
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """The one-line report of a finished run."""
    def score(split: str) -> str:
        accuracy = metrics[f"{split}_accuracy"]
        return f"{split} loss {metrics[f'{split}_loss']:.4g}" if accuracy is None else f"{split} acc {accuracy:.4f}"
    return (f"{metrics['dataset']}: {metrics['epochs_completed']} epochs, {score('test')}, "
            f"{score('train')}, {metrics['train_seconds']:.1f} s, {run_dir}")


def run_train(args: argparse.Namespace) -> int:
    """``jaxreg train``: a new run in ``--out``, or with ``--resume`` the run already there."""
    mesh = _join_and_mesh(args)
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out DIR, the run to continue")
        run_dir = args.out
        config = read_config(run_dir)
        if (run_dir / "metrics.json").exists():
            print(f"{run_dir} is finished; its metrics:")
            print(summary(json.loads((run_dir / "metrics.json").read_text()), run_dir))
            return 0
        data = load(config["dataset"], data_dir=args.data_dir or config["data_dir"])
        print(f"resuming {run_dir} with its config.json; dataset: {data.name}, from {data.source}")
    else:
        run_dir = args.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        if (run_dir / "config.json").exists():
            raise ValueError(f"{run_dir} already holds a run: pass --resume to continue it, "
                             f"or choose another --out")
        data, why = load_dataset(args.dataset, args.data_dir)
        print(why)
        config = make_config(args, data)
        run_dir.mkdir(parents=True, exist_ok=True)
        if jax.process_count() > 1:  # every process has checked for a run before process 0 writes
            multihost_utils.sync_global_devices("jaxreg train: run directory checked")
        if distributed.is_primary():
            write_json(run_dir / "config.json", config)
    metrics = train_run(config, data, run_dir, resume=args.resume, progress=not args.no_progress, mesh=mesh)
    print(summary(metrics, run_dir))
    return 0
