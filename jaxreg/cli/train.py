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
import dataclasses
import io
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
    check_run_data,
    field_type,
    load_dataset,
    mesh_spec,
    non_negative_int,
    plan_config,
    positive_int,
    read_config,
    readable_dir,
    write_json,
)
from jaxreg.data import Dataset, load
from jaxreg.train import distributed, rundir
from jaxreg.train.config import OptimizerConfig, RunConfig, flag_name
from jaxreg.train.fit import FitResult, fit_plan
from jaxreg.train.plan import Plan
from jaxreg.train.tensorboard import TensorBoardCallback

LATER_IMPORTS = ("jaxreg.train.checkpoint", "jaxreg.cli.plots")
"""What a run imports after loading its data (orbax, matplotlib): imported while an IDX dataset
loads (:func:`jaxreg.cli._common.imported_alongside`)."""

PLATEAU_VALIDATION_SPLIT = 0.1
"""``--validation-split`` default with ``--plateau`` (which monitors ``val_loss``); without
it the default is 0, training on the whole training split as seed 004 does."""

GROUPS = {
    "data": ("dataset", "validation_split"),
    "model and training": ("model", "api", "epochs", "batch_size", "batch_size_schedule",
                           "seed"),
    "optimizer": ("name", "learning_rate", "schedule", "lr_power", "weight_decay", "scaling",
                  "scale_from", "warmup_steps"),
    "regularization": ("l2", "batch_scaled", "l1", "proximal", "plateau", "plateau_factor",
                       "plateau_patience"),
    "run": ("checkpoint_every",),
}
"""The run description's fields (:mod:`jaxreg.train.config`) by ``--help`` group; each is a
flag spelled by :func:`jaxreg.train.config.flag_name`."""

CLI_DEFAULTS = {"batch_scaled": "on", "proximal": "off", "plateau": "off",
                "l2": f"{DEFAULT_L2} batch-scaled, 0 with --no-batch-scaled",
                "validation_split": f"{PLATEAU_VALIDATION_SPLIT} with --plateau, else 0"}
"""The defaults of ``jaxreg train`` that are not the run description's (the recipe: a
batch-scaled L2 of :data:`DEFAULT_L2`), as ``--help`` states them."""


def _described() -> dict[str, dataclasses.Field]:
    """The run description's fields that are flags, by argparse ``dest``."""
    fields = [*dataclasses.fields(RunConfig), *dataclasses.fields(OptimizerConfig)]
    return {flag.replace("-", "_"): f for f in fields if (flag := flag_name(f)) is not None}


def _flag(dest: str, value: Any = None) -> str:
    """The command-line spelling of ``dest`` (``--no-batch-scaled`` for ``batch_scaled=False``)."""
    return "--" + ("no-" if value is False else "") + dest.replace("_", "-")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``train``."""
    train = subparsers.add_parser(
        "train", help="train a model and write a run directory",
        description="Train a model and write config.json, checkpoints/, metrics.json and "
                    "curves.png to a run directory. With no flags: seed 004's recipe (SeedMLP, "
                    "Adam 1e-3, batch 128, 10 epochs) with a batch-scaled L2 penalty.")
    add_train_arguments(train)
    train.set_defaults(run=run_train, parser=train)


def _add_described(group: Any, dest: str, field: dataclasses.Field) -> None:
    """The flag of a run description field: its help, default, choices and bounds."""
    meta = field.metadata
    default = CLI_DEFAULTS.get(field.name, field.default)
    text = meta["help"] + ("" if "default" in meta["help"] else f" (default: {default})")
    kwargs: dict[str, Any] = dict(dest=dest, help=text, default=None)
    if meta["kind"] is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]
    else:
        kwargs.update(type=field_type(field),
                      metavar=dict(validation_split="F", batch_size="B", lr_power="A",
                                   batch_size_schedule="EPOCH:B,...", scaling="RULE[,RULE]",
                                   scale_from="B0", warmup_steps="W",
                                   weight_decay="WD", l2="LAMBDA", l1="LAMBDA",
                                   plateau_factor="F", plateau_patience="N",
                                   checkpoint_every="N").get(field.name))
    group.add_argument(_flag(dest), **kwargs)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """All of ``jaxreg train``'s flags, by group: the run description's (:data:`GROUPS`), the
    data directory, the run directory and the devices."""
    described = {f.name: (dest, f) for dest, f in _described().items()}
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for name, fields in GROUPS.items():
        for field_name in fields:
            _add_described(groups[name], *described[field_name])
        if name == "data":
            groups[name].add_argument(
                "--data-dir", type=readable_dir, metavar="DIR",
                help="directory holding the IDX files, the only place read (a missing or "
                     "corrupt file is an error, never replaced by another copy)")
    run = groups["run"]
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="run directory (default: runs/<UTC timestamp>)")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="the run's settings from a JSON file (a run's config.json is one); "
                          "flags given override them")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest checkpoint, with the "
                          "settings of its config.json, which other flags cannot change; "
                          "--epochs N trains it (even a finished one) to N epochs; a finished "
                          "run is otherwise only re-reported")
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


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of ``cls``'s fields given on the command line, by field name."""
    return {f.name: getattr(args, dest) for dest, f in _described().items()
            if getattr(args, dest) is not None and f.name in {g.name for g in
                                                               dataclasses.fields(cls)}}


def make_config(args: argparse.Namespace, data: Dataset,
                base: RunConfig | None = None) -> RunConfig:
    """The run's settings: the flags given over ``base`` (``--config``), or over the recipe
    (:data:`CLI_DEFAULTS`), with ``data``'s name and fingerprint.

    Raises:
      ValueError: a flag that would do nothing (``--proximal`` without ``--l1``,
        ``--plateau-*`` without ``--plateau``, ``--weight-decay`` without adamw,
        ``--lr-power`` without ``--schedule poly``), or a bad value.
    """
    run, opt = _given(args, RunConfig), _given(args, OptimizerConfig)
    if base is None:
        batch_scaled = opt.setdefault("batch_scaled", True)
        opt.setdefault("l2", DEFAULT_L2 if batch_scaled else 0.0)
        run.setdefault("validation_split",
                       PLATEAU_VALIDATION_SPLIT if opt.get("plateau") else 0.0)
        base = RunConfig()
    optimizer = dataclasses.replace(base.optimizer, **opt)
    if optimizer.proximal and not optimizer.l1:
        raise ValueError("--proximal needs --l1 > 0 (it is how the L1 penalty is applied)")
    for name in ("plateau_factor", "plateau_patience"):
        if name in opt and not optimizer.plateau:
            raise ValueError(f"{_flag(name)} needs --plateau")
    if optimizer.weight_decay is not None and optimizer.name != "adamw":
        raise ValueError(f"--weight-decay is adamw's; got --optimizer {optimizer.name}")
    if optimizer.lr_power is not None and optimizer.schedule != "poly":
        raise ValueError(f"--lr-power is --schedule poly's; got --schedule {optimizer.schedule}")
    data_dir = None if args.data_dir is None else str(args.data_dir.absolute())
    run.update(dataset=data.name, fingerprint=data.fingerprint,
               input_shape=list(data.x_train.shape[1:]), num_classes=data.num_classes,
               data_dir=data_dir if data_dir is not None or base.dataset != data.name
               else base.data_dir, deterministic=determinism.enabled())
    return dataclasses.replace(base, **run, optimizer=optimizer)


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


def train_run(config: RunConfig, plan: Plan, run_dir: Path, *, resume: bool = False,
              progress: bool = True, data_source: str = "",
              tensorboard_dir: Path | None = None) -> dict[str, Any]:
    """Trains the run ``config`` describes, planned as ``plan`` (continuing from the latest
    checkpoint in ``run_dir`` when ``resume``; ``run_dir`` claimed by the caller), writes
    ``metrics.json`` and ``curves.png`` (process 0 only), and returns the metrics.
    ``train_seconds`` is the wall time of the training (epochs, validation, checkpoints, test
    evaluation); a resumed run counts only its own part, from ``resumed_from_epoch`` on. The
    training-set evaluation and the plot run while the last checkpoint is written
    (``fit_plan``'s ``at_end``) and are not counted; ``curves.png`` is written once that
    checkpoint is complete. With ``tensorboard_dir``, each epoch is also written there
    (:class:`TensorBoardCallback`)."""
    ran: list[int] = []
    callbacks: list[Any] = [lambda epoch, state, logs: ran.append(epoch)]
    if tensorboard_dir is not None:
        callbacks.append(TensorBoardCallback(tensorboard_dir, config.to_dict()))
    end: dict[str, Any] = {}

    def at_end(result: FitResult) -> None:  # overlaps the last checkpoint's write
        started = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:  # the plot (Python) overlaps the evaluation (XLA)
            plotted = None
            if distributed.is_primary():
                from jaxreg.cli.plots import plot_history  # matplotlib: here, not in the thread

                end["png"] = io.BytesIO()
                plotted = pool.submit(plot_history, result.history, end["png"],
                                      title=f"{config.model} on {config.dataset}",
                                      test=result.test)
            end["train"] = result.evaluate(result.state, plan.x, plan.y)  # fit's training part
            if plotted is not None:
                plotted.result()  # its error, if any, is raised here
        end["seconds"] = time.perf_counter() - started

    t0 = time.perf_counter()
    result = fit_plan(plan, callbacks=callbacks, progress=progress,
                      checkpoint_dir=run_dir / "checkpoints", resume=resume,
                      checkpoint_every=config.checkpoint_every, claimed=True, at_end=at_end)
    train_seconds = time.perf_counter() - t0 - end["seconds"]
    if "png" in end:
        (run_dir / "curves.png").write_bytes(end["png"].getvalue())
    start = len(result.history.get("loss", [])) - len(ran)  # the epochs restored
    train = end["train"]
    assert result.test is not None  # a dataset's test split is evaluated
    metrics = dict(
        config.to_dict(), data_source=data_source,
        epochs_completed=len(result.history.get("loss", [])),
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


def _resumed_config(args: argparse.Namespace, config: RunConfig, run_dir: Path) -> RunConfig:
    """``config`` with what ``--resume`` may change applied (the ``resumable`` fields of
    :mod:`jaxreg.train.config`: ``--epochs``, ``--checkpoint-every``); ValueError for a flag
    of another field, for no checkpoint to continue from, or for epochs
    :func:`_check_more_epochs` refuses."""
    given = [_flag(dest, getattr(args, dest)) for dest, f in _described().items()
             if getattr(args, dest) is not None and not f.metadata["resumable"]]
    if args.config is not None:
        given.append("--config")
    if given:
        raise ValueError(f"--resume cannot change {', '.join(given)}: a resumed run keeps the "
                         f"settings of {run_dir / 'config.json'} (it can change --epochs, to "
                         f"train further, --checkpoint-every, and --data-dir, to the same data "
                         f"elsewhere)")
    if not rundir.step_dirs(run_dir / "checkpoints") and (run_dir / "metrics.json").exists():
        raise ValueError(f"--resume: {run_dir / 'checkpoints'} holds no checkpoint of this "
                         f"finished run (deleted?): nothing to continue from; start a new run "
                         f"in another --out")
    changes = {f.name: getattr(args, dest) for dest, f in _described().items()
               if f.metadata["resumable"] and getattr(args, dest) not in (None,
                                                                          getattr(config, f.name))}
    if "epochs" in changes:
        _check_more_epochs(args.epochs, config, run_dir)
    return dataclasses.replace(config, **changes) if changes else config


def _check_more_epochs(epochs: int, config: RunConfig, run_dir: Path) -> None:
    """ValueError for ``--resume --epochs`` fewer than trained, or other than planned with a
    schedule other than ``fixed`` (its learning rate follows the epochs planned)."""
    schedule = config.optimizer.schedule
    if schedule != "fixed":
        raise ValueError(f"--resume cannot change --epochs of a run with --schedule {schedule}: "
                         f"its learning rate follows the {config.epochs} epochs planned")
    from jaxreg.train import checkpoint  # orbax, only for a resume

    mngr = checkpoint.manager(run_dir / "checkpoints")
    trained = mngr.latest_step() or 0
    mngr.close()
    if epochs < trained:
        raise ValueError(f"--epochs {epochs} is fewer than the {trained} epochs the run "
                         f"has trained")


def scaled_line(plan: Plan) -> str:
    """The one line of the hyperparameters ``--scaling`` resolved, per batch size."""
    return "scaled: " + "; ".join(f"B={b}: " + ", ".join(f"{k} {v:.6g}" for k, v in values.items())
                                  for b, values in plan.scaled.items())


def run_train(args: argparse.Namespace) -> int:
    """``jaxreg train``: a new run in ``--out``, or with ``--resume`` the run already there.
    Everything is checked (flags, data, settings: the run is planned) before the run directory
    is written: it is created and checked first (:func:`jaxreg.train.rundir.claim`: a writable
    directory holding no run, unless resumed; removed again if the command fails before
    writing there) and locked for the run's life, the one lock of the run."""
    mesh = _join_and_mesh(args)
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out DIR, the run to continue")
    run_dir = args.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    saved = read_config(run_dir) if args.resume else None  # a missing run is not created
    base = None if args.config is None or saved is not None else RunConfig.read(args.config)
    with rundir.claim(run_dir, resume=args.resume, locked=distributed.is_primary()):
        if saved is not None:
            config = _resumed_config(args, saved, run_dir)
            if config is saved and (run_dir / "metrics.json").exists():
                print(f"{run_dir} is finished; its metrics:")
                print(summary(json.loads((run_dir / "metrics.json").read_text()), run_dir))
                return 0
            data = load(str(config.dataset), data_dir=args.data_dir or config.data_dir)
            check_run_data(config, data, run_dir)
        else:
            dataset = args.dataset or (base.dataset if base is not None else None)
            data_dir = args.data_dir or (Path(base.data_dir) if base is not None
                                         and base.data_dir is not None else None)
            data, why = load_dataset(dataset, data_dir, import_alongside=LATER_IMPORTS)
            print(why)
            if base is not None and base.fingerprint is not None:
                check_run_data(base, data, args.config)
            config = make_config(args, data, base)
        plan = plan_config(config, data, mesh)  # the dry run: every check, before writing
        if not rundir.step_dirs(run_dir / "checkpoints") and saved is not None:
            print(f"{run_dir / 'checkpoints'} holds no checkpoint: training from epoch 0")
        if jax.process_count() > 1:  # every process has checked for a run before process 0 writes
            multihost_utils.sync_global_devices("jaxreg train: run directory checked")
        if distributed.is_primary() and config is not saved:
            if saved is not None:  # --epochs grew: the old metrics are no longer the last word
                (run_dir / "metrics.json").unlink(missing_ok=True)
            write_json(run_dir / "config.json", config.to_dict() if not plan.scaled else {
                **config.to_dict(), "scaled": {str(b): v for b, v in plan.scaled.items()}})
        if plan.scaled:
            print(scaled_line(plan))
        if saved is not None:
            print(f"resuming {run_dir} with its config.json"
                  + ("" if config is saved else f", to {config.epochs} epochs")
                  + f"; dataset: {data.name}, from {data.source}")
            note = determinism.resume_note(saved.deterministic,
                                           jax.default_backend())
            if note:
                print(note)
        events = run_dir / tensorboard.FOLDER  # kept up when resuming a run that has it
        metrics = train_run(config, plan, run_dir, resume=args.resume,
                            progress=not args.no_progress, data_source=data.source,
                            tensorboard_dir=events if args.tensorboard or events.is_dir() else None)
    print(summary(metrics, run_dir))
    return 0
