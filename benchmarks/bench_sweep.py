"""Sweep: one vmapped :func:`jaxreg.train.sweep` of K L2 strengths vs K sequential ``fit`` runs.

Seed 004's recipe (SeedMLP, Adam 1e-3, batch 128) on Fashion-MNIST, K values of lambda, whole
calls timed: each side trains, evaluates the test split and returns host-side results. Both
compile on every call (``fit`` jits its epoch per call, the sweep its vmapped epoch per group),
so unlike most cases the median includes compilation, as a user running either would pay it;
``last_epoch_s`` / ``reference_last_epoch_s`` give the last epoch alone (compiled: training
throughput), summed over the K ``fit`` runs. The sweep wins by trading K small programs for
one wide one: its K first-layer products share the batch, ``x @ [W_1 ... W_K]``, and one
dispatch per epoch serves all settings. Targets: CPU ratio <= 0.56 (>= 1.8x) at K = 8;
GPU <= 0.125 (>= 8x) at K = 16.
On a GPU each ``fit`` is mostly compilation (~5 s), so 16 fits per call, timed 4 times, took
over 150 s (issue 26): there each side is timed once, after one untimed 1-epoch ``fit`` (the
process's first compilations), and 4 of the 16 fits are run, their time scaled by 16 / 4 (every
fit does the same work; ``fits_timed`` in the row says how many ran).
``quick`` (a smoke run; compilation dominates it): scikit-learn's digits (1437 training
examples, bundled, so no download), K = 2, 1 epoch, one cold call each, no warm-up.
"""
from __future__ import annotations

import jax

from benchmarks.timing import interleaved_medians, row
from jaxreg.data import load
from jaxreg.models import SeedMLP
from jaxreg.train import fit, sweep


def _sizes(quick: bool) -> tuple[int, int, int]:
    """``(K, epochs, fits timed)``."""
    if quick:
        return 2, 1, 2
    return (16, 2, 4) if jax.default_backend() == "gpu" else (8, 2, 8)


def run(quick: bool) -> list[dict]:
    k, epochs, fits = _sizes(quick)
    gpu = jax.default_backend() == "gpu"
    name = "digits" if quick else "fashion-mnist"
    data = load(name, download=False)  # never a download in a timed run
    lambdas = [0.0] + [10.0 ** e for e in range(-6, -6 + k - 1)]
    recipe = dict(epochs=epochs, batch_size=128, progress=False)

    last_epoch = {}  # seconds of the last (compiled) epoch: training throughput without compilation

    def sequential():
        runs = [
            fit(SeedMLP(), dict(name="adam", learning_rate=1e-3, l2=lam), data, **recipe)
            for lam in lambdas[:fits]
        ]
        last_epoch["fit"] = sum(r.history["epoch_seconds"][-1] for r in runs) * k / fits
        return [r.test for r in runs]

    def vmapped():
        results = sweep(SeedMLP(), data, {"l2": lambdas}, **recipe).results
        last_epoch["sweep"] = results[0].history["epoch_seconds"][-1]
        return [r.final for r in results]

    if gpu and not quick:  # the process's first compilations, untimed
        fit(SeedMLP(), dict(name="adam", learning_rate=1e-3), data, epochs=1, batch_size=128,
            progress=False)
    single = quick or gpu
    times = interleaved_medians({"sweep": vmapped, "fit": sequential}, repeats=1 if single else 3,
                                warmup=0 if single else 1)
    times["fit"] *= k / fits
    target = ("none (quick)" if quick else
              "<= 0.125 (GPU, K=16)" if gpu else "<= 0.56 (CPU, K=8)")
    return [
        row(
            "sweep",
            f"{name} K={k} {epochs} epoch(s) SeedMLP adam b128",
            times["sweep"],
            f"{k} x fit" + (f" ({fits} run, scaled by {k}/{fits})" if fits < k else ""),
            times["fit"],
            target,
            speedup=times["fit"] / times["sweep"],
            fits_timed=fits,
            last_epoch_s=last_epoch["sweep"],
            reference_last_epoch_s=last_epoch["fit"],
        )
    ]
