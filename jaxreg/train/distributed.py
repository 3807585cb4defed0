"""Data-parallel and multi-host training with ``jax.sharding`` and ``jax.distributed``.

Design: one program for every scale (GSPMD). The training step is the same jitted function
on 1 device, 8 devices or several hosts; only where its inputs live changes:

- The **mesh** has two axes, ``data`` and ``fsdp`` (:func:`make_mesh`). Batches are split
  along their first (batch) dimension over both axes, ``NamedSharding(mesh, P(('data',
  'fsdp')))`` (:func:`batch_sharding`); each device holds ``B / n_devices`` examples.
- The **state** (parameters, batch statistics, optimizer state, key) is replicated, except
  that with an ``fsdp`` axis of size > 1 leaves of at least ``fsdp_min_size`` elements are
  split along ``fsdp`` on their largest divisible dimension (:func:`state_sharding`), as in
  fully sharded data parallelism: XLA gathers them for the forward pass and reduce-scatters
  their gradients.
- Under ``jax.jit`` a computation on sharded arrays has the meaning of the same computation
  on the whole (global) arrays; the compiler inserts the collectives. So the mean loss, its
  gradient and batch normalization's ``jnp.mean`` over the batch are exact global-batch
  values (summed across devices by all-reduces), ``x.shape[0]`` is the global batch size
  (batch-size-scaled regularization uses it), and 8-device training equals 1-device training
  on the same global batches up to float summation order. No ``shard_map``/``pmap``, no
  ``axis_name``: :class:`jaxreg.nn.BatchNorm`'s ``axis_name`` path is for code that already
  runs per device under ``shard_map`` or ``pmap``, where a per-device mean would otherwise
  be local.
- **Several processes** (hosts, or processes on one host) join with :func:`initialize`
  (``jax.distributed``); afterwards ``jax.devices()`` lists every process's devices, the mesh
  spans them all and the same jitted step runs in every process (SPMD). Each process must
  feed the same program in the same order: :func:`put` builds global arrays from data every
  process holds whole (``fit``: each process loads the full dataset and draws the same
  permutation), :func:`global_batch` from rows each process loaded itself.
  Checkpoints are written by orbax from all processes (see :mod:`jaxreg.train.checkpoint`).

Everything here is ``jax.sharding``, ``jax.distributed`` and
``jax.make_array_from_process_local_data``; there is no communication code of our own.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)
FSDP_MIN_SIZE = 1 << 18
"""Leaves with fewer elements stay replicated on an ``fsdp`` mesh (sharding them saves little)."""


def parse_mesh(spec: str) -> dict[str, int]:
    """``"data=8"`` or ``"data=4,fsdp=2"`` -> ``{"data": 4, "fsdp": 2}``: keyword arguments of
    :func:`make_mesh`."""
    sizes = {}
    for part in spec.split(","):
        name, sep, size = part.partition("=")
        name = name.strip()
        if (
            not sep
            or name not in BATCH_AXES
            or name in sizes
            or not size.strip().isdigit()
            or int(size) < 1
        ):
            raise ValueError(f"bad mesh spec {spec!r}: expected e.g. 'data=8' or 'data=4,fsdp=2'")
        sizes[name] = int(size)
    return sizes


def make_mesh(
    devices: Sequence[jax.Device] | None = None, data: int | None = None, fsdp: int = 1
) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices of all processes).

    ``data`` defaults to ``len(devices) // fsdp``; with fewer than all devices, the first
    ``data * fsdp`` are used (``make_mesh(data=2)`` on 8 devices uses 2). Device order comes
    from :func:`jax.make_mesh` (topology-aware on TPU; each process's devices contiguous).
    The axes are ``Auto``: jit propagates shardings (GSPMD) from the inputs.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data is None:
        data = len(devices) // fsdp
    if data < 1 or fsdp < 1 or data * fsdp > len(devices):
        raise ValueError(
            f"mesh data={data}, fsdp={fsdp} needs {data * fsdp} devices; {len(devices)} available"
        )
    return jax.make_mesh(
        (data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def default_mesh() -> Mesh | None:
    """All devices on the ``data`` axis when there are several, else ``None`` (plain
    single-device execution)."""
    return make_mesh() if jax.device_count() > 1 else None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to a multi-process run: ``jax.distributed.initialize``.

    Call it once in every process, before any other JAX call. ``coordinator`` is
    ``"HOST:PORT"`` of process 0 (which serves it), reachable from all processes;
    ``process_id`` runs from 0 to ``num_processes - 1``. On Cloud TPU pod slices, Slurm and
    Open MPI, leave all three ``None``: JAX detects them. The coordinator listens on all
    interfaces unless the environment variable ``JAX_COORDINATOR_BIND_ADDRESS`` says
    otherwise (e.g. ``127.0.0.1:PORT`` for processes on one machine).
    """
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split on their first (batch) dimension over all devices of ``mesh``."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, P())


def _leaf_spec(shape: Sequence[int], fsdp: int, min_size: int) -> P:
    """``P()``, or ``'fsdp'`` on the largest dimension divisible by ``fsdp`` for big leaves."""
    dims = [d for d in range(len(shape)) if shape[d] % fsdp == 0]
    if fsdp == 1 or math.prod(shape) < min_size or not dims:
        return P()
    split = max(dims, key=lambda d: shape[d])
    return P(*[FSDP if d == split else None for d in range(len(shape))])


def state_sharding(state: Any, mesh: Mesh, fsdp_min_size: int | None = None) -> Any:
    """A ``NamedSharding`` per leaf of ``state`` (arrays or ``jax.ShapeDtypeStruct``):
    replicated, or split along ``fsdp`` (see the module docstring; ``fsdp_min_size`` defaults
    to :data:`FSDP_MIN_SIZE`). Optimizer moments have their parameters' shapes, so they are
    split the same way."""
    fsdp, min_size = mesh.shape[FSDP], FSDP_MIN_SIZE if fsdp_min_size is None else fsdp_min_size
    return jax.tree.map(lambda a: NamedSharding(mesh, _leaf_spec(a.shape, fsdp, min_size)), state)


def lower_sharded(
    init: Callable[[], Any], mesh: Mesh, fsdp_min_size: int | None = None
) -> tuple[jax.stages.Lowered, Any]:
    """``(lowered, shardings)``: ``init`` (e.g. ``create_train_state``) lowered under
    ``jax.jit`` with its outputs placed by :func:`state_sharding`, not yet compiled (its
    ``out_info``: the state's shapes and shardings)."""
    shardings = state_sharding(jax.eval_shape(init), mesh, fsdp_min_size)
    return jax.jit(init, out_shardings=shardings).lower(), shardings


def create_sharded(
    init: Callable[[], Any], mesh: Mesh, fsdp_min_size: int | None = None
) -> tuple[Any, Any]:
    """``(state, shardings)``: ``init()`` run under ``jax.jit`` with its outputs placed by
    :func:`state_sharding` (:func:`lower_sharded`, compiled and called). Each device
    materializes only its shards, and every process gets the same global state (``init`` is
    deterministic)."""
    lowered, shardings = lower_sharded(init, mesh, fsdp_min_size)
    return lowered.compile()(), shardings


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Host arrays (a pytree) that every process holds whole, with the same values
    everywhere -> global arrays with ``sharding``; each device receives only its slice.

    Several processes: ``jax.make_array_from_process_local_data`` with the global shape.
    One process: ``jax.device_put``, the same result with less host work per call, which
    matters when streaming batches."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a)), tree
    )


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Per-process rows -> one global batch split over the mesh (a pytree of arrays).

    For per-host input pipelines: process ``p`` passes the ``B / num_processes`` examples
    its devices will hold, and the global batch is the processes' rows in process order
    (``jax.make_array_from_process_local_data``; the global shape is inferred)."""
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(a)),
        local_batch,
    )


def is_primary() -> bool:
    """Whether this is process 0, the one that writes metrics, plots and logs."""
    return jax.process_index() == 0
