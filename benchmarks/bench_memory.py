"""Device memory of a training step: jaxreg.train vs the hand-written flax loop's step.

Both steps are seed 004's (see :mod:`benchmarks.bench_training`): ``jaxreg.train.train_step``
as ``fit`` uses it (skipping non-finite steps) and the flax
``TrainState`` step, each jitted with the state donated. The figures are XLA's buffer
assignment of the compiled executables (``jit(f).lower(...).compile().memory_analysis()``),
which every backend reports (on CPU ``device.memory_stats()`` is None):

- peak bytes of one step (``peak_memory_in_bytes``: live arguments, outputs and temporaries),
  jaxreg over flax: no extra copies of the parameters or the optimizer state (target <= 1.05);
- donated (aliased) bytes over the bytes of the parameters and the optimizer state, for each:
  donation works when the ratio is >= 1, i.e. they are updated in place (a small scalar of the
  state may be left unaliased, so the whole state is not the yardstick);
- fit's scan-mode epoch (``jit(scan_epoch)``): its temporaries over the training data's bytes,
  informational: the epoch gathers each batch inside the scan, so no permuted copy of the
  data is made.

Memory is the same number on every run, so the rows carry bytes in the seconds columns
(``unit: bytes``).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.bench_training import (
    BATCH_SIZE,
    LEARNING_RATE,
    SEED,
    flax_state,
    flax_step,
    jaxreg_step,
)
from benchmarks.timing import row
from jaxreg.models import SeedMLP
from jaxreg.train import create_train_state, scan_epoch


def _analysis(fn: Any, *args: Any) -> Any:
    return jax.jit(fn, donate_argnums=0).lower(*args).compile().memory_analysis()


def _nbytes(tree: Any) -> int:
    return sum(jnp.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree))


def run(quick: bool) -> list[dict[str, Any]]:
    examples = 2048 if quick else 60000
    rng = np.random.default_rng(SEED)
    x = jax.device_put(rng.random((examples, 784), dtype=np.float32))
    y = jax.device_put(rng.integers(0, 10, examples).astype(np.int32))
    xb, yb = x[:BATCH_SIZE], y[:BATCH_SIZE]
    model = SeedMLP()

    step = jaxreg_step(model)
    state = create_train_state(model, step.keywords["tx"], xb, SEED)
    ref_state = flax_state(model, optax.adam(LEARNING_RATE), xb)
    mine, ref = _analysis(step, state, xb, yb), _analysis(flax_step, ref_state, xb, yb)
    epoch = _analysis(functools.partial(scan_epoch, step=step, batch_size=BATCH_SIZE),
                      state, x, y, jax.random.key(0))

    config = f"seed 004 MLP step, batch {BATCH_SIZE} [bytes]"
    bytes_row = functools.partial(row, unit="bytes")
    return [
        bytes_row(
            "memory",
            f"{config}: peak",
            mine.peak_memory_in_bytes,
            "flax TrainState step peak",
            ref.peak_memory_in_bytes,
            "<= 1.05",
        ),
        bytes_row(
            "memory",
            f"{config}: jaxreg donated / params+opt_state",
            mine.alias_size_in_bytes,
            "jaxreg params+opt_state bytes",
            _nbytes((state.params, state.opt_state)),
            ">= 1",
        ),
        bytes_row(
            "memory",
            f"{config}: flax donated / params+opt_state",
            ref.alias_size_in_bytes,
            "flax params+opt_state bytes",
            _nbytes((ref_state.params, ref_state.opt_state)),
            ">= 1",
        ),
        bytes_row(
            "memory",
            f"scan epoch, {examples}x784 data [bytes]: temporaries / data",
            epoch.temp_size_in_bytes,
            "x + y bytes",
            x.nbytes + y.nbytes,
            "info",
        ),
    ]
