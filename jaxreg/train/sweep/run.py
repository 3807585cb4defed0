"""Running a sweep: plan each group (its model, chain, chunks), then train its chunks, each one
vmapped init and one jitted vmapped epoch per epoch (see :mod:`jaxreg.train.sweep`)."""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxreg._validate import require
from jaxreg.train import divergence, nnx_bridge
from jaxreg.train.config import check_steps
from jaxreg.train.epoch import scan_epoch
from jaxreg.train.optimizer import SCALED, effective_l2, make_optimizer
from jaxreg.train.plan import (
    append,
    epoch_entry,
    epoch_key,
    hyperparams,
    resolve_scaling,
    split_data,
)
from jaxreg.train.state import create_train_state
from jaxreg.train.step import (
    block_means,
    default_loss,
    evaluation_blocks,
    evaluation_sums,
    train_step,
)
from jaxreg.train.sweep.memory import chunk_capacity, chunk_layout, setting_bytes
from jaxreg.train.sweep.settings import Setting, expand, group

log = logging.getLogger(__name__)


class SettingResult(NamedTuple):
    """One trained setting.

    Attributes:
        setting: the :class:`Setting` (the given values and the sweep's defaults).
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
        params, model_state: the final values, as numpy arrays (``model_state``: as
            :class:`jaxreg.train.TrainState`'s).
        scaled: with the setting's ``scaling``, the hyperparameters it trained with, resolved
            at its batch size as :func:`jaxreg.train.fit` resolves them
            (:func:`jaxreg.train.plan.resolve_scaling`: ``learning_rate``, ``l2``, the
            optimizer's of :data:`jaxreg.train.optimizer.SCALED`, ``warmup_steps``,
            ``bn_momentum``); ``{}`` without.
    """

    setting: Setting
    history: dict[str, list]
    final: dict[str, float]
    seconds: float
    params: Any
    model_state: Any
    scaled: dict[str, Any] = {}


class SweepResult(NamedTuple):
    """``results``: one :class:`SettingResult` per setting, in the order of the expanded
    settings (:func:`expand`). ``groups``: per group, its static ``key`` values, number of
    ``settings``, ``chunks``, ``chunk_size`` and ``seconds``. ``seconds``: the whole sweep."""

    results: list[SettingResult]
    groups: list[dict[str, Any]]
    seconds: float


class GroupPlan(NamedTuple):
    """What one group of settings shares: its static ``key``, the indices of its ``members``
    among the sweep's settings, the ``model`` (with the group's ``bn_momentum``), the optax
    chain ``tx`` (L2/L1 included when any member's is non-zero), the ``batch_size``, the
    ``steps`` per epoch, whether the ``learning_rate`` is vmapped (not with a schedule other
    than ``fixed`` or a warmup: then it is in the chain's closure), and how the members are
    cut: ``chunks`` calls of ``chunk_size`` settings each."""

    key: tuple[tuple[str, Any], ...]
    members: list[int]
    model: Any
    tx: optax.GradientTransformation
    batch_size: int
    steps: int
    vmapped_lr: bool
    chunks: int
    chunk_size: int


class _Shared(NamedTuple):
    """What every group's run shares: the placed training data, the validation and test data
    as placed evaluation blocks (:func:`jaxreg.train.step.evaluation_blocks`; ``None``: not
    evaluated), the data-order seed (``None``: each setting's own), the loss, dtype and
    NaN-skipping of the steps, and the mesh's shardings (``None`` on one device)."""

    x: jax.Array
    y: jax.Array
    validation: tuple[tuple[Any, ...], ...] | None
    test_data: tuple[tuple[Any, ...], ...] | None
    data_seed: int | None
    loss_fn: Callable
    compute_dtype: Any
    skip_nonfinite: bool
    stacked: NamedSharding | None


def sweep(
    model: Any,
    data: Any,
    settings_or_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    *,
    epochs: int,
    seeds: int | Sequence[int] = 1,
    mask: Any = None,
    data_seed: int | None = 0,
    loss_fn: Any = None,
    skip_nonfinite: bool = True,
    compute_dtype: Any = None,
    test: bool = True,
    validation_split: float = 0.0,
    chunk_size: int | None = None,
    progress: bool = True,
    mesh: Mesh | None = None,
    **defaults: Any,
) -> SweepResult:
    """Trains every setting of ``settings_or_grid`` (see :mod:`jaxreg.train.sweep` for how).

    Args:
        model: a linen module or an ``nnx.Module``, as for :func:`jaxreg.train.fit` (an NNX
            module starts every setting from its own weights and ``nnx.Rngs`` streams).
        data: a :class:`jaxreg.data.Dataset` (test split evaluated at the end when ``test``)
            or ``(x, y)`` training arrays; they must fit on the device (an epoch is a
            ``lax.scan`` over device-resident data, :func:`jaxreg.train.scan_epoch`).
        settings_or_grid: a dict of lists (the cartesian product) or a list of dicts over the
            fields of :class:`Setting`: ``learning_rate``, ``l2``, ``l1``, ``batch_scaled``,
            ``seed``, ``batch_size``, ``optimizer``, ``schedule``, ``schedule_kwargs``,
            ``proximal``, ``bn_momentum``, ``scaling``, ``scale_from``, ``warmup_steps``.
        epochs: training epochs of every setting.
        seeds: crosses settings without a ``seed`` (:func:`expand`).
        mask: which parameters the penalties apply to (default kernels only).
        data_seed: the data order of every setting is that of ``fit(seed=data_seed)`` (one
            gather per step serves them all); ``None``: each setting's is that of
            ``fit(seed=setting.seed)``, so its seeds also vary the data order and each
            setting trains as ``fit`` does (a gather per setting).
        loss_fn: as for :func:`jaxreg.train.fit`.
        skip_nonfinite: as for :func:`jaxreg.train.fit`.
        compute_dtype: as for :func:`jaxreg.train.fit`.
        test: evaluate the dataset's test split at the end.
        validation_split: hold out the last fraction of the training data (as
            :func:`jaxreg.train.fit`) and report ``val_loss``/``val_accuracy`` per setting:
            choose settings by these, not by the test metrics.
        chunk_size: at most this many settings per compiled call (default: as many as fit in
            device memory, :func:`chunk_capacity`); rounded up to a multiple of the devices.
        progress: a tqdm bar over steps, and a line per group.
        mesh: a :class:`jax.sharding.Mesh` with an axis ``"sweep"`` to shard settings over;
            default all local devices when there are several.
        **defaults: values of :class:`Setting` fields for settings that leave them out (e.g.
            ``batch_size=128, optimizer="sgd"``); unset ones take :class:`Setting`'s defaults.

    Returns:
        A :class:`SweepResult`.

    Raises:
        ValueError: a bad setting (:func:`expand`), a batch size above the number of
            training examples, ``bn_momentum`` for a model without that field, a ``scaling``
            rule that does not apply (to the optimizer, the model, at ``k``); all before any
            training.
    """
    start = time.perf_counter()
    model = nnx_bridge.wrap(model)
    settings = expand(settings_or_grid, seeds, **defaults)
    (x, y), validation, test_data = split_data(data, validation_split)
    _check_fits_model_and_data(settings, model, len(x))
    scaled = [_resolved(s, model, len(x), epochs) for s in settings]
    mesh = _sweep_mesh(mesh)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    x, y = jax.device_put((x, y), replicated)
    put = functools.partial(jax.device_put, device=replicated)
    if test and test_data is not None:
        test_data = evaluation_blocks(*test_data, put=put)
    if validation is not None:
        validation = evaluation_blocks(*validation, put=put)
    shared = _Shared(
        x,
        y,
        validation,
        test_data if test else None,
        data_seed,
        default_loss(y) if loss_fn is None else loss_fn,
        compute_dtype,
        skip_nonfinite,
        None if mesh is None else NamedSharding(mesh, PartitionSpec("sweep")),
    )
    plans = [_plan_group(model, key, members, settings, scaled, epochs, mask, shared, mesh,
                         chunk_size) for key, members in group(settings).items()]

    bar = tqdm(
        total=sum(p.chunks * epochs * p.steps for p in plans), unit="step", disable=not progress
    )
    say = tqdm.write if progress else log.info
    results: list[SettingResult | None] = [None] * len(settings)
    group_info = []
    for g, plan in enumerate(plans):
        t_group = time.perf_counter()
        say(f"sweep group {g + 1}/{len(plans)} ({', '.join(f'{k}={v}' for k, v in plan.key)}): "
            f"{len(plan.members)} settings in {plan.chunks} chunk(s) of {plan.chunk_size}")
        for i, result in _run_group(plan, settings, scaled, epochs, shared, mesh, bar):
            results[i] = result
        group_info.append(
            {
                "key": dict(plan.key),
                "settings": len(plan.members),
                "chunks": plan.chunks,
                "chunk_size": plan.chunk_size,
                "seconds": time.perf_counter() - t_group,
            }
        )
    bar.close()
    finished = [r for r in results if r is not None]
    assert len(finished) == len(settings)  # every setting is in exactly one group
    for r in finished:  # the divergence policy, per setting
        divergence.warn_setting(repr(r.setting), r.history["skipped_steps"],
                                len(x) // r.setting.batch_size)
    return SweepResult(results=finished, groups=group_info, seconds=time.perf_counter() - start)


def _check_fits_model_and_data(settings: list[Setting], model: Any, n_train: int) -> None:
    """The checks a :class:`Setting` cannot make alone: batch sizes against the data, a
    ``bn_momentum`` against the model's fields."""
    for b in {s.batch_size for s in settings}:
        require(b <= n_train, "batch_size", f"at most the {n_train} training examples", b)
    if any(s.bn_momentum is not None for s in settings) and "bn_momentum" not in getattr(
            model, "__dataclass_fields__", {}):
        raise ValueError(f"sweep key 'bn_momentum' needs a model with a bn_momentum field; "
                         f"{type(model).__name__} has none")


def _resolved(setting: Setting, model: Any, n_train: int, epochs: int) -> dict[str, Any]:
    """The hyperparameters ``setting``'s ``scaling`` resolves to at its batch size, as ``fit``
    resolves them (:func:`jaxreg.train.plan.resolve_scaling`, ``N`` the training examples,
    ``T`` the epochs, ``"ema"`` moving the setting's ``bn_momentum`` or the model's), or ``{}``
    without ``scaling``; ValueError naming ``scaling`` for a rule that does not apply."""
    if setting.scaling is None:
        return {}
    if setting.bn_momentum is not None:
        model = model.clone(bn_momentum=setting.bn_momentum)
    optimizer = dict(name=setting.optimizer, learning_rate=setting.learning_rate, l2=setting.l2,
                     scaling=setting.scaling.split(","), scale_from=setting.scale_from,
                     warmup_steps=setting.warmup_steps)
    b = setting.batch_size
    return resolve_scaling(optimizer, model, (b,), n_train, epochs)[1][b]


def _sweep_mesh(mesh: Mesh | None) -> Mesh | None:
    if mesh is None:
        if jax.local_device_count() == 1:
            return None
        return jax.make_mesh((jax.local_device_count(),), ("sweep",), axis_types=(AxisType.Auto,))
    require(
        "sweep" in mesh.axis_names, "mesh", "a mesh with an axis named 'sweep'", mesh.axis_names
    )
    return mesh


def _plan_group(model: Any, key: tuple, members: list[int], settings: list[Setting],
                scaled: list[dict[str, Any]], epochs: int, mask: Any, shared: _Shared,
                mesh: Mesh | None, chunk_size: int | None) -> GroupPlan:
    """The group's model, shared transformation and chunks.

    The chain includes L2 (L1) when any member's is non-zero; members with zero get strength 0
    in their state. ``batch_scaled`` is not passed: the effective strength
    (:func:`jaxreg.train.optimizer.effective_l2`) is put in the state instead. With
    ``scaling``, the values a rule moves that the program bakes in (the optimizer's of
    :data:`jaxreg.train.optimizer.SCALED`, ``warmup_steps``, ``bn_momentum``) depend only on
    the group's static fields (the rules, ``k``, the optimizer): the first member's are used.
    """
    first, resolved = settings[members[0]], scaled[members[0]]
    b, steps = first.batch_size, len(shared.x) // first.batch_size
    bn_momentum = resolved.get("bn_momentum", first.bn_momentum)
    if bn_momentum is not None:
        model = model.clone(bn_momentum=bn_momentum)
    opt = make_optimizer(
        first.optimizer,
        resolved.get("learning_rate", first.learning_rate),
        schedule=first.schedule,
        total_steps=check_steps(epochs, steps),
        l2=float(any(settings[i].l2 for i in members)),
        l1=float(any(settings[i].l1 for i in members)),
        proximal=first.proximal,
        mask=mask,
        schedule_kwargs=dict(first.schedule_kwargs),
        warmup_steps=resolved.get("warmup_steps", first.warmup_steps),
        **{k: resolved[k] for k in SCALED[first.optimizer] if k in resolved},
    )
    num_devices = 1 if mesh is None else mesh.shape["sweep"]
    device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
    capacity = chunk_capacity(setting_bytes(model, opt.tx, shared.x, b),
                              shared.x.nbytes + shared.y.nbytes, device, num_devices)
    chunks, size = chunk_layout(len(members), min(capacity, chunk_size or capacity), num_devices)
    return GroupPlan(key, members, model, opt.tx, b, steps, first.vmapped_learning_rate, chunks,
                     size)


def _run_group(plan: GroupPlan, settings: list[Setting], scaled: list[dict[str, Any]],
               epochs: int, shared: _Shared, mesh: Mesh | None, bar: Any):
    """Yields ``(index, SettingResult)`` for every member of the group, chunk after chunk."""
    run_chunk = _chunk_runner(plan, shared)
    size = plan.chunk_size
    for c in range(plan.chunks):
        chunk = plan.members[c * size:(c + 1) * size]
        padded = [(settings[i], scaled[i]) for i in chunk] + [
            (settings[chunk[-1]], scaled[chunk[-1]])] * (size - len(chunk))
        t0 = time.perf_counter()
        # An Explicit-axes mesh must be the context mesh of the jitted vmapped programs
        # (jax.set_mesh); harmless for Auto axes.
        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            history, states = run_chunk(padded, epochs, bar)
            final = _final_metrics(history, plan, states, shared)
        host = jax.device_get((states.params, states.model_state))
        seconds = time.perf_counter() - t0
        for j, i in enumerate(chunk):
            yield (
                i,
                SettingResult(
                    setting=settings[i],
                    history={k: [e[j] for e in v] for k, v in history.items()},
                    final={k: v[j] for k, v in final.items()},
                    seconds=seconds,
                    params=jax.tree.map(lambda a, j=j: a[j], host[0]),
                    model_state=jax.tree.map(lambda a, j=j: a[j], host[1]),
                    scaled=scaled[i],
                ),
            )


def _chunk_runner(plan: GroupPlan, shared: _Shared):
    """``run_chunk(members, epochs, bar) -> (history, states)`` for one group (``members``:
    ``(setting, resolved scaling)`` pairs): a vmapped init and one jitted vmapped epoch,
    compiled on the first chunk and reused."""
    model, tx, b = plan.model, plan.tx, plan.batch_size

    def init(seeds, hyperparams, sample_x):
        """Op by op, not jitted: compiling the vmapped initializers takes seconds, while their
        eager kernels are compiled once per shape and reused by every later sweep."""
        states = jax.vmap(lambda seed: create_train_state(model, tx, sample_x, seed))(seeds)
        states = states.replace(
            opt_state=optax.tree_utils.tree_set(states.opt_state, **hyperparams)
        )
        return states if shared.stacked is None else jax.device_put(states, shared.stacked)

    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        loss_fn=shared.loss_fn,
        compute_dtype=shared.compute_dtype,
        skip_nonfinite=shared.skip_nonfinite,
    )
    if shared.data_seed is None:  # each setting's own order: the epoch vmapped, keys too
        epoch_fn = jax.vmap(functools.partial(scan_epoch, step=step, batch_size=b),
                            in_axes=(0, None, None, 0), out_axes=(0, 1))
    else:  # one order: the step vmapped inside one scan, one gather per step
        epoch_fn = functools.partial(scan_epoch, step=jax.vmap(step, in_axes=(0, None, None)),
                                     batch_size=b)
    run_epoch = jax.jit(epoch_fn, donate_argnums=0)

    def run_chunk(members, epochs, bar):
        settings = [s for s, _ in members]
        values = {"l2": [effective_l2(r.get("l2", s.l2), b, s.batch_scaled) for s, r in members],
                  "l1": [s.l1 for s in settings]}
        if plan.vmapped_lr:  # else the learning rate is in the chain's closure
            values["learning_rate"] = [r.get("learning_rate", s.learning_rate)
                                       for s, r in members]
        seeds = jnp.asarray([s.seed for s in settings], jnp.uint32)
        states = init(seeds,
                      {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}, shared.x[:1])
        history: dict[str, list] = {}
        for epoch in range(epochs):
            t0 = time.perf_counter()
            at = np.uint32(epoch)
            key = (jax.vmap(epoch_key, in_axes=(0, None))(seeds, at) if shared.data_seed is None
                   else epoch_key(np.uint32(shared.data_seed), at))
            states, metrics = run_epoch(states, shared.x, shared.y, key)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - t0
            hyper = hyperparams(states.opt_state, b, False)  # l2 is the effective strength
            entries = [epoch_entry({k: v[:, j] for k, v in metrics.items()}, seconds,
                                   {k: v[j] for k, v in hyper.items()})
                       for j in range(len(settings))]
            append(history, {k: [e[k] for e in entries] for k in entries[0]})
            bar.update(plan.steps)
            bar.set_postfix(loss=f"{np.mean(history['loss'][-1]):.4g}")
        return history, states

    return run_chunk


@functools.partial(jax.jit, static_argnames=("model", "loss_fn", "compute_dtype"))
def stacked_evaluation_sums(model, params, model_state, x, y, count, *, loss_fn, compute_dtype):
    """:func:`jaxreg.train.step.evaluation_sums` of ``K`` stacked states on one block: ``[K]``
    sums, one program for the validation and test blocks."""
    return jax.vmap(functools.partial(evaluation_sums, model, loss_fn=loss_fn,
                                      compute_dtype=compute_dtype),
                    in_axes=(0, 0, None, None, None))(params, model_state, x, y, count)


def _final_metrics(
    history: dict, plan: GroupPlan, states: Any, shared: _Shared
) -> dict[str, list[float]]:
    """Per chunk member: the last epoch's training means and, for the validation and test
    data of ``shared`` (when given), their metrics from the same evaluation program as
    :func:`jaxreg.train.evaluate`, vmapped (:func:`stacked_evaluation_sums`)."""
    final = {f"last_epoch_{k}": history[k][-1] for k in ("loss", "accuracy") if k in history}
    for name, blocks in (("val", shared.validation), ("test", shared.test_data)):
        if blocks is None:
            continue
        sums = [stacked_evaluation_sums(plan.model, states.params, states.model_state, *block,
                                        loss_fn=shared.loss_fn,
                                        compute_dtype=shared.compute_dtype)
                for block in blocks]
        metrics = block_means(sums, sum(int(count) for _, _, count in blocks))
        final.update({f"{name}_{k}": [float(v) for v in vs] for k, vs in metrics.items()})
    return final
