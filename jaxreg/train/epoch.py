"""One epoch of training: shuffle, cut into batches, step through them.

Both runners see the same batches: the epoch's permutation is
``jax.random.permutation(key, N)``, its first ``S * B`` indices (``S = N // B`` steps; the
last partial batch is dropped, as ``drop_remainder`` in tf.data) cut into ``S`` batches of
``B``.

- :func:`scan_epoch` runs the whole epoch on device as one ``lax.scan`` (one dispatch), for
  data that fits in device memory. It scans over the ``[S, B]`` index matrix and gathers each
  batch inside the body from ``x``, a jit *argument*: no ``[S, B, ...]`` slab permuted up
  front (two extra full-data copies per epoch), and no ``x`` closed over (which would embed it
  in the program as a constant, slow to compile and to run). The timings behind this choice
  are in ``benchmarks/RESULTS.md`` ("Notes moved from docstrings").
- :func:`stream_epoch` gathers batches on the host and steps through them with a jitted
  step, copying the next batch to the device while the current step runs (:func:`prefetch`).

Given the same state, data and key they give the same results up to float rounding.
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

Step = Callable[[Any, jax.Array, jax.Array], tuple[Any, dict[str, jax.Array]]]


def scan_epoch(
    state: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    step: Step,
    batch_size: int,
    unroll: int = 1,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[Any, dict[str, jax.Array]]:
    """All steps of one epoch over device arrays ``x, y``; metrics are stacked ``[S]``.

    Jit it with the data as arguments and the state donated, e.g.
    ``jax.jit(partial(scan_epoch, step=step, batch_size=128), donate_argnums=0)``.
    ``batch_sharding`` (data parallelism) constrains each gathered batch to it, e.g. split
    over the devices (:func:`jaxreg.train.distributed.batch_sharding`).
    """
    steps = x.shape[0] // batch_size
    perm = jax.random.permutation(key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)

    def body(state, idx):
        batch = (x[idx], y[idx])
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return step(state, *batch)

    return jax.lax.scan(body, state, perm, unroll=unroll)


def prefetch(
    batches: Iterable[Any], size: int = 2, put: Callable[[Any], Any] = jax.device_put
) -> Iterator[Any]:
    """Yields ``batches`` put on the default device (or by ``put``), ``size - 1`` batches
    ahead of use.

    ``jax.device_put`` is asynchronous, so the next batch's copy overlaps the current step.
    (``flax.jax_utils.prefetch_to_device`` does this for ``pmap``, with a leading device axis.)
    """
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) == size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def stream_epoch(
    state: Any,
    x: np.ndarray,
    y: np.ndarray,
    key: jax.Array,
    *,
    step: Step,
    batch_size: int,
    on_step: Callable[[], None] | None = None,
    put: Callable[[Any], Any] = jax.device_put,
) -> tuple[Any, dict[str, jax.Array]]:
    """The epoch of :func:`scan_epoch` from host arrays, one jitted ``step`` call per batch.

    ``step`` should be jitted (with the state donated); ``on_step`` is called after each
    dispatch (e.g. to advance a progress bar); ``put`` moves a batch to the devices (data
    parallelism: split over them, :func:`jaxreg.train.distributed.put`). Metrics are
    stacked ``[S]``.
    """
    steps = len(x) // batch_size
    perm = np.asarray(jax.random.permutation(key, len(x)))[: steps * batch_size].reshape(
        steps, batch_size
    )
    metrics = []
    for xb, yb in prefetch(((x[idx], y[idx]) for idx in perm), put=put):
        state, m = step(state, xb, yb)
        metrics.append(m)
        if on_step is not None:
            on_step()
    return state, jax.tree.map(lambda *ms: jax.numpy.stack(ms), *metrics)
