"""``jaxreg eval``: the test metrics of a run directory's latest checkpoint (``eval.json``).

The model is rebuilt from the run's ``config.json``; its latest checkpoint is restored onto a
fresh state of the same structure (:func:`jaxreg.train.checkpoint.restore_latest`) and
evaluated on the test split (:func:`jaxreg.train.evaluate`). No training step is compiled.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxreg.cli._common import check_run_data, plan_config, read_config, readable_dir, write_json
from jaxreg.data import DATASETS, load
from jaxreg.train import plan as run_plan
from jaxreg.train import rundir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``eval``."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a run's latest checkpoint on the test split",
        description="Rebuild the model of a run from DIR/config.json, restore its latest "
                    "checkpoint, evaluate it on the test split, print and write DIR/eval.json.")
    parser.add_argument("--run", dest="run_dir", type=readable_dir, required=True, metavar="DIR",
                        help="the run directory (jaxreg train's --out)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="evaluate on this dataset instead of the run's (same input shape)")
    parser.add_argument("--data-dir", type=readable_dir, metavar="DIR",
                        help="directory holding the dataset's IDX files (default: the run's)")
    parser.set_defaults(run=run_eval, parser=parser)


def evaluate_run(
    run_dir: Path, dataset: str | None = None, data_dir: Path | None = None
) -> dict[str, Any]:
    """Test metrics of the latest checkpoint in ``run_dir`` (on ``dataset`` if given, else
    the run's), also written to ``run_dir/eval.json``.

    Refused (ValueError): a bad ``config.json``, no checkpoint, the run's dataset with another
    fingerprint than the run's, another dataset whose examples the model cannot take, and (on
    the run's dataset) a checkpoint of another run. The restore template is the initial state
    of the run's plan (:func:`jaxreg.cli._common.plan_config`); only its shapes are used.
    """
    config = read_config(run_dir)
    if not rundir.step_dirs(run_dir / "checkpoints"):
        raise ValueError(f"{run_dir}: no checkpoint to evaluate in {run_dir / 'checkpoints'}")
    data = load(dataset or str(config.dataset), data_dir=data_dir or config.data_dir)
    check_run_data(config, data, run_dir)  # other data, or shapes the model cannot take
    plan = plan_config(config, data, trains=False)
    from jaxreg.train import checkpoint  # orbax, only now

    mngr = checkpoint.manager(run_dir / "checkpoints")
    try:  # the run's own data: its checkpoints must be this run's, as for --resume
        restored = checkpoint.restore_latest(
            mngr, plan.placement.state,
            run=run_plan.fingerprint(plan) if data.name == config.dataset else None)
    finally:
        mngr.close()
    if restored is None or plan.test_data is None:
        raise ValueError(f"{run_dir}: no checkpoint to evaluate")
    epoch, state, _ = restored
    test = plan.evaluate(state, *plan.test_data)
    metrics = dict(run=str(run_dir), dataset=data.name, data_source=data.source, epoch=epoch,
                   test_loss=test["loss"], test_accuracy=test.get("accuracy"))
    write_json(run_dir / "eval.json", metrics)
    return metrics


def run_eval(args: argparse.Namespace) -> int:
    """``jaxreg eval``: prints the test metrics of ``--run``'s latest checkpoint."""
    m = evaluate_run(args.run_dir, args.dataset, args.data_dir)
    accuracy = "" if m["test_accuracy"] is None else f"test acc {m['test_accuracy']:.4f}, "
    print(f"{m['dataset']}: {accuracy}test loss {m['test_loss']:.4g} "
          f"(epoch {m['epoch']} of {m['run']})")
    return 0
