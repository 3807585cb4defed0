"""Datasets for jaxreg's experiments, as numpy arrays ready for a jit-compiled training loop.

``load(name)`` returns a :class:`Dataset` for one of :data:`DATASETS`:

- ``fashion-mnist``, ``mnist``: 28x28 grey images in IDX files, found locally or downloaded
  with a sha256 check (see :mod:`jaxreg.data.sources` for the search order);
- ``digits``: scikit-learn's bundled 8x8 digits, the dataset that never needs a download;
- ``synthetic-ridge``: a seeded linear regression problem (:func:`make_ridge`).

Images are float32 in [0, 1] with shape ``[N, H, W, 1]`` (NHWC, so a CNN takes them as they
are; an MLP flattens them), labels int32. The whole dataset is returned in memory: these are
small enough to sit on the device at once, which is what an epoch-on-device loop wants. The IDX
images are 64-byte aligned, so that on CPU ``jax.device_put`` uses them in place (no copy).
This layer imports numpy (and scikit-learn for ``digits``) only, never the training loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jaxreg._extras import require_train
from jaxreg.data import sources
from jaxreg.data.idx import DataError, parse_idx, read_bytes, read_idx

require_train("jaxreg.data")  # scikit-learn (digits); and this layer is the training side

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
      fingerprint: a sha256 hex digest that identifies the data, recorded by a run so that
        resuming or evaluating it on other data is refused. IDX datasets: the sha256 of the
        lines ``"<stem> <sha256 of its IDX content>"`` of the four files in
        :data:`sources.IDX_FILES` order (a ``.gz`` and a plain copy give the same); otherwise
        (the default, ``None``): the sha256 of the four arrays' dtypes, shapes and bytes.
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    num_classes: int | None
    source: str
    task: str
    fingerprint: str | None = None

    def __post_init__(self):
        if self.fingerprint is None:
            digest = hashlib.sha256()
            for a in (self.x_train, self.y_train, self.x_test, self.y_test):
                a = np.ascontiguousarray(a)
                digest.update(f"{a.dtype.str} {a.shape}\n".encode())
                digest.update(a.tobytes())
            object.__setattr__(self, "fingerprint", digest.hexdigest())


def load(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
         seed: int = 0) -> Dataset:
    """Loads dataset ``name`` (one of :data:`DATASETS`).

    Args:
      name: dataset name.
      data_dir: directory holding the IDX files (IDX datasets only): the only place looked
        at when given, never replaced by another copy (see :mod:`jaxreg.data.sources`).
      download: whether an IDX dataset found nowhere locally may be downloaded into the cache.
      seed: generator seed of ``synthetic-ridge``; the other datasets are fixed (the digits
        split uses a fixed seed so that results stay comparable across model seeds).

    Raises:
      ValueError: ``name`` is unknown.
      DataError: the IDX files are missing, corrupt (sha256), another dataset's, or
        inconsistent (shapes, counts, labels); see :func:`_load_idx`.

    Examples:
      scikit-learn's digits, bundled with it (no download): 8x8 float32 images:

      >>> import jaxreg.data
      >>> ds = jaxreg.data.load("digits")
      >>> ds.x_train.shape, ds.x_test.shape, ds.x_train.dtype.name, ds.num_classes
      ((1437, 8, 8, 1), (360, 8, 8, 1), 'float32', 10)
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
    """Reads and checks the four IDX files of an MNIST-format dataset (10 classes).

    Each file must be a valid IDX file matching its known sha256 (:func:`sources.verify`);
    then, so that inconsistent files are refused here rather than at the end of a training
    run: images are 3-d and labels 1-d unsigned bytes, as many labels as images, both splits
    non-empty with images of one shape, labels in ``0..9``.
    """
    directory, source = sources.locate(name, data_dir, download)
    digests = []

    def read(stem: str, ndim: int) -> tuple[Path, np.ndarray]:
        path = sources.find_file(directory, stem)
        assert path is not None, f"{directory}/{stem}"  # sources.locate found all four files
        raw, content = read_bytes(path)
        array = parse_idx(content, path)  # first, as "not an IDX file" says more than a sum
        digests.append(f"{stem} {sources.verify(name, stem, path, raw, content)}\n")
        if array.ndim != ndim or array.dtype != np.uint8:
            raise DataError(f"{path}: expected {ndim}-d unsigned bytes, got {array.ndim}-d "
                            f"{array.dtype} with shape {array.shape}")
        return path, array

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images_path, images = read(f"{prefix}-images-idx3-ubyte", 3)
        labels_path, labels = read(f"{prefix}-labels-idx1-ubyte", 1)
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} "
                            f"images of {images_path}")
        if not len(images):
            raise DataError(f"{images_path}: no images (an empty {prefix} split)")
        if labels.max() >= 10:
            raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
        return _scale_to_float32(images[..., None], 255), labels.astype(np.int32)

    x_train, y_train = split("train")
    x_test, y_test = split("t10k")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{directory}: test images are {'x'.join(map(str, x_test.shape[1:3]))}, "
                        f"training images {'x'.join(map(str, x_train.shape[1:3]))}")
    fingerprint = hashlib.sha256("".join(digests).encode()).hexdigest()
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=10, source=source,
                   task="classification", fingerprint=fingerprint)


_ALIGNMENT = 64
"""Bytes to which ``_scale_to_float32`` aligns its output: XLA CPU's alignment, at which
``jax.device_put`` aliases a host array instead of copying it."""


def _scale_to_float32(values: np.ndarray, scale: float, threads: int = 2) -> np.ndarray:
    """``float32(values) / float32(scale)`` in a new C-contiguous array aligned to
    ``_ALIGNMENT`` bytes, computed by ``threads`` threads over the leading axis.

    The same values as ``values.astype(np.float32) / np.float32(scale)``, made so for speed:
    on this 2-core CPU, Fashion-MNIST's 188 MB of float32 training images cost 0.46 s to
    convert, nearly all of it the first touch of the output's pages, which two threads halve;
    and since the array is aligned, the training loop's ``jax.device_put`` on CPU takes it as it
    is instead of copying it (0.35 s and another 188 MB saved).
    """
    size = values.size * 4
    buffer = np.empty(size + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    out = buffer[start:start + size].view(np.float32).reshape(values.shape)
    scale32 = np.float32(scale)
    bounds = np.linspace(0, len(values), max(1, threads) + 1).astype(int)
    chunks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with ThreadPoolExecutor(len(chunks) or 1) as pool:  # numpy releases the GIL in divide
        list(pool.map(lambda s: np.divide(values[s], scale32, out=out[s], dtype=np.float32),
                      chunks))
    return out


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
