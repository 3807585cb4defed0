"""``fit``: train a flax model for some epochs, with validation, history and checkpoints.

Per epoch ``e`` (0-based): shuffle with ``fold_in(fold_in(key(seed), 1), e)`` and step
through the batches (one ``lax.scan`` on device, or streamed from the host: see
:mod:`jaxreg.train.epoch`), evaluate on the validation data, record the history, feed the
plateau transform the monitored metric, checkpoint, call the callbacks. The seed recipe
(seed 004) is ``fit(SeedMLP(), dict(name="adam"), mnist, epochs=10, batch_size=128)``.

Compilation: a call compiles the model's initializer (once per model and input shape in a
process), the epoch (every call: its step closes over the optimizer built for the call), the
evaluation (once per model and data shape in a process: validation, test) and, with a plateau,
its update; a few tiny eager ops aside, that is all. For the seed recipe on a 2-core CPU the
initializer and the epoch take about 1 s each, the epoch twice a hand-written loop's jitted
step (see ``benchmarks/RESULTS.md``). ``fit`` leaves JAX's configuration alone; to keep
compiled programs across calls and processes, enable JAX's persistent compilation cache first,
as the ``jaxreg`` command does::

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/jaxreg/xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # default: only >= 1 s
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreg._validate import require
from jaxreg.train import checkpoint, distributed, nnx_bridge
from jaxreg.train.epoch import scan_epoch, stream_epoch
from jaxreg.train.optimizer import (
    Optimizer,
    _plateau_scale,
    effective_l2,
    make_optimizer,
    update_plateau,
)
from jaxreg.train.state import TrainState, create_train_state
from jaxreg.train.step import default_loss, evaluate, train_step

DEVICE_DATA_BYTES = 1 << 30
"""Training sets up to this size run in scan mode by default."""

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


def _resolve_optimizer(optimizer: Any, total_steps: int) -> Optimizer:
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, dict):
        return make_optimizer(**{"total_steps": total_steps, **optimizer})
    return Optimizer(tx=optimizer)


def _epoch_logs(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """Means over the epoch's applied (not skipped) steps, and the count of skipped ones."""
    metrics = jax.device_get(metrics)
    applied = ~metrics["skipped"]
    logs = {k: float(v[applied].mean()) if applied.any() else math.nan
            for k, v in metrics.items() if k != "skipped"}
    logs["skipped_steps"] = int((~applied).sum())
    return logs


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
        return jax.jit(functools.partial(scan_epoch, step=step, batch_size=batch_size, unroll=unroll,
                                         batch_sharding=place.batch_sharding),
                       donate_argnums=0, **place.sharded)
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
    mesh: jax.sharding.Mesh | None = None,
    accumulate: int = 1,
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
            partial batch is dropped. ``seed`` fixes the initialization and the data order.
        validation_split, validation_data: hold out the last fraction of ``(x, y)``, or use
            the given ``(x, y)``, for the ``val_*`` metrics.
        loss_fn: per-example loss ``(outputs, targets) -> [B]``; default softmax cross-entropy
            for integer targets, squared error otherwise.
        monitor: the history key fed to the plateau transform after each epoch.
        skip_nonfinite: a step whose gradient has a NaN/Inf leaves parameters, optimizer
            state and batch statistics unchanged and is counted in ``skipped_steps``
            (:func:`optax.apply_if_finite`'s semantics; see :func:`train_step`). It never
            gives up, so a diverged run shows every step skipped; stop it with a callback.
        compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision (float32 parameters, batch
            statistics and loss).
        on_device: run each epoch as one ``lax.scan`` over device-resident data; default: when
            the training arrays take at most ``DEVICE_DATA_BYTES``. Otherwise stream batches.
        unroll: ``lax.scan`` unrolling in scan mode.
        callbacks: ``callback(epoch, state, logs)`` after each epoch (``logs``: that epoch's
            history entries); returning ``True`` stops training.
        progress: a tqdm bar over steps (steps/s, loss, accuracy), updated per epoch in scan
            mode and per step when streaming.
        checkpoint_dir, resume: checkpoint after every epoch (:mod:`jaxreg.train.checkpoint`);
            with ``resume``, continue from the latest checkpoint there. Resuming is bit-exact:
            an interrupted and resumed run ends with the same state as an uninterrupted one.
            A checkpoint restores onto any mesh (it is read with this run's shardings).
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

    Returns:
        A :class:`FitResult`. ``history`` has per-epoch lists ``loss``, ``accuracy`` (integer
        targets), ``val_loss``, ``val_accuracy`` (with validation data), ``learning_rate``
        (times the plateau scale), ``l2_strength`` (divided by the batch size when batch-scaled),
        ``l1_strength``, ``skipped_steps`` and ``epoch_seconds``.
    """
    model = nnx_bridge.wrap(model)
    (x, y), validation, test_data = _split_data(data, validation_split, validation_data)
    steps = len(x) // batch_size
    require(steps > 0, "batch_size", f"at most the {len(x)} training examples", batch_size)
    opt = _resolve_optimizer(optimizer, total_steps=epochs * steps)
    if loss_fn is None:
        loss_fn = default_loss(y)
    require(opt.plateau is None or not monitor.startswith("val_") or validation is not None,
            "validation_split", f"> 0, or validation_data given: the plateau monitors {monitor!r}",
            validation_split)

    mesh = distributed.default_mesh() if mesh is None else mesh
    devices = 1 if mesh is None else mesh.size
    require(accumulate >= 1 and batch_size % (accumulate * devices) == 0, "batch_size",
            f"a multiple of accumulate={accumulate} (>= 1) times the {devices} devices", batch_size)

    step = functools.partial(train_step, model=model, tx=opt.tx, loss_fn=loss_fn, compute_dtype=compute_dtype,
                             accumulate=accumulate, skip_nonfinite=skip_nonfinite)
    place = _placement(functools.partial(create_train_state, model, opt.tx, x[:1], seed), mesh)
    state = place.state
    if on_device is None:
        on_device = x.nbytes + y.nbytes <= DEVICE_DATA_BYTES
    if on_device:
        x, y = place.put_data(x), place.put_data(y)
    run_epoch = _epoch_runner(step, place, on_device=on_device, batch_size=batch_size, unroll=unroll)
    evaluate_run = functools.partial(evaluate, model, loss_fn=loss_fn, compute_dtype=compute_dtype)

    def eval_fn(state, x, y):
        x, y = (a if isinstance(a, jax.Array) else place.put_data(np.asarray(a)) for a in (x, y))
        return evaluate_run(state, x, y)

    if validation is not None:  # placed once, not at every epoch's evaluation
        validation = tuple(place.put_data(np.asarray(a)) for a in validation)

    feed_plateau = jax.jit(functools.partial(update_plateau, plateau=opt.plateau),
                           **({} if mesh is None else dict(out_shardings=place.state_sharding.opt_state)))
    history: dict[str, list] = {}
    start = 0
    mngr = None if checkpoint_dir is None else checkpoint.manager(checkpoint_dir)
    if resume and mngr is not None and (restored := checkpoint.restore_latest(mngr, state)) is not None:
        start, state, history = restored
    data_key = jax.random.fold_in(jax.random.key(seed), 1)

    bar = tqdm(total=epochs * steps, initial=start * steps, unit="step",
               disable=not progress or not distributed.is_primary())
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
        if opt.plateau is not None:
            state = state.replace(opt_state=feed_plateau(state.opt_state, value=logs[monitor]))
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if mngr is not None:
            checkpoint.save(mngr, epoch + 1, state, history)
        bar.update(steps if on_device else 0)
        bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if "loss" in k or "accuracy" in k})
        if any([cb(epoch, state, logs) is True for cb in callbacks]):
            break
    bar.close()
    if mngr is not None:
        mngr.close()

    test_metrics = eval_fn(state, *test_data) if test and test_data is not None else None
    return FitResult(state=state, history=history, test=test_metrics, evaluate=eval_fn,
                     model=nnx_bridge.merge(model, state))
