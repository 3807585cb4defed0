"""Hyperparameter sweeps: many regularization settings trained at once in one compiled program.

Modules, by idea: ``settings`` (the :class:`Setting` schema, :func:`expand`, grouping) ->
``memory`` (how many settings fit in one compiled call) -> ``run`` (:func:`sweep` itself).

:func:`sweep` trains every setting of a grid (or list) of settings. Settings that can share a
program form a *group*; a group's ``K`` states are stacked along a leading *sweep axis* and one
jitted epoch, ``scan_epoch`` over ``jax.vmap(train_step)``, trains them all, each with its own
parameters, batch statistics, optimizer state and RNG key. The step and epoch functions are
those of :func:`jaxreg.train.fit`, so a setting's run is the ``fit`` run of that setting up to
float rounding.

What can be vmapped (the fields of :class:`Setting` marked ``vmapped``). The optimizer comes from
:func:`jaxreg.train.make_optimizer`, which wraps its chain in :func:`optax.inject_hyperparams`:
``learning_rate``, ``l2`` and ``l1`` are arrays in the optimizer state, so one transformation serves
all settings and each stacked state holds its own values. Batch-scaled L2 adds ``(l2 / b) w`` to the
gradient at batch size ``b``; within a group ``b`` is fixed, so it is plain L2 with the *effective
strength* (:func:`jaxreg.batch_scaled_strength`, ``l2 / b``; ``batch_scaled=False``: ``l2``), and
on/off settings share the program. A zero penalty shares the chain of a non-zero one: ``g + 0 * w``
is ``g`` exactly (with ``proximal`` L1, a zero threshold gives ``(w + u) - w``, ``u`` up to
rounding). Seeds are vmapped init keys: setting ``s`` starts from ``create_train_state(...,
seed=s)``, as ``fit(seed=s)``.

What cannot (the ``static`` fields), and splits groups (run in turn, each compiled once): the batch
size (array shapes), the optimizer and ``proximal`` (the chain's structure), the learning-rate
schedule and its keyword arguments, the warmup, and with a schedule other than ``fixed`` or a warmup
the learning rate too (a schedule is a Python closure over ``eta_0``, re-evaluated at every step),
and ``bn_momentum`` (a static attribute of the model: ``model.clone(bn_momentum=m)``, so the model
needs a ``bn_momentum`` field).

Scaling rules. A setting with ``scaling`` (and ``scale_from``, ``B0``) holds the hyperparameters
tuned at ``B0``; they train moved to its batch size as :func:`jaxreg.train.fit` moves them (one
function resolves both, :func:`jaxreg.train.plan.resolve_scaling`). The batch size being static,
a group has one ``k = B / B0``: what a rule moves that the program bakes in (Adam's ``b1``,
``b2``, ``eps``, AdamW's ``weight_decay``, the warmup, ``bn_momentum`` by rule ``"ema"``) is the
group's, while each setting's moved ``learning_rate`` and ``l2`` stay vmapped. The resolved values
are each :class:`SettingResult`'s ``scaled``.

Data order. All settings, in all groups, see the same data stream: epoch ``e`` shuffles with
``fold_in(fold_in(key(data_seed), 1), e)``, the order of ``fit(seed=data_seed)``. Settings
therefore differ only in their hyperparameters and init seed, and a setting with
``seed == data_seed`` reproduces ``fit`` exactly; for other seeds ``fit`` would also reshuffle.
Sharing the batches is also what makes the sweep fast: under ``vmap`` a shared input times
``K`` kernels is one wide matrix product, ``x [B, n] @ [W_1 ... W_K]``.
``data_seed=None`` gives each setting the order of ``fit(seed=setting.seed)`` instead (the whole
epoch vmapped, one gather per setting and step): its seeds then vary the data order too, as
independent runs do, and every setting reproduces ``fit`` (what error bars over seeds need).

Memory. A group is cut into chunks that fit on the device (:func:`chunk_capacity`: the state
and activation bytes of one setting against the free device memory); chunks run one after
another with the same compiled program, and give the same numbers as one big chunk.

Devices. With a ``mesh`` (axis ``"sweep"``), or by default when there is more than one local
device, the stacked states are placed with ``NamedSharding(mesh, PartitionSpec("sweep"))``:
each device trains ``K / n`` settings (chunks are padded with copies of their last setting to
a multiple of ``n``; the copies are dropped). The data is replicated.
"""
from jaxreg.train.sweep.memory import chunk_capacity, device_free_bytes, setting_bytes
from jaxreg.train.sweep.run import GroupPlan, SettingResult, SweepResult, sweep
from jaxreg.train.sweep.settings import Setting, expand, group_key

__all__ = [
    "GroupPlan", "Setting", "SettingResult", "SweepResult", "chunk_capacity", "device_free_bytes",
    "expand", "group_key", "setting_bytes", "sweep",
]
