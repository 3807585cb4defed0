"""Epoch checkpoints with orbax: the train state plus the history, one directory per epoch.

Layout of ``checkpoint_dir`` (orbax ``CheckpointManager``; ``<k>`` = completed epochs)::

    <k>/state/     TrainState (params, batch_stats, opt_state incl. step counts, RNG key)
    <k>/history/   JSON: {"epoch": k, "history": {name: [per-epoch values]}}

The epoch count is also the data-order position: epoch ``e`` shuffles with a key derived
from ``(seed, e)``, so resuming needs no RNG replay. Saves are synchronous and atomic (orbax
writes a temporary directory and renames it when complete), so a process killed at any time
leaves only whole checkpoints; the latest ``keep`` are kept.

Sharded states (:mod:`jaxreg.train.distributed`): every process calls :func:`save` and
:func:`restore_latest` (they synchronize); each writes the shards it holds, process 0 the
metadata and the history, into a directory all processes can reach. A checkpoint is not
tied to a device count: :func:`restore_latest` reads each array straight into the sharding
of the template's array, so a state saved on 8 devices restores on 1, on 4, or on another
host count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str | Path, keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous ``CheckpointManager`` over ``directory`` keeping the latest ``keep`` epochs."""
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        ),
    )


def save(mngr: ocp.CheckpointManager, epoch: int, state: Any, history: dict[str, list]) -> None:
    """Writes the state and history after ``epoch`` completed epochs."""
    mngr.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave({"epoch": epoch, "history": history}),
    ))


def restore_latest(mngr: ocp.CheckpointManager, template: Any) -> tuple[int, Any, dict[str, list]] | None:
    """``(epoch, state, history)`` of the latest checkpoint, or ``None`` if there is none.

    ``template`` is a state of the same structure (e.g. freshly created); only its shapes,
    dtypes and shardings are used: the restored arrays have the template's shardings."""
    epoch = mngr.latest_step()
    if epoch is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = mngr.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore(),
    ))
    return restored.history["epoch"], restored.state, restored.history["history"]
