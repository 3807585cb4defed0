"""``fit``: train a flax model for some epochs, with validation, history and checkpoints.

Per epoch ``e`` (0-based): shuffle with ``fold_in(fold_in(key(seed), 1), e)`` and step through the
batches (one ``lax.scan`` on device, or streamed from the host: see :mod:`jaxreg.train.epoch`),
evaluate on the validation data, record the history, feed the plateau transform the monitored
metric, checkpoint (every ``checkpoint_every`` epochs), call the callbacks. Seed 004's recipe (one
of the project's numbered source documents: ``docs/formulas.md``) is ``fit(SeedMLP(),
dict(name="adam"), mnist, epochs=10, batch_size=128)``.

Compilation: a call compiles the initial state (the model's and optimizer's initializers and the
keys, one program), the epoch (every call: its step closes over the optimizer built for the call),
the epoch keys (:func:`jaxreg.train.plan.epoch_key`), the evaluation (once per model in a process:
one program on blocks of ``EVAL_BATCH`` examples serves validation, test and training data of any
size, :func:`jaxreg.train.evaluate`) and, with a plateau, its update. On one device all but the
state compile in a background thread while the state compiles
(:func:`jaxreg.train.plan.make_plan`). The compile times are in ``benchmarks/RESULTS.md``
("Fixed costs of jaxreg train"). ``fit`` leaves JAX's configuration alone; to keep compiled
programs across calls and processes, enable JAX's persistent compilation cache first, as the
``jaxreg`` command does::

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/jaxreg/xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # default: only >= 1 s

Checkpoints are written asynchronously (:mod:`jaxreg.train.checkpoint`): an epoch's save
overlaps the next epoch, and every save is complete on disk when ``fit`` returns or raises.
``fit`` holds a lock on ``checkpoint_dir`` (:mod:`jaxreg.train.rundir`) while it runs. A SIGINT
(Ctrl-C) stops it at the next epoch boundary, after that epoch's checkpoint, with
``KeyboardInterrupt``; a SIGTERM the same way, with ``interrupt.Terminated``, a
``SystemExit(143)`` (:mod:`jaxreg.train.interrupt`).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreg._validate import check_int
from jaxreg.train import distributed, divergence, interrupt, nnx_bridge
from jaxreg.train.config import RunConfig
from jaxreg.train.divergence import MAX_CONSECUTIVE_SKIPS
from jaxreg.train.optimizer import RunOptimizer
from jaxreg.train.plan import (
    Plan,
    append,
    epoch_entry,
    epoch_key,
    fingerprint,
    hyperparams,
    make_plan,
)
from jaxreg.train.state import TrainState

Callback = Callable[[int, TrainState, dict[str, float]], Any]


class FitResult(NamedTuple):
    """``state``: the final state. ``history``: per-epoch lists (see :func:`fit`). ``test``: test
    metrics (``loss``, ``accuracy``) at the end, or ``None``. ``evaluate(state, x, y)``: the
    metrics of a state on other data, with the model, loss and dtype of the run. ``model``: for
    an ``nnx.Module``, the trained module (``nnx.merge`` of the final state, in ``.eval()``
    mode); for a linen module, the module given."""

    state: TrainState
    history: dict[str, list]
    test: dict[str, float] | None
    evaluate: Callable[[TrainState, Any, Any], dict[str, float]]
    model: Any = None




def _stops(answer: Any) -> bool:
    """A callback's answer as a stop flag: the truth of a concrete value (``True``,
    ``np.bool_``, a jax bool scalar, ``1``); ``None`` continues."""
    return answer is not None and bool(np.asarray(jax.device_get(answer)))


def fit(
    model: Any,
    optimizer: RunOptimizer | optax.GradientTransformation | dict[str, Any],
    data: Any,
    *,
    epochs: int = RunConfig.epochs,
    batch_size: Any = RunConfig.batch_size,
    seed: int = RunConfig.seed,
    validation_split: float = RunConfig.validation_split,
    validation_data: tuple[Any, Any] | None = None,
    test: bool = True,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    monitor: str = "val_loss",
    skip_nonfinite: bool = True,
    compute_dtype: Any = None,
    on_device: bool | None = None,
    unroll: int = 1,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    checkpoint_every: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    accumulate: int = 1,
    max_consecutive_skips: int | None = MAX_CONSECUTIVE_SKIPS,
) -> FitResult:
    """Trains ``model``, a linen module (``model.apply(vars, x, train=...)``) or an
    ``nnx.Module``: :func:`jaxreg.train.plan.make_plan`, then :func:`fit_plan`. The details of
    each argument (NNX modules, plateaus, skipping, checkpoints, meshes): ``docs/training.md``.

    Args:
        model: the model; an ``nnx.Module`` trains from its own weights and is not modified.
        optimizer: a :class:`RunOptimizer`, an optax transformation, or :func:`make_optimizer`
            keyword arguments (``total_steps`` defaults to the run's steps).
        data: a :class:`jaxreg.data.Dataset` or ``(x, y)`` arrays (integer ``y``: classes).
        epochs: training epochs of ``len(x) // batch_size`` steps each.
        batch_size: examples per step (the last partial batch is dropped), or a batch-size
            schedule changing it at epoch boundaries: ``{epoch: size}``, ``[(epoch, size)]``
            or a :class:`jaxreg.schedules.BatchSizeSchedule` (:mod:`jaxreg.train.batching`).
        seed: in ``[0, 2**32)``: the initialization and the data order.
        validation_split: hold out the last fraction of ``(x, y)`` for ``val_*`` metrics.
        validation_data: ``(x, y)`` for the ``val_*`` metrics instead.
        test: evaluate the dataset's test split at the end.
        loss_fn: per-example ``(outputs, targets) -> [B]``; default cross-entropy for integer
            targets, else squared error.
        monitor: the history key fed to every plateau in the optimizer after each epoch.
        skip_nonfinite: leave the state unchanged at a step with a NaN/Inf (counted).
        compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision.
        on_device: one ``lax.scan`` per epoch (default: data up to
            :data:`jaxreg.train.plan.DEVICE_DATA_BYTES`).
        unroll: ``lax.scan`` unrolling in scan mode.
        callbacks: ``callback(epoch, state, logs)`` after each epoch; a true answer stops.
        progress: a tqdm bar over the steps.
        checkpoint_dir: checkpoint there (checked and locked while ``fit`` runs).
        resume: continue the same run from the newest intact checkpoint in ``checkpoint_dir``.
        checkpoint_every: checkpoint every this many epochs, after the last and when stopped.
        mesh: data-parallel devices (default: all devices when there are several).
        accumulate: micro-batches per step (gradient accumulation).
        max_consecutive_skips: skipped steps in a row that stop the run (``None``: never).

    Returns:
        A :class:`FitResult`; ``history`` has per-epoch lists ``loss``, ``accuracy``,
        ``val_loss``, ``val_accuracy``, ``learning_rate``, ``l2_strength``, ``l1_strength``,
        ``skipped_steps``, ``epoch_seconds`` and ``batch_size``.

    Raises:
        TypeError, ValueError: a bad argument (named with its value) before any work, or a
            plateau that cannot be fed; :class:`TrainingDiverged`: ``max_consecutive_skips``
            skipped steps in a row, or an epoch ending with more than half its steps skipped in
            a row (:mod:`jaxreg.train.divergence`).
    """
    _check_loop(checkpoint_every, max_consecutive_skips)  # before the plan's work
    plan = make_plan(model, optimizer, data, epochs=epochs, batch_size=batch_size, seed=seed,
                     validation_split=validation_split, validation_data=validation_data,
                     test=test, loss_fn=loss_fn, monitor=monitor, skip_nonfinite=skip_nonfinite,
                     compute_dtype=compute_dtype, on_device=on_device, unroll=unroll, mesh=mesh,
                     accumulate=accumulate)
    return fit_plan(plan, callbacks=callbacks, progress=progress, checkpoint_dir=checkpoint_dir,
                    resume=resume, checkpoint_every=checkpoint_every,
                    max_consecutive_skips=max_consecutive_skips)


def fit_plan(plan: Plan, *, callbacks: Sequence[Callback] = (), progress: bool = True,
             checkpoint_dir: str | Path | None = None, resume: bool = False,
             checkpoint_every: int = 1, claimed: bool = False,
             max_consecutive_skips: int | None = MAX_CONSECUTIVE_SKIPS,
             at_end: Callable[[FitResult], Any] | None = None) -> FitResult:
    """Trains a :class:`jaxreg.train.plan.Plan` (the loop of :func:`fit`, whose arguments these
    are). ``claimed``: the caller has already checked and locked the run directory holding
    ``checkpoint_dir`` (``jaxreg train``'s ``--out``), so it is neither checked nor locked again.
    ``at_end(result)``: the caller's end-of-run work, called with the result after the test
    evaluation and before the last checkpoint is waited for, so that the two overlap (it must
    not read the checkpoints); a failed write is still raised, after it (in place of its
    error, if any). A plan trains once: its initial state's buffers are donated to the first
    epoch.
    """
    _check_loop(checkpoint_every, max_consecutive_skips)
    state, start, consecutive_skips = plan.placement.state, 0, 0
    history: dict[str, list] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(interrupt.deferred())
        interrupt.check()
        mngr = run_fingerprint = None
        if checkpoint_dir is not None:
            from jaxreg.train import checkpoint  # orbax, only when checkpointing
            run_fingerprint = fingerprint(plan)
            mngr = _open_checkpoints(checkpoint_dir, resume, stack, claimed)
            if resume and (
                restored := checkpoint.restore_latest(mngr, state, run=run_fingerprint,
                                                       set_aside=True)
            ):
                start, state, history = restored
                consecutive_skips = checkpoint.skips(mngr, start)
        interrupt.check()
        steps = [len(plan.x) // b for b in plan.batch_sizes]
        bar = stack.enter_context(tqdm(total=sum(steps), initial=sum(steps[:start]),
                                       unit="step",
                                       disable=not progress or not distributed.is_primary()))
        for epoch in range(start, plan.epochs):
            t0 = time.perf_counter()
            key = epoch_key(np.uint32(plan.seed), np.uint32(epoch))
            extra = {} if plan.on_device else dict(on_step=lambda: bar.update(1))
            batch_size = plan.batch_sizes[epoch]
            state, metrics = plan.runners[batch_size](state, plan.x, plan.y, key, **extra)
            metrics = jax.device_get(metrics)  # waits for the epoch
            seconds = time.perf_counter() - t0
            validation = (None if plan.validation is None
                          else plan.evaluate(state, *plan.validation))
            logs = epoch_entry(metrics, seconds,
                               hyperparams(state.opt_state, batch_size,
                                           plan.optimizer.batch_scaled), validation)
            logs["batch_size"] = batch_size
            if plan.feed_plateau is not None:
                state = state.replace(opt_state=plan.feed_plateau(state.opt_state,
                                                                  value=logs[plan.monitor]))
            append(history, logs)
            consecutive_skips = divergence.check_epoch(  # before this epoch is checkpointed
                metrics["skipped"], consecutive_skips, epoch=epoch,
                max_consecutive_skips=max_consecutive_skips, history=history,
                checkpointed=mngr is not None)
            saved = mngr is not None and ((epoch + 1) % checkpoint_every == 0
                                          or epoch + 1 == plan.epochs or interrupt.requested())
            if saved:
                checkpoint.save(mngr, epoch + 1, state, history, run_fingerprint,
                                skips=consecutive_skips)
            bar.update(steps[epoch] if plan.on_device else 0)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in logs.items() if "loss" in k or "accuracy" in k}
            )
            stop = any([_stops(cb(epoch, state, logs)) for cb in callbacks])
            if mngr is not None and not saved and (stop or interrupt.requested()):
                checkpoint.save(mngr, epoch + 1, state, history, run_fingerprint,
                                skips=consecutive_skips)
            interrupt.check()  # a safe point: the epoch's checkpoint is written (or being written)
            if stop:
                break
        # the test evaluation and at_end overlap the last checkpoint's writing
        test_metrics = None if plan.test_data is None else plan.evaluate(state, *plan.test_data)
        result = FitResult(state=state, history=history, test=test_metrics,
                           evaluate=plan.evaluate, model=nnx_bridge.merge(plan.model, state))
        if at_end is not None:
            at_end(result)
    # leaving the block closed the manager: every checkpoint is complete on disk
    return result


def _check_loop(checkpoint_every: Any, max_consecutive_skips: Any) -> None:
    """ValueError/TypeError naming ``checkpoint_every`` or ``max_consecutive_skips`` unless an
    integer >= 1 (``max_consecutive_skips`` may be ``None``)."""
    check_int("checkpoint_every", checkpoint_every, 1)
    if max_consecutive_skips is not None:
        check_int("max_consecutive_skips", max_consecutive_skips, 1)


def _open_checkpoints(directory: str | Path, resume: bool, stack: contextlib.ExitStack,
                      claimed: bool) -> Any:
    """The checkpoint manager of a run in ``directory``, once the directory is checked (it
    holds no run unless ``resume``: :func:`jaxreg.train.rundir.prepare`) and locked for the
    run (by process 0), unless ``claimed`` (the caller did both for the directory holding it);
    closed, every save complete, when ``stack`` unwinds."""
    from jaxreg.train import checkpoint, rundir

    if not claimed:
        rundir.prepare(directory, resume=resume, what="checkpoint_dir")
        if jax.process_count() > 1:  # all have checked before any writes
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxreg fit: checkpoint_dir checked")
        if distributed.is_primary():
            stack.enter_context(rundir.lock(directory))
    mngr = checkpoint.manager(directory, asynchronous=True)
    stack.callback(mngr.close)
    return mngr
