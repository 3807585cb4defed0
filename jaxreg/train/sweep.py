"""Hyperparameter sweeps: many regularization settings trained at once in one compiled program.

:func:`sweep` trains every setting of a grid (or list) of settings. Settings that can share a
program form a *group*; a group's ``K`` states are stacked along a leading *sweep axis* and one
jitted epoch, ``scan_epoch`` over ``jax.vmap(train_step)``, trains them all, each with its own
parameters, batch statistics, optimizer state and RNG key. The step and epoch functions are
those of :func:`jaxreg.train.fit`, so a setting's run is the ``fit`` run of that setting up to
float rounding.

What can be vmapped. The optimizer comes from :func:`jaxreg.train.make_optimizer`, which wraps
its chain in :func:`optax.inject_hyperparams`: ``learning_rate``, ``l2`` and ``l1`` are arrays
in the optimizer state, so one transformation serves all settings and each stacked state holds
its own values. Batch-scaled L2 adds ``(l2 / b) w`` to the gradient at batch size ``b``; within
a group ``b`` is fixed, so it is plain L2 with the *effective strength* ``l2 / b``
(``batch_scaled=False``: ``l2``), and on/off settings share the program. A zero penalty
shares the chain of a non-zero one: ``g + 0 * w`` is ``g`` exactly (with ``proximal`` L1, a
zero threshold gives ``(w + u) - w``, ``u`` up to rounding). Seeds are vmapped init keys:
setting ``s`` starts from ``create_train_state(..., seed=s)``, as ``fit(seed=s)``.

What cannot, and splits groups (run in turn, each compiled once): the batch size (array
shapes), the optimizer and ``proximal`` (the chain's structure), the learning-rate schedule and
its keyword arguments, and with a schedule other than ``fixed`` the learning rate too (a
schedule is a Python closure over ``eta_0``, re-evaluated at every step), and ``bn_momentum``
(a static attribute of the model: ``model.clone(bn_momentum=m)``, so the model needs a
``bn_momentum`` field).

Data order. All settings, in all groups, see the same data stream: epoch ``e`` shuffles with
``fold_in(fold_in(key(data_seed), 1), e)``, the order of ``fit(seed=data_seed)``. Settings
therefore differ only in their hyperparameters and init seed, and a setting with
``seed == data_seed`` reproduces ``fit`` exactly; for other seeds ``fit`` would also reshuffle.
Sharing the batches is also what makes the sweep fast: under ``vmap`` a shared input times
``K`` kernels is one wide matrix product, ``x [B, n] @ [W_1 ... W_K]``.

Memory. A group is cut into chunks that fit on the device (:func:`chunk_capacity`: the state
and activation bytes of one setting against the free device memory); chunks run one after
another with the same compiled program, and give the same numbers as one big chunk.

Devices. With a ``mesh`` (axis ``"sweep"``), or by default when there is more than one local
device, the stacked states are placed with ``NamedSharding(mesh, PartitionSpec("sweep"))``:
each device trains ``K / n`` settings (chunks are padded with copies of their last setting to
a multiple of ``n``; the copies are dropped). The data is replicated.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxreg.train.epoch import scan_epoch
from jaxreg.train.fit import _epoch_logs, _split_data
from jaxreg.train.optimizer import OPTIMIZERS, SCHEDULES, make_optimizer
from jaxreg.train.state import create_train_state
from jaxreg.train.step import EVAL_BATCH, _evaluation_sums, default_loss, train_step

log = logging.getLogger(__name__)

VMAPPED_KEYS = ("learning_rate", "l2", "l1", "batch_scaled", "seed")
"""Setting keys whose values live in the stacked state: any mix shares one program."""
STATIC_KEYS = ("batch_size", "optimizer", "schedule", "schedule_kwargs", "proximal", "bn_momentum")
"""Setting keys baked into the program: each distinct combination is its own group."""
KEYS = VMAPPED_KEYS + STATIC_KEYS

DEFAULT_DEVICE_BYTES = 2 << 30
"""Memory assumed free on a device that does not report ``memory_stats`` (CPU)."""
MEMORY_FRACTION = 0.5
"""Share of the free device memory a chunk may plan to use (XLA needs headroom)."""


class SettingResult(NamedTuple):
    """One trained setting.

    Attributes:
        setting: every key of :data:`KEYS` (the given values and the sweep's defaults).
        history: per-epoch lists as in :func:`jaxreg.train.fit`: ``loss``, ``accuracy``
            (integer targets; means over the epoch's steps), ``skipped_steps``,
            ``epoch_seconds`` (of its chunk), ``learning_rate``, ``l2_strength`` (effective:
            divided by the batch size when batch-scaled), ``l1_strength``.
        final: ``last_epoch_loss``, ``last_epoch_accuracy`` (means over the last epoch's
            training batches, in training mode: not :func:`jaxreg.train.fit`'s final-model
            ``train_loss``), ``val_loss``, ``val_accuracy`` (inference mode on the held-out
            ``validation_split``, when there is one: what to choose a setting by) and
            ``test_loss``, ``test_accuracy`` (inference mode on the test split, when there is
            one: to report, never to choose by).
        seconds: wall time of the chunk that trained it, compilation included (shared by the
            chunk's settings).
        params, batch_stats: the final values, as numpy arrays.
    """

    setting: dict[str, Any]
    history: dict[str, list]
    final: dict[str, float]
    seconds: float
    params: Any
    batch_stats: Any


class SweepResult(NamedTuple):
    """``results``: one :class:`SettingResult` per setting, in the order of the expanded
    settings (:func:`expand`). ``groups``: per group, its static ``key`` values, number of
    ``settings``, ``chunks``, ``chunk_size`` and ``seconds``. ``seconds``: the whole sweep."""

    results: list[SettingResult]
    groups: list[dict[str, Any]]
    seconds: float


def _check_setting(setting: Mapping[str, Any]) -> dict[str, Any]:
    """``setting`` validated (ValueError naming the key and value), as a new dict."""
    for key, value in setting.items():
        if key not in KEYS:
            raise ValueError(f"unknown sweep key {key!r}; known keys: {', '.join(KEYS)}")
        bad = None
        if key == "bn_momentum" and value is None:  # the model's own
            pass
        elif key in ("l2", "l1", "learning_rate", "bn_momentum"):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (key == "learning_rate" and value == 0) or (key == "bn_momentum" and value > 1):
                bad = {"learning_rate": "a positive number", "bn_momentum": "a number in [0, 1]"}.get(
                    key, "a non-negative number")
        elif key in ("batch_scaled", "proximal") and not isinstance(value, bool):
            bad = "true or false"
        elif key in ("seed", "batch_size"):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (key == "batch_size"):
                bad = "a positive integer" if key == "batch_size" else "a non-negative integer"
        elif key == "optimizer" and value not in OPTIMIZERS:
            bad = f"one of {sorted(OPTIMIZERS)}"
        elif key == "schedule" and value not in SCHEDULES:
            bad = f"one of {list(SCHEDULES)}"
        elif key == "schedule_kwargs" and not isinstance(value, Mapping):
            bad = "a dict"
        if bad:
            raise ValueError(f"sweep key {key!r} must be {bad}; got {value!r}")
    return dict(setting)


def expand(settings_or_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
           seeds: int | Sequence[int] = 1, **defaults: Any) -> list[dict[str, Any]]:
    """The list of settings a sweep trains, each with every key of :data:`KEYS`.

    A grid (dict of non-empty lists) gives the cartesian product of its lists, in
    ``itertools.product`` order (the last key varies fastest); a list of dicts is taken as is.
    Settings without a ``seed`` are crossed with ``seeds`` (``n``: seeds ``0..n-1``; or a list);
    keys a setting leaves out take their value from ``defaults``.

    Raises:
        ValueError: empty grid, list or value list; unknown key; bad value (negative lambda,
            non-positive learning rate, ...). The message names the key and value.
    """
    if isinstance(settings_or_grid, Mapping):
        if not settings_or_grid:
            raise ValueError("empty sweep grid: give at least one key with a list of values")
        for key, values in settings_or_grid.items():
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"sweep grid key {key!r} needs a non-empty list of values; got {values!r}")
        keys = list(settings_or_grid)
        settings = [dict(zip(keys, combo)) for combo in itertools.product(*settings_or_grid.values())]
    else:
        settings = [dict(s) for s in settings_or_grid]
        if not settings:
            raise ValueError("empty list of sweep settings")
    seed_list = list(range(seeds)) if isinstance(seeds, numbers.Integral) else list(seeds)
    if not seed_list:
        raise ValueError(f"sweep seeds must be a positive count or a non-empty list; got {seeds!r}")
    out = []
    for setting in settings:
        for seed in [setting["seed"]] if "seed" in setting else seed_list:
            out.append(_check_setting({**defaults, **setting, "seed": seed}))
    return out


def group_key(setting: Mapping[str, Any]) -> tuple:
    """The static part of ``setting``: settings with equal keys share a compiled program."""
    key = {k: setting[k] for k in STATIC_KEYS}
    key["schedule_kwargs"] = tuple(sorted((setting["schedule_kwargs"] or {}).items()))
    if setting["schedule"] != "fixed":
        key["learning_rate"] = setting["learning_rate"]
    return tuple(key.items())


def _nbytes(tree: Any) -> int:
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, np.number))


def setting_bytes(model: Any, tx: optax.GradientTransformation, x: Any, batch_size: int) -> int:
    """Estimated device bytes one more setting costs a chunk, without compiling anything.

    ``4 * state`` (the state, its successor, the gradients and optimizer temporaries) plus
    ``3 * activations`` of one batch (the forward outputs kept for the backward pass, their
    cotangents and slack), from shapes only (:func:`jax.eval_shape` with
    ``capture_intermediates``).
    """
    state = jax.eval_shape(lambda: create_train_state(model, tx, x[:1], 0))
    xb = jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype)

    def intermediates(params, batch_stats, xb):
        _, updates = model.apply({"params": params, "batch_stats": batch_stats}, xb, train=True,
                                 mutable=True, capture_intermediates=True, rngs={"dropout": jax.random.key(0)})
        return updates.get("intermediates", {})

    activations = jax.eval_shape(intermediates, state.params, state.batch_stats, xb)
    return 4 * _nbytes(state) + 3 * _nbytes(activations)


def device_free_bytes(device: jax.Device) -> int:
    """``bytes_limit - bytes_in_use`` from ``device.memory_stats()``, or
    :data:`DEFAULT_DEVICE_BYTES` where the backend reports none (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # backends without the query raise rather than return None
        stats = None
    if not stats or "bytes_limit" not in stats:
        return DEFAULT_DEVICE_BYTES
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def chunk_capacity(per_setting: int, data_bytes: int, device: jax.Device, num_devices: int = 1) -> int:
    """How many settings a chunk may hold: per device
    ``(MEMORY_FRACTION * free - 2 * data) / per_setting`` (the data is on every device; twice,
    to leave room for a shuffled copy), at least 1, times ``num_devices``."""
    budget = MEMORY_FRACTION * device_free_bytes(device) - 2 * data_bytes
    return max(1, int(budget // max(per_setting, 1))) * num_devices


def _chunks(count: int, capacity: int, multiple: int) -> tuple[int, int]:
    """``(chunks, size)``: as few chunks as ``capacity`` allows, of equal size rounded up to a
    multiple of the device count (the last chunk is padded up to it)."""
    chunks = -(-count // capacity)
    size = -(-count // chunks)
    return chunks, -(-size // multiple) * multiple


def _sweep_mesh(mesh: Mesh | None) -> Mesh | None:
    if mesh is None:
        if jax.local_device_count() == 1:
            return None
        return jax.make_mesh((jax.local_device_count(),), ("sweep",), axis_types=(AxisType.Auto,))
    if "sweep" not in mesh.axis_names:
        raise ValueError(f"the sweep mesh needs an axis named 'sweep'; got axes {mesh.axis_names}")
    return mesh


def sweep(
    model: Any,
    data: Any,
    settings_or_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    *,
    epochs: int,
    batch_size: int,
    seeds: int | Sequence[int] = 1,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    l2: float = 0.0,
    l1: float = 0.0,
    batch_scaled: bool = False,
    schedule: str = "fixed",
    schedule_kwargs: dict[str, Any] | None = None,
    proximal: bool = False,
    bn_momentum: float | None = None,
    mask: Any = None,
    data_seed: int = 0,
    loss_fn: Any = None,
    skip_nonfinite: bool = True,
    compute_dtype: Any = None,
    test: bool = True,
    validation_split: float = 0.0,
    chunk_size: int | None = None,
    progress: bool = True,
    mesh: Mesh | None = None,
) -> SweepResult:
    """Trains every setting of ``settings_or_grid`` (see the module docstring for how).

    Args:
        model: a linen module, as for :func:`jaxreg.train.fit`.
        data: a :class:`jaxreg.data.Dataset` (test split evaluated at the end when ``test``)
            or ``(x, y)`` training arrays; they must fit on the device (an epoch is a
            ``lax.scan`` over device-resident data, :func:`jaxreg.train.scan_epoch`).
        settings_or_grid: a dict of lists (the cartesian product) or a list of dicts over
            :data:`KEYS`: ``learning_rate``, ``l2``, ``l1``, ``batch_scaled``, ``seed``,
            ``batch_size``, ``optimizer``, ``schedule``, ``schedule_kwargs``, ``proximal``,
            ``bn_momentum`` (meanings as in :func:`jaxreg.train.make_optimizer`).
        epochs, batch_size, seeds, optimizer ... bn_momentum: defaults for keys a setting
            leaves out; ``seeds`` crosses settings without a ``seed`` (:func:`expand`).
            ``bn_momentum=None`` keeps the model's own.
        mask: which parameters the penalties apply to (default kernels only).
        data_seed: the data order of every setting is that of ``fit(seed=data_seed)``.
        loss_fn, skip_nonfinite, compute_dtype: as for :func:`jaxreg.train.fit`.
        validation_split: hold out the last fraction of the training data (as
            :func:`jaxreg.train.fit`) and report ``val_loss``/``val_accuracy`` per setting:
            choose settings by these, not by the test metrics.
        chunk_size: at most this many settings per compiled call (default: as many as fit in
            device memory, :func:`chunk_capacity`); rounded up to a multiple of the devices.
        progress: a tqdm bar over steps, and a line per group.
        mesh: a :class:`jax.sharding.Mesh` with an axis ``"sweep"`` to shard settings over;
            default all local devices when there are several.

    Returns:
        A :class:`SweepResult`.

    Raises:
        ValueError: a bad setting (:func:`expand`), a batch size above the number of
            training examples, ``bn_momentum`` for a model without that field.
    """
    start = time.perf_counter()
    defaults = dict(batch_size=batch_size, optimizer=optimizer, learning_rate=learning_rate, l2=l2, l1=l1,
                    batch_scaled=batch_scaled, schedule=schedule, schedule_kwargs=schedule_kwargs or {},
                    proximal=proximal, bn_momentum=bn_momentum)
    settings = expand(settings_or_grid, seeds, **defaults)
    (x, y), validation, test_data = _split_data(data, validation_split, None)
    for b in {s["batch_size"] for s in settings}:
        if b > len(x):
            raise ValueError(f"sweep key 'batch_size' must not exceed the {len(x)} training examples; got {b}")
    if any(s["bn_momentum"] is not None for s in settings) and "bn_momentum" not in getattr(
            model, "__dataclass_fields__", {}):
        raise ValueError(f"sweep key 'bn_momentum' needs a model with a bn_momentum field; "
                         f"{type(model).__name__} has none")
    if loss_fn is None:
        loss_fn = default_loss(y)

    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault(group_key(s), []).append(i)
    mesh = _sweep_mesh(mesh)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    stacked = None if mesh is None else NamedSharding(mesh, PartitionSpec("sweep"))
    num_devices = 1 if mesh is None else mesh.shape["sweep"]
    x, y = jax.device_put((x, y), replicated)
    if test and test_data is not None:
        test_data = jax.device_put(tuple(np.asarray(a) for a in test_data), replicated)
    if validation is not None:
        validation = jax.device_put(tuple(np.asarray(a) for a in validation), replicated)
    data_key = jax.random.fold_in(jax.random.key(data_seed), 1)

    plans = []
    for key, members in groups.items():
        plan = _plan_group(model, dict(key), [settings[i] for i in members], epochs, len(x), mask,
                           skip_nonfinite)
        capacity = chunk_capacity(setting_bytes(plan["model"], plan["tx"], x, plan["batch_size"]),
                                  x.nbytes + y.nbytes, jax.devices()[0] if mesh is None else mesh.devices.flat[0],
                                  num_devices)
        plan["chunks"], plan["chunk_size"] = _chunks(len(members), min(capacity, chunk_size or capacity),
                                                     num_devices)
        plans.append((key, members, plan))

    bar = tqdm(total=sum(p["chunks"] * epochs * p["steps"] for _, _, p in plans), unit="step", disable=not progress)
    say = tqdm.write if progress else log.info
    results: list[SettingResult | None] = [None] * len(settings)
    group_info = []
    for g, (key, members, plan) in enumerate(plans):
        t_group = time.perf_counter()
        say(f"sweep group {g + 1}/{len(plans)} ({', '.join(f'{k}={v}' for k, v in key)}): {len(members)} "
            f"settings in {plan['chunks']} chunk(s) of {plan['chunk_size']}")
        run_chunk = _group_runner(plan, loss_fn, compute_dtype, stacked)
        size = plan["chunk_size"]
        for c in range(plan["chunks"]):
            chunk = members[c * size:(c + 1) * size]
            padded = [settings[i] for i in chunk] + [settings[chunk[-1]]] * (size - len(chunk))
            t0 = time.perf_counter()
            # An Explicit-axes mesh must be the context mesh of the jitted vmapped programs
            # (jax.set_mesh); harmless for Auto axes.
            with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
                history, states = run_chunk(padded, x, y, data_key, epochs, bar)
                final = _final_metrics(history, plan, states, {"val": validation, "test": test_data if test else None},
                                       loss_fn, compute_dtype)
            host = jax.device_get((states.params, states.batch_stats))
            seconds = time.perf_counter() - t0
            for j, i in enumerate(chunk):
                results[i] = SettingResult(
                    setting=settings[i], history={k: [e[j] for e in v] for k, v in history.items()},
                    final={k: v[j] for k, v in final.items()}, seconds=seconds,
                    params=jax.tree.map(lambda a: a[j], host[0]), batch_stats=jax.tree.map(lambda a: a[j], host[1]))
        group_info.append({"key": dict(key), "settings": len(members), "chunks": plan["chunks"],
                           "chunk_size": size, "seconds": time.perf_counter() - t_group})
    bar.close()
    return SweepResult(results=results, groups=group_info, seconds=time.perf_counter() - start)


def _plan_group(model, key: dict, members: list[dict], epochs: int, n_train: int, mask, skip_nonfinite: bool) -> dict:
    """The group's model, steps per epoch and shared transformation.

    The chain includes L2 (L1) when any member's is non-zero; members with zero get strength 0
    in their state. ``batch_scaled`` is not passed: the effective strength ``l2 / b`` is put in
    the state instead (module docstring).
    """
    b = key["batch_size"]
    if key["bn_momentum"] is not None:
        model = model.clone(bn_momentum=key["bn_momentum"])
    opt = make_optimizer(
        key["optimizer"], members[0]["learning_rate"], schedule=key["schedule"], total_steps=epochs * (n_train // b),
        l2=float(any(s["l2"] for s in members)), l1=float(any(s["l1"] for s in members)),
        proximal=key["proximal"], mask=mask, schedule_kwargs=dict(key["schedule_kwargs"]))
    return {"model": model, "tx": opt.tx, "skip_nonfinite": skip_nonfinite, "batch_size": b,
            "steps": n_train // b, "schedule": key["schedule"]}


def _group_runner(plan: dict, loss_fn, compute_dtype, stacked: NamedSharding | None):
    """``run_chunk(settings, x, y, data_key, epochs, bar) -> (history, states)`` for one group:
    a vmapped init and one jitted vmapped epoch, compiled on the first chunk and reused."""
    model, tx, b = plan["model"], plan["tx"], plan["batch_size"]

    def init(seeds, hyperparams, sample_x):
        """Op by op, not jitted: compiling the vmapped initializers takes seconds, while their
        eager kernels are compiled once per shape and reused by every later sweep."""
        states = jax.vmap(lambda seed: create_train_state(model, tx, sample_x, seed))(seeds)
        states = states.replace(opt_state=optax.tree_utils.tree_set(states.opt_state, **hyperparams))
        return states if stacked is None else jax.device_put(states, stacked)

    step = jax.vmap(functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn, compute_dtype=compute_dtype,
                                      skip_nonfinite=plan["skip_nonfinite"]),
                    in_axes=(0, None, None))
    run_epoch = jax.jit(functools.partial(scan_epoch, step=step, batch_size=b), donate_argnums=0)

    def run_chunk(settings, x, y, data_key, epochs, bar):
        hyperparams = {"l2": [s["l2"] / b if s["batch_scaled"] else s["l2"] for s in settings],
                       "l1": [s["l1"] for s in settings]}
        if plan["schedule"] == "fixed":  # a schedule's learning rate is in its closure
            hyperparams["learning_rate"] = [s["learning_rate"] for s in settings]
        hyperparams = {k: jnp.asarray(v, jnp.float32) for k, v in hyperparams.items()}
        states = init(jnp.asarray([s["seed"] for s in settings], jnp.int32), hyperparams, x[:1])
        history: dict[str, list] = {}
        for epoch in range(epochs):
            t0 = time.perf_counter()
            states, metrics = run_epoch(states, x, y, jax.random.fold_in(data_key, epoch))
            metrics = jax.device_get(metrics)
            logs = [_epoch_logs({k: v[:, j] for k, v in metrics.items()}) for j in range(len(settings))]
            seconds = time.perf_counter() - t0
            hp = jax.device_get(optax.tree_utils.tree_get(states.opt_state, "hyperparams"))
            for k in logs[0]:
                history.setdefault(k, []).append([log_[k] for log_ in logs])
            history.setdefault("epoch_seconds", []).append([seconds] * len(settings))
            for name, k in (("learning_rate", "learning_rate"), ("l2_strength", "l2"), ("l1_strength", "l1")):
                history.setdefault(name, []).append([float(v) for v in hp[k]])
            bar.update(plan["steps"])
            bar.set_postfix(loss=f"{np.mean(history['loss'][-1]):.4g}")
        return history, states

    return run_chunk


def _final_metrics(history: dict, plan: dict, states, splits: dict, loss_fn, compute_dtype
                   ) -> dict[str, list[float]]:
    """Per chunk member: the last epoch's training means and, for each split of ``splits``
    (``{"val": (x, y) or None, "test": ...}``), its metrics from the same jitted evaluation
    as :func:`jaxreg.train.evaluate`, vmapped."""
    final = {f"last_epoch_{k}": history[k][-1] for k in ("loss", "accuracy") if k in history}
    for name, split in splits.items():
        if split is None:
            continue
        xs, ys = split
        evaluate = functools.partial(_evaluation_sums, plan["model"], loss_fn=loss_fn,
                                     batch_size=min(EVAL_BATCH, len(xs)), compute_dtype=compute_dtype)
        metrics = jax.device_get(jax.vmap(evaluate, in_axes=(0, 0, None, None))(
            states.params, states.batch_stats, xs, ys))
        final.update({f"{name}_{k}": [float(v) for v in vs] for k, vs in metrics.items()})
    return final
