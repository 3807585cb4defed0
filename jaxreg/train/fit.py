"""``fit``: train a flax model for some epochs, with validation, history and checkpoints.

Per epoch ``e`` (0-based): shuffle with ``fold_in(fold_in(key(seed), 1), e)`` and step through the
batches (one ``lax.scan`` on device, or streamed from the host: see :mod:`jaxreg.train.epoch`),
evaluate on the validation data, record the history, feed the plateau transform the monitored
metric, checkpoint (every ``checkpoint_every`` epochs), call the callbacks. Seed 004's recipe (one
of the project's numbered source documents: ``docs/formulas.md``) is ``fit(SeedMLP(),
dict(name="adam"), mnist, epochs=10, batch_size=128)``.

Compilation: a call compiles the model's initializer (once per model and input shape in a process),
the epoch (every call: its step closes over the optimizer built for the call), the evaluation (once
per model and data shape in a process: validation, test) and, with a plateau, its update; a few tiny
eager ops aside, that is all. The compile times are measured in ``benchmarks/RESULTS.md`` ("Notes
moved from docstrings"). ``fit`` leaves JAX's configuration alone; to keep compiled programs across
calls and processes, enable JAX's persistent compilation cache first, as the ``jaxreg`` command
does::

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
import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreg._validate import check_int, require
from jaxreg.train import distributed, divergence, interrupt, nnx_bridge
from jaxreg.train._inputs import check_fit_inputs
from jaxreg.train.divergence import MAX_CONSECUTIVE_SKIPS
from jaxreg.train.epoch import scan_epoch, stream_epoch
from jaxreg.train.optimizer import (
    Optimizer,
    _plateau_scale,
    effective_l2,
    make_optimizer,
    plateau_states,
    update_plateau,
)
from jaxreg.train.state import TrainState, create_train_state
from jaxreg.train.step import default_loss, evaluate, train_step

DEVICE_DATA_BYTES = 1 << 30
"""Training sets up to this size run in scan mode by default."""

Callback = Callable[[int, TrainState, dict[str, float]], Any]

def monitor_mode(monitor: str) -> str:
    """Keras's ``mode="auto"``: ``"max"`` for accuracy-like names (containing ``acc``),
    ``"min"`` otherwise (losses)."""
    return "max" if "acc" in monitor else "min"


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


def _split_data(data: Any, validation_split: float, validation_data: Any) -> tuple:
    """``(x, y), validation (x, y) or None, test (x, y) or None`` from a dataset or arrays."""
    if isinstance(data, (tuple, list)):
        (x, y), test = data, None
    else:
        x, y, test = data.x_train, data.y_train, (data.x_test, data.y_test)
    x, y = np.asarray(x), np.asarray(y)
    if validation_data is None and validation_split:
        n_val = int(round(len(x) * validation_split))  # the last examples, as Keras
        validation_data = (x[-n_val:], y[-n_val:])
        x, y = x[:-n_val], y[:-n_val]
    return (x, y), validation_data, test


def _resolve_optimizer(optimizer: Any, total_steps: int, monitor: str) -> Optimizer:
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, dict):
        plateau = optimizer.get("plateau")
        if plateau is not None and plateau.get("mode", "auto") == "auto":
            optimizer = {**optimizer, "plateau": {**plateau, "mode": monitor_mode(monitor)}}
        return make_optimizer(**{"total_steps": total_steps, **optimizer})
    return Optimizer(tx=optimizer)


def _check_plateau_mode(opt_state: Any, monitor: str) -> bool:
    """Whether ``opt_state`` holds plateau states; ValueError if one of them minimizes an
    accuracy-like ``monitor`` or maximizes a loss (read from its configuration)."""
    states = plateau_states(opt_state)
    expected = monitor_mode(monitor)
    for s in states:
        if s.config.mode != expected and ("acc" in monitor or "loss" in monitor):
            raise ValueError(f"the plateau has mode={s.config.mode!r} but monitors {monitor!r}, "
                             f"which should be {'maximized' if expected == 'max' else 'minimized'}:"
                             f" build it with mode={expected!r} (fit's optimizer dicts choose "
                             f"the mode from monitor when plateau has no mode or mode='auto')")
    return bool(states)


def _epoch_logs(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """Means over the epoch's applied (not skipped) steps, and the count of skipped ones."""
    metrics = jax.device_get(metrics)
    applied = ~metrics["skipped"]
    logs = {k: float(v[applied].mean()) if applied.any() else math.nan
            for k, v in metrics.items() if k != "skipped"}
    logs["skipped_steps"] = int((~applied).sum())
    return logs


def _stops(answer: Any) -> bool:
    """A callback's answer as a stop flag: the truth of a concrete value (``True``,
    ``np.bool_``, a jax bool scalar, ``1``); ``None`` continues."""
    return answer is not None and bool(np.asarray(jax.device_get(answer)))


def _hyperparams(opt: Optimizer, opt_state: Any, batch_size: int) -> dict[str, float]:
    """Learning rate (times the plateau scale) and penalty strengths in effect at the last
    step, read from the injected hyperparameters (NaN when the optimizer does not expose them)."""
    hyperparams = optax.tree_utils.tree_get(opt_state, "hyperparams", default={})
    lr, l2, l1 = (float(hyperparams.get(k, math.nan)) for k in ("learning_rate", "l2", "l1"))
    return {
        "learning_rate": lr * float(_plateau_scale(opt_state)),
        "l2_strength": effective_l2(l2, batch_size, opt.batch_scaled),
        "l1_strength": l1,
    }


class _Placement(NamedTuple):
    """Where a run's arrays live: the initial ``state`` (sharded over a mesh or on the default
    device), its ``state_sharding`` (``None`` without a mesh), the jit ``out_shardings`` keyword
    arguments of a step or epoch, and how to place a batch (``put_batch``: split over the
    devices) and whole arrays (``put_data``: replicated)."""

    state: TrainState
    state_sharding: Any
    sharded: dict[str, Any]
    put_batch: Callable[[Any], Any]
    put_data: Callable[[Any], Any]
    batch_sharding: Any


def _placement(init: Callable[[], TrainState], mesh: jax.sharding.Mesh | None) -> _Placement:
    """The state made by ``init`` and the placement functions, for ``mesh`` or one device."""
    if mesh is None:
        return _Placement(init(), None, {}, jax.device_put, jax.device_put, None)
    state, state_sharding = distributed.create_sharded(init, mesh)
    return _Placement(
        state, state_sharding, dict(out_shardings=(state_sharding, distributed.replicated(mesh))),
        functools.partial(distributed.put, sharding=distributed.batch_sharding(mesh)),
        functools.partial(distributed.put, sharding=distributed.replicated(mesh)),
        distributed.batch_sharding(mesh))


def _epoch_runner(step: Callable, place: _Placement, *, on_device: bool, batch_size: int,
                  unroll: int) -> Callable:
    """``run_epoch(state, x, y, key, ...) -> (state, metrics)``: one jitted ``lax.scan`` over
    device-resident data (:func:`scan_epoch`), or a jitted step fed batches from the host
    (:func:`stream_epoch`, which takes ``on_step=``); the state's buffers are donated."""
    if on_device:
        return jax.jit(
            functools.partial(
                scan_epoch,
                step=step,
                batch_size=batch_size,
                unroll=unroll,
                batch_sharding=place.batch_sharding,
            ),
            donate_argnums=0,
            **place.sharded,
        )
    return functools.partial(stream_epoch, step=jax.jit(step, donate_argnums=0, **place.sharded),
                             batch_size=batch_size, put=place.put_batch)


def fit(
    model: Any,
    optimizer: Optimizer | optax.GradientTransformation | dict[str, Any],
    data: Any,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    validation_split: float = 0.0,
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
    """Trains ``model``: a linen module called as ``model.apply(vars, x, train=...)``, or a flax
    ``nnx.Module`` called as ``model(x)`` with ``.train()``/``.eval()`` modes.

    An NNX module is split once (:mod:`jaxreg.train.nnx_bridge`): its ``nnx.Param`` variables
    are the trained parameters, the rest (batch statistics, ``nnx.Rngs`` state for dropout)
    is carried through the steps, and the epoch is the same ``lax.scan`` as for linen. It
    trains from its own initial weights (``seed`` then fixes the data order only);
    ``FitResult.model`` is the trained module. The module passed in is not modified.

    Args:
        optimizer: an :class:`Optimizer`, a plain optax transformation, or keyword arguments of
            :func:`make_optimizer` (``total_steps`` defaults to the run's number of steps).
        data: a :class:`jaxreg.data.Dataset` (its test split is evaluated at the end when
            ``test``) or ``(x, y)`` arrays. Integer ``y`` means classification.
        epochs, batch_size, seed: each epoch takes ``len(x) // batch_size`` steps; the last
            partial batch is dropped. ``seed`` (in ``[0, 2**32)``: JAX keys take 32 bits)
            fixes the initialization and the data order.
        validation_split, validation_data: hold out the last fraction of ``(x, y)``
            (``round(len(x) * validation_split)`` examples, at least 1; 0: none), or use the
            given ``(x, y)`` (then ``validation_split`` is 0), for the ``val_*`` metrics.
        loss_fn: per-example loss ``(outputs, targets) -> [B]``; default softmax cross-entropy
            for integer targets, squared error otherwise.
        monitor: the history key fed after each epoch to every
            :func:`jaxreg.reduce_on_plateau` state in the optimizer state (the one
            ``make_optimizer(plateau=...)`` adds or any in a chain of your own;
            ``optax.contrib.reduce_on_plateau`` raises ``ValueError``). An optimizer dict whose
            ``plateau`` has no ``mode`` (or ``"auto"``) gets Keras's ``"auto"``: ``"max"`` for
            accuracy-like names, else ``"min"``; a plateau whose mode contradicts an accuracy
            or loss ``monitor`` raises ``ValueError``.
        skip_nonfinite: a step whose gradient, or whose new parameters, optimizer state or
            batch statistics, have a NaN/Inf leaves them all unchanged and is counted in
            ``skipped_steps`` (:func:`optax.apply_if_finite`'s semantics, plus the check of
            the result: a NaN learning rate gives finite gradients but NaN parameters; see
            :func:`train_step`).
        max_consecutive_skips: after this many skipped steps in a row (default
            :data:`MAX_CONSECUTIVE_SKIPS`; checked at the end of each epoch, counted across a
            resume), or an epoch ending with more than half its steps skipped in a row, raise
            :class:`TrainingDiverged` before that epoch is checkpointed; more than 10% of an
            epoch's steps skipped is a :class:`jaxreg.train.divergence.SkipWarning`
            (:mod:`jaxreg.train.divergence`).
            ``None``: never raise.
        compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision (float32 parameters, batch
            statistics and loss).
        on_device: run each epoch as one ``lax.scan`` over device-resident data; default: when
            the training arrays take at most ``DEVICE_DATA_BYTES``. Otherwise stream batches.
        unroll: ``lax.scan`` unrolling in scan mode.
        callbacks: ``callback(epoch, state, logs)`` after each epoch (``logs``: that epoch's
            history entries); a true answer stops training (``True``, ``np.bool_``, a concrete
            jax bool, ``1``: its truth value; ``None`` continues).
        progress: a tqdm bar over steps (steps/s, loss, accuracy), updated per epoch in scan
            mode and per step when streaming.
        checkpoint_dir, resume, checkpoint_every: checkpoint every ``checkpoint_every`` epochs,
            after the last one and when stopped (:mod:`jaxreg.train.checkpoint`). Without
            ``resume``, a ``checkpoint_dir`` holding a run (any checkpoint) is refused; with it,
            continue from the newest intact checkpoint there (damaged newer ones are skipped
            with a warning and renamed ``<k>.damaged``), which must be of the same run: model,
            optimizer, batch size, seed and data shapes (``epochs`` may differ). Resuming is
            bit-exact: an interrupted and resumed run ends with the same state as an
            uninterrupted one. A checkpoint restores onto any mesh (it is read with this
            run's shardings).
        mesh: data-parallel training over a :func:`jaxreg.train.distributed.make_mesh` mesh:
            each batch (also each batch gathered inside the scan, in scan mode) is split
            over the devices, the state replicated (or FSDP-split); results equal
            single-device training up to float rounding. Default: all devices (of all
            processes, after :func:`jaxreg.train.distributed.initialize`) when there are
            several, else plain single-device execution. ``batch_size`` is the global batch
            and must be divisible by ``accumulate`` times the number of devices. With several
            processes, every process calls ``fit`` with the same arguments and data; only
            process 0 shows the progress bar; callbacks run in every process and must agree
            on stopping.
        accumulate: gradient accumulation: each batch of ``batch_size`` runs as
            ``accumulate`` micro-batches, averaged into one optimizer step
            (:func:`jaxreg.train.train_step`); regularizers see the effective
            ``batch_size``, batch normalization updates its running averages per micro-batch.

    Raises:
        TypeError, ValueError: a bad argument, named with its value, before any work
            (:func:`jaxreg.train._inputs.check_fit_inputs`).

    Returns:
        A :class:`FitResult`. ``history`` has per-epoch lists ``loss``, ``accuracy`` (integer
        targets), ``val_loss``, ``val_accuracy`` (with validation data), ``learning_rate``
        (the injected learning rate times the scale of every plateau; NaN when the optimizer
        does not expose its learning rate through ``optax.inject_hyperparams``),
        ``l2_strength`` (divided by the batch size when batch-scaled), ``l1_strength``,
        ``skipped_steps`` and ``epoch_seconds``.

    Raises:
        TrainingDiverged: ``max_consecutive_skips`` skipped steps in a row, or an epoch
            ending with more than half its steps skipped in a row.
        ValueError: bad arguments (see above), a plateau that cannot be fed or whose mode
            contradicts ``monitor``.
    """
    model = nnx_bridge.wrap(model)
    check_fit_inputs(model, optimizer, data, epochs=epochs, batch_size=batch_size, seed=seed,
                     validation_split=validation_split, validation_data=validation_data, test=test,
                     monitor=monitor, accumulate=accumulate, unroll=unroll, loss_fn=loss_fn)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    (x, y), validation, test_data = _split_data(data, validation_split, validation_data)
    steps = len(x) // batch_size
    opt = _resolve_optimizer(optimizer, total_steps=epochs * steps, monitor=monitor)
    if loss_fn is None:
        loss_fn = default_loss(y)

    mesh = distributed.default_mesh() if mesh is None else mesh
    devices = 1 if mesh is None else mesh.size
    require(batch_size % (accumulate * devices) == 0, "batch_size",
            f"a multiple of accumulate={accumulate} times the {devices} devices", batch_size)

    step = functools.partial(
        train_step,
        model=model,
        tx=opt.tx,
        loss_fn=loss_fn,
        compute_dtype=compute_dtype,
        accumulate=accumulate,
        skip_nonfinite=skip_nonfinite,
    )
    place = _placement(functools.partial(create_train_state, model, opt.tx, x[:1], seed), mesh)
    state = place.state
    has_plateau = _check_plateau_mode(state.opt_state, monitor)
    require(not has_plateau or not monitor.startswith("val_") or validation is not None,
            "validation_split", f"> 0, or validation_data given: the plateau monitors {monitor!r}",
            validation_split)
    if on_device is None:
        on_device = x.nbytes + y.nbytes <= DEVICE_DATA_BYTES
    if on_device:
        x, y = place.put_data(x), place.put_data(y)
    run_epoch = _epoch_runner(
        step, place, on_device=on_device, batch_size=batch_size, unroll=unroll
    )
    evaluate_run = functools.partial(evaluate, model, loss_fn=loss_fn, compute_dtype=compute_dtype)

    def eval_fn(state, x, y):
        x, y = (a if isinstance(a, jax.Array) else place.put_data(np.asarray(a)) for a in (x, y))
        return evaluate_run(state, x, y)

    if validation is not None:  # placed once, not at every epoch's evaluation
        validation = tuple(place.put_data(np.asarray(a)) for a in validation)

    feed_plateau = jax.jit(
        update_plateau,
        **({} if mesh is None else dict(out_shardings=place.state_sharding.opt_state)),
    )
    history: dict[str, list] = {}
    start = 0
    data_key = jax.random.fold_in(jax.random.key(seed), 1)
    consecutive_skips = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(interrupt.deferred())
        interrupt.check()
        mngr = run = None
        if checkpoint_dir is not None:
            from jaxreg.train import checkpoint  # orbax, only when checkpointing
            run = checkpoint.fingerprint(
                model=model,
                optimizer=optimizer if isinstance(optimizer, dict) else type(optimizer).__name__,
                optimizer_state=_tree_signature(state.opt_state),
                batch_size=batch_size,
                seed=seed,
                train_data=(x, y),
                validation_data=validation,
            )
            mngr = _open_checkpoints(checkpoint_dir, resume, stack)
            if resume and (
                restored := checkpoint.restore_latest(mngr, state, run=run, set_aside=True)
            ):
                start, state, history = restored
                consecutive_skips = checkpoint.skips(mngr, start)
        interrupt.check()
        bar = stack.enter_context(tqdm(total=epochs * steps, initial=start * steps, unit="step",
                                       disable=not progress or not distributed.is_primary()))
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            epoch_key = jax.random.fold_in(data_key, epoch)
            if on_device:
                state, metrics = run_epoch(state, x, y, epoch_key)
            else:
                state, metrics = run_epoch(state, x, y, epoch_key, on_step=lambda: bar.update(1))
            logs = _epoch_logs(metrics)
            logs["epoch_seconds"] = time.perf_counter() - t0
            if validation is not None:
                logs.update({f"val_{k}": v for k, v in eval_fn(state, *validation).items()})
            logs.update(_hyperparams(opt, state.opt_state, batch_size))
            if has_plateau:
                state = state.replace(opt_state=feed_plateau(state.opt_state, value=logs[monitor]))
            for k, v in logs.items():
                history.setdefault(k, []).append(v)
            consecutive_skips = divergence.check_epoch(  # before this epoch is checkpointed
                jax.device_get(metrics["skipped"]), consecutive_skips, epoch=epoch,
                max_consecutive_skips=max_consecutive_skips, history=history,
                checkpointed=mngr is not None)
            saved = mngr is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs
                                          or interrupt.requested())
            if saved:
                checkpoint.save(mngr, epoch + 1, state, history, run, skips=consecutive_skips)
            bar.update(steps if on_device else 0)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in logs.items() if "loss" in k or "accuracy" in k}
            )
            stop = any([_stops(cb(epoch, state, logs)) for cb in callbacks])
            if mngr is not None and not saved and (stop or interrupt.requested()):
                checkpoint.save(mngr, epoch + 1, state, history, run, skips=consecutive_skips)
            interrupt.check()  # a safe point: the epoch's checkpoint is written (or being written)
            if stop:
                break
    # leaving the block closed the manager: every checkpoint is complete on disk

    test_metrics = eval_fn(state, *test_data) if test and test_data is not None else None
    return FitResult(state=state, history=history, test=test_metrics, evaluate=eval_fn,
                     model=nnx_bridge.merge(model, state))


def _tree_signature(tree: Any) -> str:
    """A short digest of a pytree's structure and its leaves' shapes and dtypes."""
    text = (
        f"{jax.tree.structure(tree)} {[(np.shape(a), str(a.dtype)) for a in jax.tree.leaves(tree)]}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_checkpoints(directory: str, resume: bool, stack: contextlib.ExitStack) -> Any:
    """The checkpoint manager of a run in ``directory``, once the directory is checked (it
    holds no run unless ``resume``: :func:`jaxreg.train.rundir.prepare`) and locked for the
    run (by process 0); closed, every save complete, when ``stack`` unwinds."""
    from jaxreg.train import checkpoint, rundir

    rundir.prepare(directory, resume=resume, what="checkpoint_dir")
    if jax.process_count() > 1:  # all have checked before any writes
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxreg fit: checkpoint_dir checked")
    if distributed.is_primary():
        stack.enter_context(rundir.lock(directory))
    mngr = checkpoint.manager(directory, asynchronous=True)
    stack.callback(mngr.close)
    return mngr
