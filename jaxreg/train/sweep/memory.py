"""Memory planning for a sweep: how many settings one compiled call (a *chunk*) may hold, from
the bytes one setting costs and the free device memory."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg.train.state import create_train_state

DEFAULT_DEVICE_BYTES = 2 << 30
"""Memory assumed free on a device that does not report ``memory_stats`` (CPU)."""
MEMORY_FRACTION = 0.5
"""Share of the free device memory a chunk may plan to use (XLA needs headroom)."""


def _nbytes(tree: Any) -> int:
    return sum(
        a.size * a.dtype.itemsize
        for a in jax.tree.leaves(tree)
        if jnp.issubdtype(a.dtype, np.number)
    )


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
        _, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            xb,
            train=True,
            mutable=True,
            capture_intermediates=True,
            rngs={"dropout": jax.random.key(0)},
        )
        return updates.get("intermediates", {})

    activations = jax.eval_shape(intermediates, state.params, state.model_state, xb)
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


def chunk_capacity(
    per_setting: int, data_bytes: int, device: jax.Device, num_devices: int = 1
) -> int:
    """How many settings a chunk may hold: per device
    ``(MEMORY_FRACTION * free - 2 * data) / per_setting`` (the data is on every device; twice,
    to leave room for a shuffled copy), at least 1, times ``num_devices``."""
    budget = MEMORY_FRACTION * device_free_bytes(device) - 2 * data_bytes
    return max(1, int(budget // max(per_setting, 1))) * num_devices


def chunk_layout(count: int, capacity: int, multiple: int) -> tuple[int, int]:
    """``(chunks, size)`` for ``count`` settings: as few chunks as ``capacity`` allows, of equal
    size rounded up to a multiple of the device count (the last chunk is padded up to it)."""
    chunks = -(-count // capacity)  # ceil division
    size = -(-count // chunks)
    return chunks, -(-size // multiple) * multiple
