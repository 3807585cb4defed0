"""Data-parallel and multi-process runs for tests/train/test_distributed.py: the data, the run
and the state dump it shares with its single-device references, and the programs it runs as
``python -m tests.programs.distributed SCENARIO [PORT PROCESS_ID]`` on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``). With a port and a process id, two
processes join through ``jax.distributed`` on a loopback coordinator. Files go to the working
directory.

The run: SeedMLP (batch normalization) with SGD + momentum and a batch-scaled L2 penalty.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxreg import models
from jaxreg.train import distributed, fit, make_optimizer

L2, BATCH = 0.05, 32


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(320, 6, 6, 1)).astype(np.float32)
    return x, rng.integers(0, 10, 320).astype(np.int32)


def run(**kw: Any) -> Any:
    # 256 training examples: 8 steps of 32 per epoch (4 per device on 8 devices)
    tx = make_optimizer("momentum", 0.05, l2=L2, batch_scaled=True)
    return fit(models.SeedMLP(hidden=16), tx, data(), validation_split=0.2, batch_size=BATCH,
               seed=3, progress=False, **kw)


def host(state: Any) -> list[np.ndarray]:
    # float leaves of the state, gathered to every process (tiled: whole global arrays)
    leaves = [leaf for leaf in jax.tree.leaves(state)
              if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)]
    if jax.process_count() > 1:
        leaves = multihost_utils.process_allgather(leaves, tiled=True)
    return [np.asarray(leaf) for leaf in leaves]


def dump(path: str, result: Any) -> None:
    if jax.process_index() == 0:
        np.savez(path + ".npz", *host(result.state))
        with open(path + ".json", "w") as f:
            json.dump(dict(history=result.history, devices=jax.device_count()), f)
    else:
        host(result.state)  # process_allgather is collective: every process takes part


def eight() -> None:
    """On 8 devices: 2 epochs in scan mode (checkpointed); 1 streamed, 1 accumulated, 1 on a
    data=4, fsdp=2 mesh."""
    dump("scan", run(epochs=2, checkpoint_dir="ckpt"))
    dump("stream", run(epochs=1, on_device=False))
    dump("accumulate", run(epochs=1, accumulate=2))
    distributed.FSDP_MIN_SIZE = 64  # split the 6x6x16 kernel (and its momentum) over fsdp
    fsdp = run(epochs=1, mesh=distributed.make_mesh(data=4, fsdp=2))
    kernel = fsdp.state.params["Dense_0"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp", kernel.sharding
    dump("fsdp", fsdp)


def resume() -> None:
    """3 epochs resumed from ``ckpt``."""
    dump("four", run(epochs=3, checkpoint_dir="ckpt", resume=True))


def two_processes() -> None:
    """A fresh run (checkpointed), its streamed twin, and a global batch from per-process rows."""
    dump("scan", run(epochs=2, checkpoint_dir="ckpt"))
    dump("stream", run(epochs=1, on_device=False))
    # a batch assembled from rows each process loaded itself: process p holds rows 8p..8p+7
    rows = data()[0][:16]
    mesh = distributed.make_mesh()
    batch = distributed.global_batch(rows[8 * jax.process_index():][:8], mesh)
    assert batch.shape == rows.shape
    assert batch.sharding.spec == distributed.batch_sharding(batch.sharding.mesh).spec
    assert (multihost_utils.process_allgather(batch, tiled=True) == rows).all()


def compiles() -> None:
    """compiles.json: per mesh (all devices on data; data=2, fsdp=2 with the kernel split), the
    programs a 2-epoch run compiled, each as ``[name, thread]``."""
    jax.config.update("jax_log_compiles", True)
    compiled: list[list[str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Finished XLA compilation of "):
                compiled.append([record.getMessage().split()[4], str(record.threadName)])

    logging.getLogger("jax._src.dispatch").addHandler(Recorder())
    distributed.FSDP_MIN_SIZE = 64  # split the 6x6x16 kernel (and its momentum) over fsdp
    runs = {}
    for name, mesh in (("data", None), ("fsdp", distributed.make_mesh(data=2, fsdp=2))):
        run(epochs=2, mesh=mesh)
        runs[name], compiled[:] = sorted(compiled), []
    with open("compiles.json", "w") as f:
        json.dump(runs, f)


SCENARIOS = {"eight": eight, "resume": resume, "two_processes": two_processes,
             "compiles": compiles}

if __name__ == "__main__":
    if len(sys.argv) > 2:  # coordinator port, process id
        distributed.initialize(f"127.0.0.1:{sys.argv[2]}", 2, int(sys.argv[3]))
    SCENARIOS[sys.argv[1]]()
