"""Datasets for jaxreg's experiments, as numpy arrays ready for a jit-compiled training loop.

``load(name)`` returns a :class:`Dataset` for one of :data:`DATASETS`:

- ``fashion-mnist``, ``mnist``: 28x28 grey images in IDX files, found locally or downloaded
  with a sha256 check (see :mod:`jaxreg.data.sources` for the search order);
- ``digits``: scikit-learn's bundled 8x8 digits, the dataset that never needs a download;
- ``synthetic-ridge``: a seeded linear regression problem (:func:`make_ridge`).

Images are float32 in [0, 1] with shape ``[N, H, W, 1]`` (NHWC, so a CNN takes them as they
are; an MLP flattens them), labels int32. The whole dataset is returned in memory: these are
small enough to sit on the device at once, which is what an epoch-on-device loop wants.
This layer imports numpy (and scikit-learn for ``digits``) only, never the training loop.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxreg.data import sources
from jaxreg.data.idx import DataError, read_idx

DATASETS = ("fashion-mnist", "mnist", "digits", "synthetic-ridge")

__all__ = ["DATASETS", "DataError", "Dataset", "load", "make_ridge", "read_idx"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split and what it is.

    Attributes:
      name: the name given to :func:`load`.
      x_train, y_train, x_test, y_test: inputs (float32) and targets (int32 class labels for
        classification, float32 values for regression).
      num_classes: number of classes, or None for regression.
      source: where the data came from (a directory, "scikit-learn digits", "synthetic ...").
      task: "classification" or "regression".
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    num_classes: int | None
    source: str
    task: str


def load(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
         seed: int = 0) -> Dataset:
    """Loads dataset ``name`` (one of :data:`DATASETS`).

    Args:
      name: dataset name.
      data_dir: directory holding the IDX files; searched first (IDX datasets only).
      download: whether an IDX dataset found nowhere locally may be downloaded into the cache.
      seed: generator seed of ``synthetic-ridge``; the other datasets are fixed (the digits
        split uses a fixed seed so that results stay comparable across model seeds).

    Raises:
      ValueError: ``name`` is unknown.
      DataError: the IDX files are missing, corrupt or inconsistent.
    """
    if name in sources.IDX_SOURCES:
        return _load_idx(name, data_dir, download)
    if name == "digits":
        return _load_digits()
    if name == "synthetic-ridge":
        x_train, y_train, x_test, y_test, _ = make_ridge(seed=seed)
        return Dataset(name, x_train, y_train, x_test, y_test, num_classes=None,
                       source=f"synthetic (make_ridge, seed={seed})", task="regression")
    raise ValueError(f"load(name={name!r}): unknown dataset; known: {', '.join(DATASETS)}")


def _load_idx(name: str, data_dir, download: bool) -> Dataset:
    """Reads the four IDX files of an MNIST-format dataset (10 classes, uint8 images)."""
    directory, source = sources.locate(name, data_dir, download)

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images_path = sources.find_file(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = sources.find_file(directory, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path), read_idx(labels_path)
        for path, array, ndim in ((images_path, images, 3), (labels_path, labels, 1)):
            if array.ndim != ndim or array.dtype != np.uint8:
                raise DataError(f"{path}: expected {ndim}-d unsigned bytes, got {array.ndim}-d "
                                f"{array.dtype} with shape {array.shape}")
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} "
                            f"images of {images_path}")
        if labels.size and labels.max() >= 10:
            raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
        x = images[..., None].astype(np.float32)
        x /= 255.0
        return x, labels.astype(np.int32)

    x_train, y_train = split("train")
    x_test, y_test = split("t10k")
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=10, source=source,
                   task="classification")


def _load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16), stratified 1437/360 split with seed 0."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn takes a second
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=360, stratify=y, random_state=0)
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10,
                   source="scikit-learn digits (sklearn.datasets.load_digits)",
                   task="classification")


def make_ridge(n_train: int = 200, n_test: int = 1000, dim: int = 50, noise: float = 1.0,
               seed: int = 0):
    """A linear regression problem where ridge regularization visibly matters.

    With ``rng = numpy.random.default_rng(seed)``, drawn in this order:
    ``w_true = rng.normal(size=dim) / sqrt(dim)`` (so ``x @ w_true`` has unit variance),
    ``x_train = rng.normal(size=(n_train, dim))``, ``y_train = x_train @ w_true +
    noise * rng.normal(size=n_train)``, then ``x_test`` and ``y_test`` the same way.
    The defaults (200 samples, 50 features, signal-to-noise ratio 1) leave room for ridge: at
    seed 0 least squares has test MSE 1.24 against 1.17 for the best penalty (lambda ~ 50 on
    the summed squared error), the noise floor being ``noise**2 = 1``.

    Returns:
      ``(x_train, y_train, x_test, y_test, w_true)``, float32; ``y`` has shape ``[N]``.
    """
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=dim) / np.sqrt(dim)
    arrays = []
    for n in (n_train, n_test):
        x = rng.normal(size=(n, dim))
        y = x @ w_true + noise * rng.normal(size=n)
        arrays += [x.astype(np.float32), y.astype(np.float32)]
    return (*arrays, w_true.astype(np.float32))
