"""One training step and batched evaluation, as pure functions of the state.

Losses map ``(outputs, targets)`` to per-example values ``[batch]``; a step minimizes their
mean. Classification uses integer labels and softmax cross-entropy
``l_i = logsumexp(z_i) - z_{i, y_i}``; regression the squared error ``(f(x_i) - y_i)^2``.
Accuracy is reported whenever the targets are integers.

``train_step`` is pure and takes everything it depends on as arguments, so it can be jitted
(``jax.jit(functools.partial(train_step, model=m, tx=tx), donate_argnums=0)``), scanned over
an epoch, vmapped over states (hyperparameter sweeps) or sharded.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg._validate import check_int, require
from jaxreg.train import nnx_bridge
from jaxreg.train.state import TrainState
from jaxreg.transforms import ReduceOnPlateauState

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy of logits ``[B, K]`` against integer labels ``[B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(outputs, targets)


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """``(f(x) - y)^2`` per example; outputs ``[B, 1]`` are matched to targets ``[B]``."""
    return optax.squared_error(outputs.reshape(targets.shape), targets)


def default_loss(targets: Any) -> LossFn:
    """:func:`cross_entropy` for integer targets (classification), else :func:`squared_error`."""
    return cross_entropy if jnp.issubdtype(targets.dtype, jnp.integer) else squared_error


EVAL_BATCH = 1000
"""Examples per block of :func:`evaluate` (one inference batch; every split is cut into
blocks of this many rows, so one compiled program evaluates them all)."""


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves of ``tree`` cast to ``dtype`` (``None``: unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _metrics(outputs: jax.Array, targets: jax.Array, losses: jax.Array) -> dict[str, jax.Array]:
    """Per-example ``loss`` and, for integer targets, ``accuracy`` (1 if the argmax is right)."""
    metrics = {"loss": losses}
    if jnp.issubdtype(targets.dtype, jnp.integer):
        metrics["accuracy"] = (jnp.argmax(outputs, -1) == targets).astype(jnp.float32)
    return metrics


def train_step(
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    compute_dtype: Any = None,
    accumulate: int = 1,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step on the batch ``(x, y)``; returns the new state and scalar metrics.

    The gradient of ``mean_i loss_fn(model(x_i), y_i)`` goes through
    ``state.apply_gradients(tx, grads, batch_size=B)``, so batch-size-scaled regularizers see
    the batch size. Batch statistics come from ``model.apply(..., mutable=['batch_stats'])``.
    On sharded inputs under ``jax.jit``, ``B`` and all means are global
    (:mod:`jaxreg.train.distributed`).

    Gradient accumulation (``accumulate=k``): the batch is cut into ``k`` micro-batches of
    ``B / k`` (micro-batch ``j`` is examples ``j, j + k, j + 2k, ...``, so each stays split
    over the devices like the batch), run one after another in a ``lax.scan``: activation
    memory is that of ``B / k`` examples. Their gradients are averaged and applied once, so
    the optimizer makes one step and regularizers see ``batch_size=B = k * (B / k)``, the
    effective batch; without batch normalization this is the full-batch step up to float
    rounding. Batch normalization normalizes each micro-batch by its own statistics and
    updates the running averages after each, ``k`` times per step (as ``k`` steps of
    ``B / k`` would). Dropout uses ``fold_in(step key, j)`` for micro-batch ``j``.

    Mixed precision (``compute_dtype=jnp.bfloat16``): parameters and inputs are cast to bf16 for
    the forward and backward pass, while the optimizer updates the float32 parameters (the
    gradient of the cast is float32) and the loss and batch statistics stay float32.

    Non-finite steps (``skip_nonfinite``): a step whose gradient, or whose *new* parameters,
    optimizer state or batch statistics, have a NaN or Inf keeps the parameters, optimizer
    state and batch statistics of ``state`` (``step`` still counts it) and is reported as
    ``skipped``; metrics of a skipped step are whatever the bad batch gave (often NaN). Checking
    the result as well catches what finite gradients do not: a NaN or overflowing learning
    rate (``1e30``) gives finite gradients but non-finite updates. These are
    :func:`optax.apply_if_finite`'s semantics (:func:`jaxreg.train.fit` stops after
    ``max_consecutive_skips`` in a row), written as a select rather than by wrapping ``tx``:
    apply_if_finite chooses between its two branches with ``lax.cond``, which keeps XLA from
    fusing the update into the rest of the step, while a select fuses with the update's last
    pass (the measured cost: ``benchmarks/RESULTS.md``, "Notes moved from docstrings").
    """
    dropout_key = jax.random.fold_in(state.key, state.step)

    def grads_and_stats(batch_stats, x, y, key):
        def objective(params):
            variables = {"params": _cast(params, compute_dtype), "batch_stats": batch_stats}
            outputs, updates = model.apply(
                variables,
                _cast(x, compute_dtype),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            outputs = outputs.astype(jnp.float32)
            losses = loss_fn(outputs, y)
            new_stats = jax.tree.map(
                lambda new, old: new.astype(old.dtype), updates.get("batch_stats", {}), batch_stats
            )
            return losses.mean(), (_metrics(outputs, y, losses), new_stats)

        (_, (metrics, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return grads, metrics, new_stats

    if accumulate == 1:
        grads, metrics, batch_stats = grads_and_stats(state.model_state, x, y, dropout_key)
    else:
        def micro(a):  # [B, ...] -> [k, B / k, ...], micro-batch j = rows j::k
            return a.reshape(a.shape[0] // accumulate, accumulate, *a.shape[1:]).swapaxes(0, 1)

        def accumulate_micro(carry, batch):
            batch_stats, grad_sum = carry
            xm, ym, j = batch
            grads, metrics, batch_stats = grads_and_stats(
                batch_stats, xm, ym, jax.random.fold_in(dropout_key, j)
            )
            return (batch_stats, jax.tree.map(jnp.add, grad_sum, grads)), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (batch_stats, grad_sum), metrics = jax.lax.scan(
            accumulate_micro,
            (state.model_state, zeros),
            (micro(x), micro(y), jnp.arange(accumulate)),
        )
        grads = jax.tree.map(lambda g: g / accumulate, grad_sum)
    new_state = state.apply_gradients(tx, grads, batch_size=x.shape[0]).replace(
        model_state=batch_stats
    )
    finite = jnp.array(True)
    if skip_nonfinite:
        # a plateau's best_value is legitimately +-inf before its first decision
        opt_state = jax.tree.map(lambda s: None if isinstance(s, ReduceOnPlateauState) else s,
                                 new_state.opt_state,
                                 is_leaf=lambda s: isinstance(s, ReduceOnPlateauState))
        new = (grads, new_state.params, opt_state, new_state.model_state)
        finite = jnp.all(jnp.stack([jnp.isfinite(a).all() for a in jax.tree.leaves(new)
                                    if jnp.issubdtype(a.dtype, jnp.inexact)]))
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                            (new_state.params, new_state.opt_state, new_state.model_state),
                            (state.params, state.opt_state, state.model_state))
        new_state = new_state.replace(params=kept[0], opt_state=kept[1], model_state=kept[2])
    metrics = {k: v.mean() for k, v in metrics.items()}
    metrics["skipped"] = ~finite
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("model", "loss_fn", "compute_dtype"))
def evaluation_sums(model, params, model_state, x, y, count, *, loss_fn, compute_dtype):
    """The jitted, pure core of :func:`evaluate`: the metric sums (device scalars) of the
    first ``count`` examples of one block ``(x, y)`` (:func:`evaluation_blocks`; the padding
    rows are masked out). Every split of a run's data, whatever its size, calls this one
    program; a sweep vmaps it over stacked ``params``/``model_state``."""
    variables = {"params": _cast(params, compute_dtype), "batch_stats": model_state}
    outputs = model.apply(variables, _cast(x, compute_dtype), train=False).astype(jnp.float32)
    mask = jnp.arange(x.shape[0]) < count
    return {k: jnp.where(mask, v, 0.0).sum()
            for k, v in _metrics(outputs, y, loss_fn(outputs, y)).items()}


def evaluation_blocks(x: Any, y: Any, *, batch_size: int = EVAL_BATCH,
                      put: Callable[[Any], Any] = jax.device_put) -> tuple[tuple[Any, ...], ...]:
    """``(x, y)`` cut on the host into ``(x block, y block, count)`` of ``batch_size`` rows each,
    the last one zero-padded (``count``: its real rows, an ``np.int32``), the blocks placed with
    ``put``: the fixed-shape inputs of :func:`evaluation_sums`."""
    x, y = np.asarray(x), np.asarray(y)
    blocks = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        pad = batch_size - len(xb)
        if pad:
            xb, yb = (np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in (xb, yb))
        blocks.append((put(xb), put(yb), np.int32(batch_size - pad)))
    return tuple(blocks)


def block_means(sums: Sequence[dict[str, Any]], n: int) -> dict[str, np.ndarray]:
    """Means over ``n`` examples of the per-block sums of :func:`evaluation_sums`, summed over
    the blocks in float64 on the host: ``mean_k = sum_b sums_b[k] / n`` (0-d arrays for one
    state, ``[K]`` for ``K`` vmapped ones). Each block's sum is float32 over at most
    ``EVAL_BATCH`` rows; accuracy sums are exact counts."""
    sums = jax.device_get(list(sums))
    return {k: np.sum([np.asarray(s[k], np.float64) for s in sums], axis=0) / n
            for k in sums[0]}


def evaluate(
    model: Any,
    state: TrainState | None,
    x: Any,
    y: Any,
    *,
    loss_fn: LossFn = cross_entropy,
    batch_size: int = EVAL_BATCH,
    compute_dtype: Any = None,
    blocks: Sequence[tuple[Any, ...]] | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy for integer labels) of ``model`` in inference mode (running
    batch statistics) over all of ``(x, y)``: one compiled program (:func:`evaluation_sums`)
    run on each ``batch_size`` block (:func:`evaluation_blocks`, or the ``blocks`` given, cut
    from ``(x, y)`` and placed already), whatever the number of examples.

    ``model`` is a linen module or an ``nnx.Module`` (evaluated in ``.eval()`` mode); ``state``
    may be ``None`` for an ``nnx.Module``, which is then evaluated with its own weights."""
    require(len(x) > 0, "x", "at least one example", x)
    check_int("batch_size", batch_size, 1, exact=True)
    model = nnx_bridge.wrap(model)
    if state is None:
        require(isinstance(model, nnx_bridge.NNXModel), "state",
                "a TrainState (only an nnx.Module carries its own weights)", state)
        variables = model.variables
    else:
        variables = {"params": state.params, "batch_stats": state.model_state}
    if blocks is None:
        blocks = evaluation_blocks(x, y, batch_size=batch_size)
    sums = [evaluation_sums(model, variables["params"], variables["batch_stats"], *block,
                            loss_fn=loss_fn, compute_dtype=compute_dtype) for block in blocks]
    return {k: float(v) for k, v in block_means(sums, len(x)).items()}
