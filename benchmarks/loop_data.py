"""The data of the hand-written loop scripts (``flax_loop``, ``torch_loop``, ``nnx_loop``).

numpy only (scikit-learn for digits), nothing from jaxreg, jax or torch, so that each script's
process time is what such a script costs. Fashion-MNIST is read from ``--data-dir``, by default
``$JAXREG_DATA_DIR/fashion-mnist`` when that variable is set (where ``jaxreg.data.load`` looks
first), else ``/usr/share/datasets/fashion-mnist``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCH_SIZE, LEARNING_RATE, L2, SEED = 128, 1e-3, 0.025, 0


def default_dir() -> Path:
    """``$JAXREG_DATA_DIR/fashion-mnist`` if the variable is set, else the system copy."""
    env = os.environ.get("JAXREG_DATA_DIR")
    return Path(env) / "fashion-mnist" if env else Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3]
    shape = np.frombuffer(raw, ">i4", ndim, 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(dataset: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` as NHWC float32 and int32: Fashion-MNIST / 255, or
    digits / 16 with ``jaxreg.data``'s stratified 1437/360 split."""
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        d = load_digits()
        x = (d.images[..., None] / 16.0).astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(x, d.target.astype(np.int32), test_size=360,
                                                  stratify=d.target, random_state=0)
        return x_tr, y_tr, x_te, y_te
    directory = data_dir or default_dir()

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        def find(stem: str) -> Path:
            found = [p for p in (directory / f"{stem}.gz", directory / stem) if p.exists()]
            if not found:
                raise SystemExit(f"loop_data: no {stem}(.gz) in {directory}")
            return found[0]

        x = _idx(find(f"{prefix}-images-idx3-ubyte"))[..., None].astype(np.float32) / 255.0
        return x, _idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int32)
    return (*split("train"), *split("t10k"))


def main(train: Callable[..., float], doc: str | None) -> None:
    """A loop script's command line: ``--dataset``, ``--data-dir``, ``--epochs``; prints one JSON
    line ``{"train_seconds", "test_accuracy", "epochs"}``, ``train_seconds`` spanning the call
    ``train(x_train, y_train, x_test, y_test, epochs)`` (which returns the test accuracy)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Fashion-MNIST's folder (default: $JAXREG_DATA_DIR/fashion-mnist if set, "
                        "else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    data = load(args.dataset, args.data_dir)
    start = time.perf_counter()
    accuracy = train(*data, epochs=args.epochs)
    print(json.dumps({"train_seconds": time.perf_counter() - start, "test_accuracy": accuracy,
                      "epochs": args.epochs}))
