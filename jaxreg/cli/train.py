"""``jaxreg train``: train one model, write a run directory (``jaxreg eval`` re-evaluates it).

A run directory (``--out``, default ``runs/<UTC timestamp>``) holds::

    config.json    the resolved settings and the data's fingerprint, written once every
                   setting is checked, before training; ``--resume`` and ``eval`` rebuild the
                   run from it (a resumed run keeps its settings; only ``--epochs`` may grow;
                   ``deterministic`` records ``--deterministic``, which a resume may change)
    checkpoints/   orbax checkpoints every ``--checkpoint-every`` epochs and after the last,
                   each with an integrity record (:mod:`jaxreg.train.checkpoint`)
    .lock          held while a run trains: a second run on the same directory is refused
    metrics.json   written when training finishes: config, data source, timings, final test
                   and training metrics, per-epoch history, jax version and backend
    curves.png     loss, accuracy and learning rate per epoch
                   (:func:`jaxreg.cli.plots.plot_history`)
    eval.json      written by ``jaxreg eval`` (:mod:`jaxreg.cli.evaluate`)
    tensorboard/   with ``--tensorboard``: TensorBoard event files, written after each epoch
                   (:mod:`jaxreg.train.tensorboard`)

With no flags, ``jaxreg train`` is seed 004's recipe (SeedMLP, Adam 1e-3, batch 128, 10 epochs)
plus a batch-scaled L2 penalty of strength :data:`DEFAULT_L2` (``DEFAULT_L2 / 128`` per step).
"Seed NNN" is one of the project's numbered source documents (``docs/formulas.md``).
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxreg.cli import determinism, tensorboard
from jaxreg.cli._common import (
    DEFAULT_L2,
    build_model,
    check_run_data,
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
    seed_int,
    write_json,
)
from jaxreg.data import DATASETS, Dataset, load
from jaxreg.train import distributed, fit, make_optimizer, models, rundir
from jaxreg.train._inputs import check_fit_inputs
from jaxreg.train.fit import _split_data
from jaxreg.train.optimizer import OPTIMIZERS, POLY_POWER, SCHEDULE_FORMULAS, SCHEDULES
from jaxreg.train.tensorboard import TensorBoardCallback

LATER_IMPORTS = ("jaxreg.train.checkpoint", "jaxreg.cli.plots")
"""What a run imports after loading its data (orbax, matplotlib): imported while an IDX dataset
loads (:func:`jaxreg.cli._common.imported_alongside`)."""

PLATEAU_VALIDATION_SPLIT = 0.1
"""``--validation-split`` default with ``--plateau`` (which monitors ``val_loss``); without
it the default is 0, training on the whole training split as seed 004 does."""

DEFAULTS = dict(
    model="seed-mlp",
    api="linen",
    epochs=10,
    batch_size=128,
    seed=0,
    optimizer="adam",
    lr=1e-3,
    schedule="fixed",
    batch_scaled=True,
    l1=0.0,
    proximal=False,
    plateau=False,
    plateau_factor=0.5,
    plateau_patience=2,
    lr_power=POLY_POWER,
)
"""Defaults of the flags that set a run's config. Their argparse default is ``None``, so that
a flag given (even at its default value) can be told from one left out: ``--resume`` refuses
the first, and ``--plateau-*`` without ``--plateau`` is refused."""
RUN_SETTINGS = (
    "dataset",
    "validation_split",
    "model",
    "api",
    "batch_size",
    "seed",
    "optimizer",
    "lr",
    "schedule",
    "lr_power",
    "weight_decay",
    "l2",
    "batch_scaled",
    "l1",
    "proximal",
    "plateau",
    "plateau_factor",
    "plateau_patience",
)
"""The flags (argparse ``dest``) stored in config.json, which ``--resume`` cannot change;
``--epochs`` it can (to train a run further), ``--data-dir`` too (the same data elsewhere:
the fingerprint must match), and the flags of the run group and of devices and processes."""


def _flag(dest: str, value: Any = None) -> str:
    """The command-line spelling of ``dest`` (``--no-batch-scaled`` for ``batch_scaled=False``)."""
    return "--" + ("no-" if value is False else "") + dest.replace("_", "-")


def setting(args: argparse.Namespace, dest: str) -> Any:
    """Flag ``dest`` as given, or its default (:data:`DEFAULTS`)."""
    value = getattr(args, dest)
    return DEFAULTS[dest] if value is None else value


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
                      help="directory holding the IDX files, the only place read (a missing "
                           "or corrupt file is an error, never replaced by another copy)")
    data.add_argument("--validation-split", type=fraction, metavar="F",
                      help=f"hold out the last fraction F of the training split for val_* "
                           f"metrics (default: {PLATEAU_VALIDATION_SPLIT} with --plateau, else 0)")

    training = parser.add_argument_group("model and training")
    training.add_argument("--model", choices=models.MODELS,
                          help="seed-mlp: Dense(50)+BN+Dense; keras-mlp: Dense(128)+BN, "
                               "Dense(64)+BN; small-cnn: 2 conv blocks + Dense(128); linear "
                               f"(default: {DEFAULTS['model']})")
    training.add_argument(
        "--api",
        choices=("linen", "nnx"),
        help="the model's flax API: linen, or nnx (jaxreg.train.models_nnx, "
        f"the same architecture as an nnx.Module) (default: {DEFAULTS['api']})",
    )
    training.add_argument("--epochs", type=positive_int,
                          help=f"training epochs (default: {DEFAULTS['epochs']}); with --resume, "
                               f"more epochs train a run further")
    training.add_argument("--batch-size", type=positive_int, metavar="B",
                          help="examples per step; the last partial batch is dropped "
                               f"(default: {DEFAULTS['batch_size']})")
    training.add_argument("--seed", type=seed_int,
                          help=f"initialization and data-order seed, 0 to 2**32 - 1 (default: "
                               f"{DEFAULTS['seed']})")

    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                     help=f"momentum is SGD with momentum 0.9 (default: {DEFAULTS['optimizer']})")
    opt.add_argument("--lr", type=positive_float,
                     help=f"(initial) learning rate (default: {DEFAULTS['lr']})")
    opt.add_argument("--schedule", choices=SCHEDULES,
                     help="learning rate at step t of the run's T steps: "
                          + "; ".join(f"{k}: {v}" for k, v in SCHEDULE_FORMULAS.items())
                          + f" (default: {DEFAULTS['schedule']})")
    opt.add_argument("--lr-power", type=positive_float, metavar="A",
                     help=f"the power a of --schedule poly (default: {DEFAULTS['lr_power']}); "
                          "only with --schedule poly")
    opt.add_argument("--weight-decay", type=non_negative_float, metavar="WD",
                     help="adamw's decoupled weight decay, on kernels only like the penalties "
                          "(default: optax's 1e-4); only with --optimizer adamw")

    reg = parser.add_argument_group("regularization")
    reg.add_argument("--l2", type=non_negative_float, metavar="LAMBDA",
                     help=f"L2 strength on kernels, penalty LAMBDA/2 ||w||^2 (default: "
                          f"{DEFAULT_L2} batch-scaled, 0 with --no-batch-scaled)")
    reg.add_argument("--batch-scaled", action=argparse.BooleanOptionalAction,
                     help="divide the L2 strength by the batch size at each step, LAMBDA/B "
                          "(default: on)")
    reg.add_argument("--l1", type=non_negative_float, metavar="LAMBDA",
                     help=f"L1 strength on kernels, penalty LAMBDA ||w||_1 (default: "
                          f"{DEFAULTS['l1']})")
    reg.add_argument("--proximal", action="store_true", default=None,
                     help="with --l1: apply L1 as a proximal soft-thresholding step (exact "
                          "zeros) instead of a subgradient")
    reg.add_argument("--plateau", action="store_true", default=None,
                     help="reduce the learning rate when val_loss stops improving")
    reg.add_argument("--plateau-factor", type=open_fraction, metavar="F",
                     help=f"with --plateau: multiply the learning rate by F (default: "
                          f"{DEFAULTS['plateau_factor']})")
    reg.add_argument("--plateau-patience", type=positive_int, metavar="N",
                     help=f"with --plateau: after N epochs without improvement (default: "
                          f"{DEFAULTS['plateau_patience']})")

    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="run directory (default: runs/<UTC timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest checkpoint, with the "
                          "settings of its config.json, which other flags cannot change; "
                          "--epochs N trains it (even a finished one) to N epochs; a finished "
                          "run is otherwise only re-reported")
    run.add_argument("--checkpoint-every", type=positive_int, default=1, metavar="N",
                     help="checkpoint every N epochs (and after the last; default: %(default)s)")
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: a tqdm bar on stderr)"
    )
    tensorboard.add_flag(run, "each epoch (a resumed run with a tensorboard/ folder appends)")

    scale = parser.add_argument_group(
        "devices and processes",
        "Data-parallel training (jaxreg.train.distributed): each batch is split "
        "over the devices. Several processes (hosts) each run the same command with their own "
        "--process-id; process 0 writes config.json, metrics.json and curves.png, all write the "
        "checkpoints; --out must be a directory every process reaches.",
    )
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
    scale.add_argument(
        "--num-processes",
        type=positive_int,
        metavar="P",
        help="with --coordinator: processes in all",
    )
    scale.add_argument("--process-id", type=non_negative_int, metavar="I",
                       help="with --coordinator: this process, 0 to P-1")


def make_config(args: argparse.Namespace, data: Dataset) -> dict[str, Any]:
    """The run's settings, JSON-serializable, checked as ``fit`` would check them
    (:func:`check_config`); ``optimizer`` holds :func:`make_optimizer`'s keyword arguments
    (``total_steps`` aside, which ``fit`` fills in).

    Raises:
      ValueError: a flag that would do nothing (``--proximal`` without ``--l1``,
        ``--plateau-*`` without ``--plateau``), or settings ``fit`` refuses.
    """
    plateau, l1, batch_scaled = (setting(args, k) for k in ("plateau", "l1", "batch_scaled"))
    if args.proximal and not l1:
        raise ValueError("--proximal needs --l1 > 0 (it is how the L1 penalty is applied)")
    for dest in ("plateau_factor", "plateau_patience"):
        if getattr(args, dest) is not None and not plateau:
            raise ValueError(f"{_flag(dest)} needs --plateau")
    validation_split = args.validation_split
    if validation_split is None:
        validation_split = PLATEAU_VALIDATION_SPLIT if plateau else 0.0
    l2 = args.l2 if args.l2 is not None else (DEFAULT_L2 if batch_scaled else 0.0)
    plateau = (dict(factor=setting(args, "plateau_factor"),
                    patience=setting(args, "plateau_patience")) if plateau else None)
    extra: dict[str, Any] = {}
    optimizer, schedule = setting(args, "optimizer"), setting(args, "schedule")
    if args.weight_decay is not None:
        if optimizer != "adamw":
            raise ValueError(f"--weight-decay is adamw's; got --optimizer {optimizer}")
        extra["weight_decay"] = args.weight_decay
    if args.lr_power is not None and schedule != "poly":
        raise ValueError(f"--lr-power is --schedule poly's; got --schedule {schedule}")
    if schedule == "poly":
        extra["schedule_kwargs"] = {"power": setting(args, "lr_power")}
    config = dict(
        dataset=data.name,
        data_dir=None if args.data_dir is None else str(args.data_dir.absolute()),
        fingerprint=data.fingerprint, input_shape=list(data.x_train.shape[1:]),
        num_classes=data.num_classes, model=setting(args, "model"), api=setting(args, "api"),
        epochs=setting(args, "epochs"),
        batch_size=setting(args, "batch_size"), seed=setting(args, "seed"),
        validation_split=validation_split, checkpoint_every=args.checkpoint_every,
        deterministic=determinism.enabled(),
        optimizer=dict(name=optimizer, learning_rate=setting(args, "lr"), schedule=schedule,
                       l2=l2, l1=l1, batch_scaled=batch_scaled, proximal=setting(args, "proximal"),
                       plateau=plateau, **extra),
    )
    check_config(config, data)
    return config


def check_config(config: dict[str, Any], data: Dataset) -> None:
    """Raises what ``fit`` would raise for the run ``config`` on ``data``, without training
    (:func:`jaxreg.train._inputs.check_fit_inputs`, :func:`make_optimizer`): run before a
    run directory is written or changed."""
    model = build_model(config, data)
    check_fit_inputs(model, config["optimizer"], data, epochs=config["epochs"],
                     batch_size=config["batch_size"], seed=config["seed"],
                     validation_split=config["validation_split"], validation_data=None, test=True,
                     monitor="val_loss", accumulate=1, unroll=1, loss_fn=None)
    (x_fit, _), _, _ = _split_data(data, config["validation_split"], None)
    make_optimizer(**config["optimizer"],
                   total_steps=config["epochs"] * (len(x_fit) // config["batch_size"]))


def _fit(config: dict[str, Any], data: Dataset, run_dir: Path, *, epochs: int, resume: bool,
         progress: bool, mesh: Any = None, callbacks=()):
    """``fit`` with the run's settings, checkpointing to (and resuming from) ``run_dir``."""
    return fit(
        build_model(config, data),
        config["optimizer"],
        data,
        epochs=epochs,
        batch_size=config["batch_size"],
        seed=config["seed"],
        validation_split=config["validation_split"],
        checkpoint_dir=str(run_dir / "checkpoints"),
        resume=resume,
        checkpoint_every=config.get("checkpoint_every", 1),
        progress=progress,
        mesh=mesh,
        callbacks=callbacks,
    )


def _join_and_mesh(args: argparse.Namespace) -> Any:
    """Joins the multi-process run (``--coordinator``) and returns the ``--mesh``/``--devices``
    mesh (``None``: ``fit``'s default, all devices). Runs before any other JAX call."""
    if args.coordinator is not None:
        auto = args.coordinator == "auto"
        distributed.initialize(
            None if auto else args.coordinator, args.num_processes, args.process_id
        )
    elif args.num_processes is not None or args.process_id is not None:
        raise ValueError("--num-processes and --process-id need --coordinator")
    if jax.process_count() > 1 and args.out is None:
        raise ValueError("several processes need --out, the same run directory for all")
    if args.mesh is not None:
        return distributed.make_mesh(**args.mesh)
    return None if args.devices is None else distributed.make_mesh(data=args.devices)


def train_run(config: dict[str, Any], data: Dataset, run_dir: Path, *, resume: bool = False,
              progress: bool = True, mesh: Any = None,
              tensorboard_dir: Path | None = None) -> dict[str, Any]:
    """Trains the run ``config`` describes on ``data`` (continuing from the latest checkpoint
    in ``run_dir`` when ``resume``) on ``mesh`` (see ``fit``), writes ``metrics.json`` and
    ``curves.png`` (process 0 only), and returns the metrics. ``train_seconds`` is the wall time
    of this call's ``fit`` (compilation, epochs, validation, checkpoints, test evaluation); a
    resumed run counts only its own part, from ``resumed_from_epoch`` on. With
    ``tensorboard_dir``, each epoch is also written there (:class:`TensorBoardCallback`)."""
    ran: list[int] = []
    callbacks: list[Any] = [lambda epoch, state, logs: ran.append(epoch)]
    if tensorboard_dir is not None:
        callbacks.append(TensorBoardCallback(tensorboard_dir, config))
    t0 = time.perf_counter()
    result = _fit(
        config,
        data,
        run_dir,
        epochs=config["epochs"],
        resume=resume,
        progress=progress,
        mesh=mesh,
        callbacks=callbacks,
    )
    train_seconds = time.perf_counter() - t0
    start = len(result.history.get("loss", [])) - len(ran)  # the epochs restored
    (x_fit, y_fit), _, _ = _split_data(
        data, config["validation_split"], None
    )  # fit's training part
    plotted = None
    with ThreadPoolExecutor(1) as pool:  # the plot (Python) overlaps the evaluation (XLA)
        if distributed.is_primary():
            from jaxreg.cli.plots import plot_history  # matplotlib: here, not in the thread

            plotted = pool.submit(plot_history, result.history, run_dir / "curves.png",
                                  title=f"{config['model']} on {config['dataset']}",
                                  test=result.test)
        train = result.evaluate(result.state, x_fit, y_fit)
        if plotted is not None:
            plotted.result()  # its error, if any, is raised here
    metrics = dict(
        config, data_source=data.source, epochs_completed=len(result.history.get("loss", [])),
        resumed_from_epoch=start, train_seconds=train_seconds,
        test_loss=result.test["loss"], test_accuracy=result.test.get("accuracy"),
        train_loss=train["loss"], train_accuracy=train.get("accuracy"),
        history=result.history, jax_version=jax.__version__, backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
    )
    if distributed.is_primary():
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """The one-line report of a finished run."""
    def score(split: str) -> str:
        accuracy = metrics[f"{split}_accuracy"]
        return (
            f"{split} loss {metrics[f'{split}_loss']:.4g}"
            if accuracy is None
            else f"{split} acc {accuracy:.4f}"
        )

    skipped = sum(metrics["history"].get("skipped_steps", []))
    return (f"{metrics['dataset']}: {metrics['epochs_completed']} epochs, {score('test')}, "
            f"{score('train')}, {skipped} skipped steps, {metrics['train_seconds']:.1f} s, "
            f"{run_dir}")


def _resumed_config(args: argparse.Namespace, config: dict[str, Any],
                    run_dir: Path) -> dict[str, Any]:
    """``config`` with what ``--resume`` may change applied (``--epochs``); ValueError for a
    flag of :data:`RUN_SETTINGS`, or for fewer epochs than trained, or more with a schedule
    other than ``fixed`` (its learning rate follows the epochs planned)."""
    given = [_flag(d, getattr(args, d)) for d in RUN_SETTINGS if getattr(args, d) is not None]
    if given:
        raise ValueError(f"--resume cannot change {', '.join(given)}: a resumed run keeps the "
                         f"settings of {run_dir / 'config.json'} (it can change --epochs, to "
                         f"train further, and --data-dir, to the same data elsewhere)")
    if args.epochs is None or args.epochs == config["epochs"]:
        return config
    schedule = config["optimizer"]["schedule"]
    if schedule != "fixed":
        raise ValueError(f"--resume cannot change --epochs of a run with --schedule {schedule}: "
                         f"its learning rate follows the {config['epochs']} epochs planned")
    from jaxreg.train import checkpoint  # orbax, only for a resume

    mngr = checkpoint.manager(run_dir / "checkpoints")
    trained = mngr.latest_step() or 0
    mngr.close()
    if args.epochs < trained:
        raise ValueError(f"--epochs {args.epochs} is fewer than the {trained} epochs the run "
                         f"has trained")
    return {**config, "epochs": args.epochs}


def run_train(args: argparse.Namespace) -> int:
    """``jaxreg train``: a new run in ``--out``, or with ``--resume`` the run already there.
    Everything is checked (flags, data, settings) before the run directory is written: it is
    created and checked first (:func:`jaxreg.train.rundir.claim`: a writable directory holding no
    run, unless resumed; removed again if the command fails before writing there) and locked
    for the run's life."""
    mesh = _join_and_mesh(args)
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR, the run to continue")
    run_dir = args.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    saved = read_config(run_dir) if args.resume else None  # a missing run is not created
    with rundir.claim(run_dir, resume=args.resume, locked=distributed.is_primary()):
        if saved is not None:
            config = _resumed_config(args, saved, run_dir)
            if config is saved and (run_dir / "metrics.json").exists():
                print(f"{run_dir} is finished; its metrics:")
                print(summary(json.loads((run_dir / "metrics.json").read_text()), run_dir))
                return 0
            data = load(config["dataset"], data_dir=args.data_dir or config["data_dir"])
            check_run_data(config, data, run_dir)
            check_config(config, data)
        else:
            data, why = load_dataset(args.dataset, args.data_dir, import_alongside=LATER_IMPORTS)
            print(why)
            config = make_config(args, data)
        if jax.process_count() > 1:  # every process has checked for a run before process 0 writes
            multihost_utils.sync_global_devices("jaxreg train: run directory checked")
        if distributed.is_primary() and config is not saved:
            if saved is not None:  # --epochs grew: the old metrics are no longer the last word
                (run_dir / "metrics.json").unlink(missing_ok=True)
            write_json(run_dir / "config.json", config)
        if saved is not None:
            print(f"resuming {run_dir} with its config.json"
                  + ("" if config is saved else f", to {config['epochs']} epochs")
                  + f"; dataset: {data.name}, from {data.source}")
            note = determinism.resume_note(saved.get("deterministic", False),
                                           jax.default_backend())
            if note:
                print(note)
        events = run_dir / tensorboard.FOLDER  # kept up when resuming a run that has it
        metrics = train_run(config, data, run_dir, resume=args.resume,
                            progress=not args.no_progress, mesh=mesh,
                            tensorboard_dir=events if args.tensorboard or events.is_dir() else None)
    print(summary(metrics, run_dir))
    return 0
