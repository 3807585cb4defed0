"""Seed 004's recipe as a flax user writes it by hand: the reference of ``bench_cli``.

``SeedMLP`` (Dense(50) -> BatchNorm -> relu -> Dense(10)), Adam 1e-3, batch 128, an L2 penalty
``(0.025 / 128) / 2 ||w||^2`` on the kernels (``jaxreg train``'s default batch-scaled L2, as
its gradient ``(0.025 / 128) w`` added before Adam), softmax cross-entropy; a
``flax.training.train_state.TrainState`` with ``batch_stats``, one jitted step per batch with
the state donated, a numpy permutation per epoch, the epoch's metrics fetched once per epoch,
and the test accuracy at the end. It imports nothing from jaxreg (the model is written here in
flax, with ``flax.linen.BatchNorm`` at Keras' momentum and epsilon like ``jaxreg``'s
``SeedMLP``; the data are read with numpy / scikit-learn), so its process time is what such a
script costs. No checkpoints: the minimal loop.

Run as a script it prints one JSON line ``{"train_seconds", "test_accuracy", "epochs"}``::

    python benchmarks/flax_loop.py --dataset digits --epochs 10 [--data-dir DIR]

``train_seconds`` spans initialization, compilation, the epochs and the test evaluation, as
``jaxreg train``'s ``train_seconds`` spans its ``fit`` call.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

BATCH_SIZE, LEARNING_RATE, L2, SEED = 128, 1e-3, 0.025, 0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3]
    shape = np.frombuffer(raw, ">i4", ndim, 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(dataset: str, data_dir: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test``: Fashion-MNIST / 255, or digits / 16 with
    ``jaxreg.data``'s stratified 1437/360 split."""
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        d = load_digits()
        x = (d.images[..., None] / 16.0).astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(x, d.target.astype(np.int32), test_size=360,
                                                  stratify=d.target, random_state=0)
        return x_tr, y_tr, x_te, y_te

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        def find(stem: str) -> Path:
            return next(p for p in (data_dir / f"{stem}.gz", data_dir / stem) if p.exists())

        x = _idx(find(f"{prefix}-images-idx3-ubyte"))[..., None].astype(np.float32) / 255.0
        return x, _idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int32)
    return (*split("train"), *split("t10k"))


class SeedMLP(nn.Module):
    """Seed 004's model in flax: flatten, Dense(50), BatchNorm, relu, Dense(10)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(50)(x.reshape(len(x), -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)(x)
        return nn.Dense(10)(nn.relu(x))


class State(train_state.TrainState):
    batch_stats: Any


def step(state: State, x: jax.Array, y: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                         train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
    return state, {"loss": loss, "accuracy": (logits.argmax(-1) == y).mean()}


def run_epochs(step: Any, state: State, x: np.ndarray, y: np.ndarray, epochs: int) -> State:
    """``epochs`` passes of ``step`` over batches of a numpy permutation per epoch (seed
    ``SEED``, the last partial batch dropped), the epoch's metrics fetched once per epoch, as a
    user prints them."""
    rng = np.random.default_rng(SEED)
    steps = len(x) // BATCH_SIZE
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        metrics = []
        for i in range(steps):
            idx = perm[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            state, m = step(state, x[idx], y[idx])
            metrics.append(m)
        jax.device_get(metrics)
    return state


def train(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          epochs: int) -> float:
    """Trains the recipe for ``epochs`` and returns the test accuracy."""
    model = SeedMLP()
    variables = model.init(jax.random.key(SEED), x[:1], train=False)
    kernels = jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel",
                                               variables["params"])
    tx = optax.chain(optax.masked(optax.add_decayed_weights(L2 / BATCH_SIZE), kernels),
                     optax.adam(LEARNING_RATE))
    state = State.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                         batch_stats=variables["batch_stats"])
    state = run_epochs(jax.jit(step, donate_argnums=0), state, x, y, epochs)
    logits = cast(jax.Array, model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                         x_test, train=False))
    return float((jnp.argmax(logits, -1) == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, default=FASHION_DIR)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    data = load(args.dataset, args.data_dir)
    t0 = time.perf_counter()
    accuracy = train(*data, epochs=args.epochs)
    print(json.dumps({"train_seconds": time.perf_counter() - t0, "test_accuracy": accuracy,
                      "epochs": args.epochs}))


if __name__ == "__main__":
    main()
