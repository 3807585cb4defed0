"""Training engine: state, step, whole-epoch runners, optimizer factory, checkpoints, ``fit``.

Modules, lowest first: ``state`` (the pytree) -> ``step`` (one pure step, evaluation) ->
``epoch`` (scan / streamed epoch) -> ``optimizer`` (the optax chain) -> ``checkpoint``
(orbax) -> ``fit`` (the loop) -> ``sweep`` (many settings at once, vmapped: a subpackage,
settings / memory / run). ``models`` holds the models the CLI and benchmarks train
(:data:`jaxreg.train.models.MODELS`), ``models_nnx`` the same as ``nnx.Module``s;
``nnx_bridge`` lets every entry point take an ``nnx.Module``; ``distributed`` the meshes and
multi-process start; ``rundir`` what makes a directory a run, its checks and lock;
``interrupt`` Ctrl-C deferred to safe points; ``divergence`` when skipped (non-finite) steps end
a run.
"""
from jaxreg._extras import require_train

require_train("jaxreg.train")

from jaxreg.train.divergence import TrainingDiverged
from jaxreg.train.epoch import prefetch, scan_epoch, stream_epoch
from jaxreg.train.fit import FitResult, fit
from jaxreg.train.optimizer import (
    Optimizer,
    learning_rate_schedule,
    make_optimizer,
    update_plateau,
)
from jaxreg.train.state import TrainState, create_train_state
from jaxreg.train.step import cross_entropy, evaluate, squared_error, train_step
from jaxreg.train.sweep import Setting, SweepResult, sweep

__all__ = [
    "FitResult",
    "Optimizer",
    "Setting",
    "SweepResult",
    "TrainState",
    "TrainingDiverged",
    "create_train_state",
    "cross_entropy",
    "evaluate",
    "fit",
    "learning_rate_schedule",
    "make_optimizer",
    "prefetch",
    "scan_epoch",
    "squared_error",
    "stream_epoch",
    "sweep",
    "train_step",
    "update_plateau",
]
