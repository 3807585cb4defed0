"""Training speed: seed 004's recipe with jaxreg.train vs the loop a flax user writes (and torch).

The recipe: ``SeedMLP`` (Dense(50) -> BatchNorm -> relu -> Dense(10)), Adam 1e-3, batch size
128, softmax cross-entropy, Fashion-MNIST's 60000 x 784 training images for 10 epochs (3 on a
GPU, where an epoch is tens of milliseconds and each of 4 calls of the torch loop ~1 s an
epoch; --quick: 2 epochs of 2048 random images of the same width). The reference is the
hand-written flax loop: a ``flax.training.train_state.TrainState`` with ``batch_stats``, a
jitted step with the state donated, and per step a host-side numpy slice of a numpy
permutation copied to the device.

Rows:

- ``jaxreg.train epochs`` (target): the epoch runner exactly as :func:`jaxreg.train.fit` builds
  it in scan mode (``jit(scan_epoch(step=train_step))`` with the state donated, non-finite
  steps skipped as ``fit`` does by default), run for all epochs from a fresh copy of the same
  initial state, with ``unroll`` 1 (and 2, 4 in full CPU runs). Compilation is excluded on both
  sides, so this is the training speed; the target is at least 1.15x the flax loop on CPU
  (ratio <= 0.87), 15x on GPU.
- ``scan over a pre-permuted slab`` (informational): the same scan without the epoch's
  permutation and gather, which are done before timing: what the in-jit gather costs. (The
  step itself, its HLO and us per step against a plain ``lax.scan`` step: ``bench_step``.)
- ``fit(...) end to end`` (informational): a whole ``fit(progress=False, test=False)`` call,
  compilation included, against the flax loop including the compilation of its step, i.e.
  what a script waits for (one call each on GPU and with --quick).
- torch eager (when ``import torch`` works): the same model and loop, against the epoch runner
  (target on GPU: at least 40x, ratio <= 0.025).

Rows are yielded as they are measured (``benchmarks.run --jsonl`` keeps them if a time limit
stops the case).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg.data
from benchmarks import flax_loop
from benchmarks.timing import interleaved_medians, row
from jaxreg.models import SeedMLP
from jaxreg.train import create_train_state, fit, scan_epoch, train_step

BATCH_SIZE, LEARNING_RATE, SEED = 128, 1e-3, 0


def _data(quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    if quick:
        rng = np.random.default_rng(SEED)
        x = rng.random((2048, 784), dtype=np.float32)
        return x, rng.integers(0, 10, len(x)).astype(np.int32), "random 2048x784"
    ds = jaxreg.data.load("fashion-mnist", download=False)  # never a download in a timed run
    return ds.x_train.reshape(len(ds.x_train), -1), ds.y_train, "Fashion-MNIST 60000x784"


def _targets() -> tuple[str, str]:
    """Targets against the flax loop and against torch, for the backend in use."""
    if jax.default_backend() == "gpu":
        return "<= 0.067 (15x, GPU)", "<= 0.025 (40x, GPU)"
    return "<= 0.87 (CPU)", "info (CPU)"


# --- the reference: a flax user's per-step loop -------------------------------------------------

# flax_loop's state (flax's TrainState with batch_stats) and its step, the code a flax user writes
FlaxState = flax_loop.State
flax_step = flax_loop.step


_flax_train = flax_loop.run_epochs  # same batch size (128) and seed (0) as this module


def flax_state(model: SeedMLP, tx: optax.GradientTransformation, x: np.ndarray) -> FlaxState:
    variables = model.init(jax.random.key(SEED), x[:1], train=False)
    return FlaxState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables["batch_stats"])


# --- jaxreg ---------------------------------------------------------------------------------------

def jaxreg_step(model: SeedMLP) -> functools.partial[Any]:
    """``fit``'s step: ``train_step`` skipping non-finite steps (``fit``'s default)."""
    return functools.partial(
        train_step, model=model, tx=optax.adam(LEARNING_RATE), skip_nonfinite=True
    )


def _jaxreg_train(epoch: Callable, state0: Any, x: jax.Array, y: jax.Array, epochs: int) -> Any:
    """``fit``'s epoch loop in scan mode, from a copy of ``state0`` (``epoch`` donates it)."""
    state = jax.tree.map(jnp.copy, state0)
    data_key = jax.random.fold_in(jax.random.key(SEED), 1)
    for e in range(epochs):
        state, metrics = epoch(state, x, y, jax.random.fold_in(data_key, e))
        jax.device_get(metrics)
    return state


def _slab_train(
    step: Callable, state0: Any, x: jax.Array, y: jax.Array, epochs: int
) -> Callable[[], Any]:
    """The epoch scan over slabs permuted before timing: no gather inside the timed work."""
    scan = jax.jit(
        lambda s, xs, ys: jax.lax.scan(lambda c, b: step(c, *b), s, (xs, ys)), donate_argnums=0
    )
    steps = len(x) // BATCH_SIZE
    data_key = jax.random.fold_in(jax.random.key(SEED), 1)
    slabs = []
    for e in range(epochs):
        perm = jax.random.permutation(jax.random.fold_in(data_key, e), len(x))[:steps * BATCH_SIZE]
        slabs.append((x[perm].reshape(steps, BATCH_SIZE, -1), y[perm].reshape(steps, BATCH_SIZE)))

    def call() -> Any:
        state = jax.tree.map(jnp.copy, state0)
        for xs, ys in slabs:
            state, metrics = scan(state, xs, ys)
            jax.device_get(metrics)
        return state
    return call


# --- torch ----------------------------------------------------------------------------------------

def _torch_train(x: np.ndarray, y: np.ndarray, epochs: int) -> Callable[[], None] | None:
    """The recipe in eager PyTorch (Keras' BatchNorm momentum and epsilon), or None."""
    try:
        import torch

        from benchmarks.torch_loop import seed_mlp, train_epochs
    except ImportError:
        print("bench_training: torch is not importable; skipping the torch rows")
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        # OpenMP's threads spin against XLA's in this process and against other processes: on 2
        # shared cores two threads took 0.4-6 s for what one thread does in 0.035 s.
        torch.set_num_threads(1)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)

    def call() -> None:
        torch.manual_seed(SEED)
        model = seed_mlp(x.shape[1], device)
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        train_epochs(model, opt, xt, yt, epochs)
    return call


def run(quick: bool) -> Iterator[dict[str, Any]]:
    x, y, name = _data(quick)
    gpu = jax.default_backend() == "gpu"
    epochs = 2 if quick else 3 if gpu else 10
    repeats = 2 if quick else 3
    unrolls = (1,) if quick or gpu else (1, 2, 4)
    config = f"seed 004 MLP, {name}, {epochs} epochs, batch {BATCH_SIZE}"
    target, torch_target = _targets()
    model = SeedMLP()
    xd, yd = jax.device_put(x), jax.device_put(y)

    flax_jit = jax.jit(flax_step, donate_argnums=0)
    flax_state0 = flax_state(model, optax.adam(LEARNING_RATE), x)
    fns: dict[str, Callable[[], Any]] = {
        "flax": lambda: _flax_train(flax_jit, jax.tree.map(jnp.copy, flax_state0), x, y, epochs),
    }
    step = jaxreg_step(model)
    state0 = create_train_state(model, step.keywords["tx"], x[:1], SEED)
    for unroll in unrolls:
        epoch = jax.jit(
            functools.partial(scan_epoch, step=step, batch_size=BATCH_SIZE, unroll=unroll),
            donate_argnums=0,
        )
        fns[f"unroll={unroll}"] = functools.partial(_jaxreg_train, epoch, state0, xd, yd, epochs)
    fns["slab"] = _slab_train(step, state0, xd, yd, epochs)
    torch_fn = _torch_train(x, y, epochs)
    if torch_fn is not None:
        fns["torch"] = torch_fn
    times = interleaved_medians(fns, repeats=repeats, warmup=1)

    for u in unrolls:
        yield row("training", f"{config}, jaxreg.train epochs unroll={u}", times[f"unroll={u}"],
                  "flax TrainState per-step loop", times["flax"], target)
    yield row("training", f"{config}, scan over a pre-permuted slab", times["slab"],
              "flax TrainState per-step loop", times["flax"], "info")
    if torch_fn is not None:
        yield row("training", f"{config}, jaxreg.train epochs unroll=1", times["unroll=1"],
                  "torch eager per-step loop", times["torch"], torch_target)

    def fit_call() -> Any:
        return fit(model, optax.adam(LEARNING_RATE), (x, y), epochs=epochs, batch_size=BATCH_SIZE,
                   seed=SEED, progress=False, test=False).state

    def flax_cold() -> Any:
        fresh = jax.jit(functools.partial(flax_step), donate_argnums=0)  # a new function: compiles
        return _flax_train(fresh, flax_state(model, optax.adam(LEARNING_RATE), x), x, y, epochs)

    # every call compiles, so no warm-up is needed; one repeat in quick runs
    cold = interleaved_medians(
        {"fit": fit_call, "flax": flax_cold}, repeats=1 if quick or gpu else repeats, warmup=0
    )
    yield row("training", f"{config}, fit(...) end to end incl. compile", cold["fit"],
              "flax loop incl. compile", cold["flax"], "info")
