"""Training an NNX model: ``jaxreg.train.fit`` on an ``nnx.Module`` vs flax's NNX loop and vs
``fit`` on the linen twin.

The recipe (seed 004): the NNX ``SeedMLP`` (``jaxreg.models.nnx``: Linear(50) ->
jaxreg.nnx.BatchNorm -> relu -> Linear(10)), Adam 1e-3, batch size 128, softmax cross-entropy,
Fashion-MNIST for 10 epochs (digits when its files are absent; --quick: digits, 2 epochs), then
the test split. Every timed call starts from the same freshly built model and includes all its
compilation, i.e. what a script waits for.

Rows:

- ``fit(nnx.Module)`` vs the loop flax's NNX documentation teaches (the MNIST tutorial):
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, an ``@nnx.jit`` train step updating
  ``nnx.MultiMetric`` loss/accuracy, host-side batches from a numpy permutation, per-epoch
  ``metrics.compute()``, then an ``@nnx.jit`` evaluation of the test split. Target: at least 4x
  faster (ratio <= 0.25) at equal test accuracy (both are in the row).
- ``fit(nnx.Module)`` vs ``fit(linen SeedMLP)``: what the NNX bridge costs. Target <= 1.05.

All three are timed in alternation in one process (:func:`benchmarks.timing.interleaved_medians`);
the machine's load average before and after is in the rows.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import optax

import jaxreg.data
from benchmarks.nnx_loop import tutorial_loop
from benchmarks.timing import interleaved_medians, row
from jaxreg import models
from jaxreg.data import DataError
from jaxreg.train import fit

BATCH_SIZE, LEARNING_RATE, SEED = 128, 1e-3, 0


def _data(quick: bool) -> tuple[Any, str]:
    if not quick:
        try:
            ds = jaxreg.data.load("fashion-mnist", download=False)
            return ds, f"Fashion-MNIST {len(ds.x_train)}"
        except DataError:
            pass
    ds = jaxreg.data.load("digits")
    return ds, f"digits {len(ds.x_train)}"


def nnx_tutorial_loop(ds: Any, epochs: int) -> float:
    """flax's NNX training loop (MNIST tutorial) on the NNX SeedMLP; returns the test accuracy."""
    model = models.get("seed-mlp", 10, api="nnx", input_shape=ds.x_train.shape[1:], seed=SEED)
    return tutorial_loop(model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, epochs)


def _fit(model: Any, ds: Any, epochs: int) -> float:
    result = fit(
        model,
        optax.adam(LEARNING_RATE),
        ds,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        seed=SEED,
        progress=False,
    )
    assert result.test is not None  # fit evaluates the test split by default
    return result.test["accuracy"]


def run(quick: bool) -> list[dict[str, Any]]:
    ds, name = _data(quick)
    epochs = 2 if quick else 10
    repeats = 1 if quick else 3
    config = f"seed 004 MLP (NNX), {name}, {epochs} epochs, batch {BATCH_SIZE}, incl. compile"
    shape = ds.x_train.shape[1:]
    accuracy: dict[str, float] = {}

    def timed(key: str, fn: Any) -> Any:
        def call() -> None:
            accuracy[key] = fn()
        return call

    load_before = os.getloadavg()[0]
    times = interleaved_medians(
        {
            "fit_nnx": timed(
                "fit_nnx",
                lambda: _fit(models.get("seed-mlp", 10, api="nnx", input_shape=shape, seed=SEED),
                             ds, epochs),
            ),
            "fit_linen": timed("fit_linen", lambda: _fit(models.SeedMLP(), ds, epochs)),
            "nnx_loop": timed("nnx_loop", lambda: nnx_tutorial_loop(ds, epochs)),
        },
        repeats=repeats,
        warmup=0,
    )
    load = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
    extra = {"load_average": load, "devices": str(jax.devices()[0])}
    references = (
        ("nnx_loop", "flax NNX tutorial loop (nnx.Optimizer, @nnx.jit step, host batches)",
         "<= 0.25 (4x)"),
        ("fit_linen", "fit(linen SeedMLP)", "<= 1.05"),
    )
    return [
        row("nnx_training", f"{config}, fit(nnx.Module)", times["fit_nnx"], reference, times[key],
            target, test_accuracy=accuracy["fit_nnx"], reference_test_accuracy=accuracy[key],
            **extra)
        for key, reference, target in references
    ]
