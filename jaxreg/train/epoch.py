"""One epoch of training: shuffle, cut into batches, step through them.

Both runners see the same batches: the epoch's permutation is
``jax.random.permutation(key, N)``, its first ``S * B`` indices (``S = N // B`` steps; the
last partial batch is dropped, as Keras' ``drop_remainder``) cut into ``S`` batches of ``B``.

- :func:`scan_epoch` runs the whole epoch on device as one ``lax.scan`` (one dispatch), for
  data that fits in device memory. It gathers the epoch once into a ``[S, B, ...]`` slab and
  scans over it: gathering each batch inside the scan body (``x[idx]``) measured 2x slower
  than a per-step loop on CPU, the slab faster than it.
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


def scan_epoch(state: Any, x: jax.Array, y: jax.Array, key: jax.Array, *, step: Step, batch_size: int,
               unroll: int = 1) -> tuple[Any, dict[str, jax.Array]]:
    """All steps of one epoch over device arrays ``x, y``; metrics are stacked ``[S]``.

    Jit it with the state donated, e.g.
    ``jax.jit(partial(scan_epoch, step=step, batch_size=128), donate_argnums=0)``.
    """
    steps = x.shape[0] // batch_size
    perm = jax.random.permutation(key, x.shape[0])[: steps * batch_size]
    xs = x[perm].reshape(steps, batch_size, *x.shape[1:])
    ys = y[perm].reshape(steps, batch_size, *y.shape[1:])
    return jax.lax.scan(lambda s, batch: step(s, *batch), state, (xs, ys), unroll=unroll)


def prefetch(batches: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Yields ``batches`` put on the default device, ``size - 1`` batches ahead of use.

    ``jax.device_put`` is asynchronous, so the next batch's copy overlaps the current step.
    (``flax.jax_utils.prefetch_to_device`` does this for ``pmap``, with a leading device axis.)
    """
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(jax.device_put(batch))
        if len(queue) == size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def stream_epoch(state: Any, x: np.ndarray, y: np.ndarray, key: jax.Array, *, step: Step, batch_size: int,
                 on_step: Callable[[], None] | None = None) -> tuple[Any, dict[str, jax.Array]]:
    """The epoch of :func:`scan_epoch` from host arrays, one jitted ``step`` call per batch.

    ``step`` should be jitted (with the state donated); ``on_step`` is called after each
    dispatch (e.g. to advance a progress bar). Metrics are stacked ``[S]``.
    """
    steps = len(x) // batch_size
    perm = np.asarray(jax.random.permutation(key, len(x)))[: steps * batch_size].reshape(steps, batch_size)
    metrics = []
    for xb, yb in prefetch((x[idx], y[idx]) for idx in perm):
        state, m = step(state, xb, yb)
        metrics.append(m)
        if on_step is not None:
            on_step()
    return state, jax.tree.map(lambda *ms: jax.numpy.stack(ms), *metrics)
