"""Training engine: state, step, whole-epoch runners, optimizer factory, checkpoints, ``fit``.

Modules, lowest first: ``state`` (the pytree) -> ``step`` (one pure step, evaluation) ->
``epoch`` (scan / streamed epoch) -> ``optimizer`` (the optax chain) -> ``config`` (the run
description) -> ``checkpoint`` (orbax) -> ``plan`` (a run checked and set up once) -> ``fit``
(the loop) -> ``sweep`` (many settings at once, vmapped: a subpackage,
settings / memory / run). The models the CLI and benchmarks train are :mod:`jaxreg.models`;
``nnx_bridge`` lets every entry point take an ``nnx.Module``; ``distributed`` the meshes and
multi-process start; ``rundir`` what makes a directory a run, its checks and lock;
``interrupt`` Ctrl-C deferred to safe points; ``divergence`` when skipped (non-finite) steps end
a run.
"""
from jaxreg._extras import require_train

require_train("jaxreg.train")

from jaxreg.train.config import OptimizerConfig, RunConfig
from jaxreg.train.divergence import TrainingDiverged
from jaxreg.train.epoch import prefetch, scan_epoch, stream_epoch
from jaxreg.train.fit import FitResult, fit, fit_plan
from jaxreg.train.optimizer import (
    RunOptimizer,
    learning_rate_schedule,
    make_optimizer,
    update_plateau,
)
from jaxreg.train.plan import Plan, make_plan
from jaxreg.train.state import TrainState, create_train_state
from jaxreg.train.step import cross_entropy, evaluate, squared_error, train_step
from jaxreg.train.sweep import Setting, SweepResult, sweep

__all__ = [
    "FitResult",
    "OptimizerConfig",
    "Plan",
    "RunConfig",
    "RunOptimizer",
    "Setting",
    "SweepResult",
    "TrainState",
    "TrainingDiverged",
    "create_train_state",
    "cross_entropy",
    "evaluate",
    "fit",
    "fit_plan",
    "learning_rate_schedule",
    "make_optimizer",
    "make_plan",
    "prefetch",
    "scan_epoch",
    "squared_error",
    "stream_epoch",
    "sweep",
    "train_step",
    "update_plateau",
]
