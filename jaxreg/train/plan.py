"""``make_plan``: everything a run needs before its first epoch, done once.

:func:`make_plan` checks the inputs (:func:`jaxreg.train._inputs.check_fit_inputs`), splits the
data, resolves the optimizer and its total steps, chooses the loss, places the state and data
on the mesh and builds the step, epoch and evaluation functions. :func:`jaxreg.train.fit` is a
plan plus its loop (:func:`jaxreg.train.fit.fit_plan`); ``jaxreg train`` plans before it writes
its run directory, ``jaxreg eval`` plans to rebuild a run's state, and :func:`jaxreg.train.sweep`
shares :func:`split_data`, :func:`epoch_logs` and :func:`hyperparams`.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxreg._validate import require
from jaxreg.train import batching, distributed, nnx_bridge
from jaxreg.train import config as run_config
from jaxreg.train._inputs import check_fit_inputs
from jaxreg.train.config import RunConfig
from jaxreg.train.epoch import scan_epoch, stream_epoch
from jaxreg.train.optimizer import (
    RunOptimizer,
    effective_l2,
    make_optimizer,
    plateau_scale,
    plateau_states,
    scaled_hyperparams,
    update_plateau,
)
from jaxreg.train.state import TrainState, create_train_state
from jaxreg.train.step import (
    EVAL_BATCH,
    default_loss,
    evaluate,
    evaluation_blocks,
    evaluation_sums,
    train_step,
)

DEVICE_DATA_BYTES = 1 << 30
"""Training sets up to this size run in scan mode by default."""


INIT_CPU_OPTIONS: dict[str, str | bool] = {"xla_backend_optimization_level": "1"}
"""The XLA options with which the initial state's program compiles on CPU. LLVM's O1 compiles
this run-once program (threefry and the initializers) ~4x faster than the default O2, with the
same values bit for bit (checked for the built-in models, ``benchmarks/RESULTS.md``, "Fixed
costs of jaxreg train")."""


def monitor_mode(monitor: str) -> str:
    """Keras's ``mode="auto"``: ``"max"`` for accuracy-like names (containing ``acc``),
    ``"min"`` otherwise (losses)."""
    return "max" if "acc" in monitor else "min"


def split_data(data: Any, validation_split: float, validation_data: Any = None) -> tuple:
    """``(x, y), validation (x, y) or None, test (x, y) or None`` of a dataset or ``(x, y)``:
    validation holds out the last ``round(len(x) * validation_split)`` examples, as Keras."""
    if isinstance(data, (tuple, list)):
        (x, y), test = data, None
    else:
        x, y, test = data.x_train, data.y_train, (data.x_test, data.y_test)
    x, y = np.asarray(x), np.asarray(y)
    if validation_data is None and validation_split:
        n_val = int(round(len(x) * validation_split))
        validation_data = (x[-n_val:], y[-n_val:])
        x, y = x[:-n_val], y[:-n_val]
    return (x, y), validation_data, test


def epoch_logs(metrics: dict[str, Any]) -> dict[str, float]:
    """Means of an epoch's stacked step metrics over its applied (not skipped) steps, and the
    count of skipped ones (``skipped_steps``)."""
    metrics = jax.device_get(metrics)
    applied = ~metrics["skipped"]
    logs = {k: float(v[applied].mean()) if applied.any() else math.nan
            for k, v in metrics.items() if k != "skipped"}
    logs["skipped_steps"] = int((~applied).sum())
    return logs


def hyperparams(opt_state: Any, batch_size: int, batch_scaled: bool) -> dict[str, np.ndarray]:
    """The history's ``learning_rate`` (times the plateau scale), ``l2_strength`` (effective,
    :func:`jaxreg.train.optimizer.effective_l2`) and ``l1_strength`` in effect at the last step,
    read from the injected hyperparameters (NaN when the optimizer does not expose them):
    0-d arrays for one state, ``[K]`` for ``K`` stacked (vmapped) states."""
    values = jax.device_get(optax.tree_utils.tree_get(opt_state, "hyperparams", default={}))
    lr, l2, l1 = (np.asarray(values.get(k, math.nan), np.float64)
                  for k in ("learning_rate", "l2", "l1"))
    scale = np.asarray(jax.device_get(plateau_scale(opt_state)), np.float64)
    return {"learning_rate": lr * scale,
            "l2_strength": np.asarray(effective_l2(l2, batch_size, batch_scaled)),
            "l1_strength": l1}


def epoch_entry(metrics: dict[str, Any], seconds: float, hyper: dict[str, Any],
                validation: dict[str, float] | None = None) -> dict[str, float]:
    """One epoch's history entry, as :func:`jaxreg.train.fit` and :func:`jaxreg.train.sweep`
    record it: :func:`epoch_logs`, ``epoch_seconds``, the ``val_*`` metrics and the
    :func:`hyperparams` of one state."""
    logs = epoch_logs(metrics)
    logs["epoch_seconds"] = seconds
    logs.update({f"val_{k}": v for k, v in (validation or {}).items()})
    logs.update({k: float(v) for k, v in hyper.items()})
    return logs


def append(history: dict[str, list], entry: dict[str, Any]) -> None:
    """Appends each value of an epoch's ``entry`` to ``history``'s list of its key."""
    for k, v in entry.items():
        history.setdefault(k, []).append(v)


class Placement(NamedTuple):
    """Where a run's arrays live: the initial ``state`` (sharded over a mesh or on the default
    device), its ``state_sharding`` (``None`` without a mesh), the jit ``out_shardings``
    keyword arguments of a step or epoch (``sharded``), how to place a batch (``put_batch``:
    split over the devices) and whole arrays (``put_data``: replicated), and the
    ``batch_sharding``."""

    state: TrainState
    state_sharding: Any
    sharded: dict[str, Any]
    put_batch: Callable[[Any], Any]
    put_data: Callable[[Any], Any]
    batch_sharding: Any


def place(init: Callable[[], TrainState], mesh: jax.sharding.Mesh | None,
          ahead: Callable[[Placement], Any] = lambda placement: None) -> Placement:
    """The state made by ``init`` and the placement functions, for ``mesh`` or one device. The
    state is one compiled program (its key derivation, the model's and the optimizer's
    initializers); ``ahead`` gets the placement with the state's shapes (and shardings) in
    place of the state before that program compiles, to start other compilations alongside
    (:func:`compile_ahead`). On one device the state is committed to it, so that the programs
    compiled ahead for it also serve a state restored from a checkpoint (orbax's are committed).
    """
    if mesh is None:  # committed to the device, as a state restored from a checkpoint is
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        lowered = jax.jit(init, out_shardings=device).lower()
        placement = Placement(lowered.out_info, None, {}, jax.device_put, jax.device_put, None)
    else:
        lowered, state_sharding = distributed.lower_sharded(init, mesh)
        placement = Placement(
            lowered.out_info, state_sharding,
            dict(out_shardings=(state_sharding, distributed.replicated(mesh))),
            functools.partial(distributed.put, sharding=distributed.batch_sharding(mesh)),
            functools.partial(distributed.put, sharding=distributed.replicated(mesh)),
            distributed.batch_sharding(mesh))
    ahead(placement)
    options = INIT_CPU_OPTIONS if jax.default_backend() == "cpu" else None
    return placement._replace(state=lowered.compile(options)())


class Plan(NamedTuple):
    """A planned run (:func:`make_plan`).

    Attributes:
        model: the model (an ``nnx.Module`` wrapped, :mod:`jaxreg.train.nnx_bridge`).
        optimizer: the resolved :class:`jaxreg.train.RunOptimizer`.
        x, y: the training arrays (on the devices in scan mode, else on the host).
        validation: the placed validation ``(x, y)``, or ``None``.
        test_data: the test split ``(x, y)`` to evaluate at the end, or ``None``.
        epochs, seed, monitor: as given to :func:`make_plan`.
        batch_size, steps: the first epoch's batch size and steps, ``len(x) // batch_size``.
        on_device: scan mode (the epoch is one ``lax.scan``) or streamed.
        placement: the initial state and placement functions (:class:`Placement`).
        evaluate: ``(state, x, y) -> metrics`` with the run's model, loss and dtype.
        feed_plateau: jitted :func:`jaxreg.train.update_plateau`, or ``None`` without plateau.
        identity: what a checkpoint of this run must match (see
            :func:`jaxreg.train.plan.fingerprint`).
        batch_sizes: each epoch's batch size (:func:`jaxreg.train.batching.epoch_sizes`).
        runners: ``{batch size: run_epoch}``, ``run_epoch(state, x, y, key[, on_step=]) ->
            (state, stacked metrics)``, each compiled ahead on one device (:func:`compile_ahead`).
        scaled: ``{batch size: hyperparameters}`` an optimizer dict's ``scaling`` resolved
            (:func:`jaxreg.train.optimizer.scaled_hyperparams`; the model's ``bn_momentum``
            too, when it has one), or ``{}``.
    """

    model: Any
    optimizer: RunOptimizer
    x: Any
    y: Any
    validation: tuple[Any, Any] | None
    test_data: tuple[Any, Any] | None
    epochs: int
    batch_size: int
    seed: int
    monitor: str
    steps: int
    on_device: bool
    placement: Placement
    evaluate: Callable[[TrainState, Any, Any], dict[str, float]]
    feed_plateau: Callable | None
    identity: dict[str, Any]
    batch_sizes: tuple[int, ...]
    runners: dict[int, Any]
    scaled: dict[int, dict[str, Any]]


def resolve_optimizer(optimizer: Any, total_steps: int, monitor: str) -> RunOptimizer:
    """A :class:`RunOptimizer` from ``fit``'s ``optimizer`` argument: as is, from
    :func:`make_optimizer` keyword arguments (``total_steps`` and the plateau's ``auto`` mode
    filled in), or a plain optax transformation."""
    if isinstance(optimizer, RunOptimizer):
        return optimizer
    if isinstance(optimizer, dict):
        plateau = optimizer.get("plateau")
        if plateau is not None and plateau.get("mode", "auto") == "auto":
            optimizer = {**optimizer, "plateau": {**plateau, "mode": monitor_mode(monitor)}}
        return make_optimizer(**{"total_steps": total_steps, **optimizer})
    return RunOptimizer(tx=optimizer)


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


_AHEAD = ThreadPoolExecutor(1, thread_name_prefix="jaxreg-compile")


def compile_ahead(jitted: Any, *args: Any, **kwargs: Any) -> Any:
    """Starts compiling ``jitted`` for these (abstract) arguments in a background thread (XLA
    compiles without the GIL), overlapping host work; JAX's in-memory cache then holds the
    program, so a call made after the future is done does not compile again. A failed
    compilation is left to that call to report (the future is only waited on). Returns the
    compilation's ``concurrent.futures.Future``."""
    return _AHEAD.submit(lambda: jitted.lower(*args, **kwargs).compile())


def _after(futures: list[Future], fn: Callable) -> Callable:
    """``fn``, called once the compilations in ``futures`` have finished."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        for future in futures:
            future.exception()  # waits
        return fn(*args, **kwargs)

    return call


@jax.jit
def epoch_key(seed: Any, epoch: Any) -> jax.Array:
    """The key of epoch ``epoch``'s data order, ``fold_in(fold_in(key(seed), 1), epoch)``, as
    one program (``seed`` and ``epoch`` as ``np.uint32``, compiled ahead by :func:`make_plan`)
    instead of three tiny eager ones."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), epoch)


def _epoch_runner(step: Callable, placement: Placement, *, on_device: bool, batch_size: int,
                  unroll: int) -> Callable:
    """``run_epoch(state, x, y, key, ...) -> (state, metrics)``: one jitted ``lax.scan`` over
    device-resident data (:func:`scan_epoch`), or a jitted step fed batches from the host
    (:func:`stream_epoch`, which takes ``on_step=``); the state's buffers are donated."""
    if on_device:
        return jax.jit(functools.partial(scan_epoch, step=step, batch_size=batch_size,
                                         unroll=unroll,
                                         batch_sharding=placement.batch_sharding),
                       donate_argnums=0, **placement.sharded)
    return functools.partial(
        stream_epoch, step=jax.jit(step, donate_argnums=0, **placement.sharded),
        batch_size=batch_size, put=placement.put_batch)


def make_plan(model: Any, optimizer: Any, data: Any, *, epochs: int = RunConfig.epochs,
              batch_size: Any = RunConfig.batch_size, seed: int = RunConfig.seed,
              validation_split: float = RunConfig.validation_split, validation_data: Any = None,
              test: bool = True, loss_fn: Callable | None = None, monitor: str = "val_loss",
              skip_nonfinite: bool = True, compute_dtype: Any = None,
              on_device: bool | None = None, unroll: int = 1,
              mesh: jax.sharding.Mesh | None = None, accumulate: int = 1,
              trains: bool = True, evaluates_train: bool = False) -> Plan:
    """Checks the arguments (as :func:`jaxreg.train.fit` documents them) and plans the run.

    The programs the run will need compile while its state is initialized
    (:func:`jaxreg.train.plan.compile_ahead`), on a mesh for the state's and data's shardings:
    the epoch and its keys unless ``trains=False`` (only the state's shapes are wanted), and
    the evaluation (one program for the validation and test data, and for the training data
    with ``evaluates_train``).

    Returns:
        A :class:`Plan`: the initial state in ``plan.placement.state``; nothing is trained.

    Raises:
        TypeError, ValueError: a bad argument, named with its value, before any work.
    """
    model = nnx_bridge.wrap(model)
    schedule = not isinstance(batch_size, int)  # checked by batching.epoch_sizes below
    check_fit_inputs(model, optimizer, data, epochs=epochs,
                     batch_size=1 if schedule else batch_size, seed=seed,
                     validation_split=validation_split, validation_data=validation_data, test=test,
                     monitor=monitor, accumulate=accumulate, unroll=unroll, loss_fn=loss_fn)
    (x, y), validation, test_data = split_data(data, validation_split, validation_data)
    run_config.check_steps(epochs, batching.fewest_steps(batch_size, len(x)))  # before sizes
    sizes = batching.epoch_sizes(batch_size, epochs, len(x))
    total_steps = (run_config.check_steps(epochs, len(x) // sizes[0]) if len(set(sizes)) == 1
                   else run_config.check_steps(1, sum(len(x) // b for b in sizes)))
    scaled: dict[int, dict[str, Any]] = {}
    resolved = optimizer  # the run's optimizer dict; a checkpoint records the one given
    if isinstance(optimizer, dict) and optimizer.get("scaling") is not None:
        resolved, scaled = resolve_scaling(optimizer, model, sizes, len(x), epochs)
    opt = resolve_optimizer(resolved, total_steps=total_steps, monitor=monitor)
    loss_fn = default_loss(y) if loss_fn is None else loss_fn
    mesh = distributed.default_mesh() if mesh is None else mesh
    devices = 1 if mesh is None else mesh.size
    for b in sizes:
        require(b % (accumulate * devices) == 0, "batch_size",
                f"a multiple of accumulate={accumulate} times the {devices} devices", b)
    step = functools.partial(train_step, model=model, tx=opt.tx, loss_fn=loss_fn,
                             compute_dtype=compute_dtype, accumulate=accumulate,
                             skip_nonfinite=skip_nonfinite)
    if on_device is None:
        on_device = x.nbytes + y.nbytes <= DEVICE_DATA_BYTES
    def runners_for(placement: Placement) -> dict[int, Callable]:
        """An epoch runner per distinct batch size (rule ``"ema"`` moves its BatchNorm momentum)."""
        return {b: _epoch_runner(
            step if "bn_momentum" not in scaled.get(b, {}) else functools.partial(
                step, model=model.clone(bn_momentum=scaled[b]["bn_momentum"])),
            placement, on_device=on_device, batch_size=b, unroll=unroll)
            for b in sorted(set(sizes))}

    evaluated = [a for a in (validation, test_data if test else None,
                             (x, y) if evaluates_train else None) if a is not None]
    epoch_compiled: list[Future] = []
    evaluations_compiled: list[Future] = []
    runners: dict[int, Callable] = {}

    data_sharding = None if mesh is None else distributed.replicated(mesh)  # put_data's

    def spec(a, rows=None):  # a placed array's shape (``rows`` first), dtype and sharding
        return jax.ShapeDtypeStruct((len(a) if rows is None else rows, *np.shape(a)[1:]),
                                    jax.dtypes.canonicalize_dtype(np.asarray(a).dtype),
                                    sharding=data_sharding)

    def ahead(abstract):  # the epochs and evaluations compile while the state does
        state = abstract.state
        runners.update(runners_for(abstract))
        if trains:
            scalar = jax.ShapeDtypeStruct((), np.uint32)
            epoch_compiled.append(compile_ahead(epoch_key, scalar, scalar))
        if on_device and trains:  # one program per distinct batch size
            epoch_compiled.extend(
                compile_ahead(run, state, spec(x), spec(y), jax.eval_shape(jax.random.key, 0))
                for run in runners.values())
        if evaluated:  # one program for every split: a block of EVAL_BATCH rows
            evaluations_compiled.append(compile_ahead(
                evaluation_sums, model, state.params, state.model_state,
                *(spec(a, EVAL_BATCH) for a in evaluated[0]), jax.ShapeDtypeStruct((), np.int32),
                loss_fn=loss_fn, compute_dtype=compute_dtype))

    placement = place(functools.partial(create_train_state, model, opt.tx, x[:1], seed), mesh,
                      ahead)
    runners = {b: _after(epoch_compiled, run)
               for b, run in (runners or runners_for(placement)).items()}
    has_plateau = _check_plateau_mode(placement.state.opt_state, monitor)
    require(not has_plateau or not monitor.startswith("val_") or validation is not None,
            "validation_split", f"> 0, or validation_data given: the plateau monitors {monitor!r}",
            validation_split)
    host = x, y
    if on_device:
        x, y = placement.put_data(x), placement.put_data(y)
    evaluate_run = _after(evaluations_compiled, functools.partial(
        evaluate, model, loss_fn=loss_fn, compute_dtype=compute_dtype))
    validation_blocks = None
    if validation is not None:  # placed once, not at every epoch's evaluation
        validation_blocks = evaluation_blocks(*validation, put=placement.put_data)
        validation = tuple(placement.put_data(np.asarray(a)) for a in validation)

    def evaluate_placed(state, xe, ye):  # the plan's own splits: blocks cut on the host
        if validation is not None and xe is validation[0] and ye is validation[1]:
            return evaluate_run(state, xe, ye, blocks=validation_blocks)
        cut = host if xe is x and ye is y else (xe, ye)  # no copy back from the device
        return evaluate_run(state, xe, ye, blocks=evaluation_blocks(*cut, put=placement.put_data))

    feed_plateau = None if not has_plateau else jax.jit(
        update_plateau,
        **({} if mesh is None else dict(out_shardings=placement.state_sharding.opt_state)))
    identity = dict(model=model, optimizer=(optimizer if isinstance(optimizer, dict)
                                            else type(optimizer).__name__),
                    batch_size=batching.changes(sizes), seed=seed)
    return Plan(model, opt, x, y, validation, test_data if test else None, epochs, sizes[0],
                seed, monitor, len(x) // sizes[0], on_device, placement, evaluate_placed,
                feed_plateau, identity, sizes, runners, scaled)


def resolve_scaling(optimizer: dict[str, Any], model: Any, sizes: tuple[int, ...],
                    num_examples: int, epochs: int
                    ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """``fit``'s optimizer dict with ``scaling`` given the run's batch size (``{step: size}``
    for a schedule), ``num_examples`` and ``epochs``, and the resolved hyperparameters of each
    size (the model's ``bn_momentum`` too, moved by rule ``"ema"``); ValueError naming
    ``scaling`` for ``"ema"`` on a model without a ``bn_momentum`` field."""
    rules = optimizer["scaling"]
    bn = getattr(model, "bn_momentum", None)
    require(bn is not None or "ema" not in ([rules] if isinstance(rules, str) else rules),
            "scaling", "rules for the model: 'ema' needs a linen model with a bn_momentum field",
            rules)
    starts = np.cumsum([0] + [num_examples // b for b in sizes[:-1]])
    steps = {int(s): b for s, b, prev in zip(starts, sizes, (None, *sizes[:-1]), strict=True)
             if b != prev}
    optimizer = {"num_examples": num_examples, "epochs": epochs, **optimizer,
                 "batch_size": sizes[0] if len(steps) == 1 else steps}
    kwargs = {k: v for k, v in optimizer.items() if k not in (
        "name", "learning_rate", "l2", "scaling", "scale_from", "batch_size", "num_examples",
        "epochs", "warmup_steps")}
    scaled = {b: scaled_hyperparams(
        optimizer.get("name", "adam"), optimizer.get("learning_rate", 1e-3),
        optimizer.get("l2", 0.0), kwargs, scaling=rules, scale_from=optimizer.get("scale_from"),
        batch_size=b, num_examples=num_examples, epochs=optimizer["epochs"], bn_momentum=bn,
        warmup_steps=optimizer.get("warmup_steps", 0))
        for b in sorted(set(sizes))}
    return optimizer, scaled



def fingerprint(plan: Plan) -> dict[str, str]:
    """The run's fingerprint a checkpoint of it carries
    (:func:`jaxreg.train.checkpoint.fingerprint`): model, optimizer, its state's structure,
    batch size, seed, data shapes."""
    from jaxreg.train import checkpoint  # orbax, only when checkpointing

    return checkpoint.fingerprint(**plan.identity,
                                  optimizer_state=_tree_signature(plan.placement.state.opt_state),
                                  train_data=(plan.x, plan.y), validation_data=plan.validation)


def _tree_signature(tree: Any) -> str:
    """A short digest of a pytree's structure and its leaves' shapes and dtypes."""
    text = (
        f"{jax.tree.structure(tree)} {[(np.shape(a), str(a.dtype)) for a in jax.tree.leaves(tree)]}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
