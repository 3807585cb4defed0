"""Helpers shared by the tests (test modules never import each other: tests/test_layout.py).

- BatchNorm: the NumPy float64 reference ``np_batchnorm``, ``random_inputs``, ``train_step``,
  ``masked_sync_inputs`` (of the cross-device programs).
- Data: tiny IDX files of the real format, written by an encoder of this module's own
  (independent of jaxreg.data's parser): ``write_idx``, ``write_dataset``, ``tiny_files``,
  ``write``.
- Subprocesses: ``source_env`` (this tree first on the path), ``cpu_devices_env`` and
  ``run_module`` (simulated CPU devices, ``--xla_force_host_platform_device_count``, while the
  pytest process keeps its one device); the programs they run are ``tests/programs/*.py``.
- Precision: the tests' side of the matmul-precision policy (docs/conventions.md, "Matmul
  precision"). Float32 matmuls follow ``jax_default_matmul_precision`` (exact float32 on CPU,
  TF32 on GPU, bfloat16 passes on TPU by default); a test comparing them against a reference
  pins ``"highest"`` (the ``highest_precision`` fixture of ``conftest.py``) or takes its
  tolerance from :func:`matmul_tolerance`.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# --- BatchNorm references

EPS = 1e-5


def _axes(ndim, axis):
    feature = tuple(sorted({a % ndim for a in ((axis,) if isinstance(axis, int) else axis)}))
    return feature, tuple(a for a in range(ndim) if a not in feature)


def np_batchnorm(x, axis, gamma, beta, dy, mask=None, eps=EPS):
    """Float64 reference: outputs, batch mean/var (biased) and the backprop formulas.

    Unmasked (docs/formulas.md): dgamma = sum(dy * x_hat), dbeta = sum(dy),
    dx = (1/N) * gamma / sqrt(var + eps) * (N*dy - sum(dy) - x_hat * sum(dy * x_hat)).
    With a mask w (elements outside it are normalized but do not enter the statistics) the same
    derivation gives
    dx = gamma / sqrt(var + eps) * (dy - w/N * (sum(dy) + x_hat * sum(dy * x_hat))),
    which is the formula above when w = 1.
    """
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    feature, red = _axes(x.ndim, axis)
    bshape = [x.shape[a] if a in feature else 1 for a in range(x.ndim)]
    gamma = np.asarray(gamma, np.float64).reshape(bshape)
    beta = np.asarray(beta, np.float64).reshape(bshape)
    w = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape).astype(np.float64)
    n = w.sum(red, keepdims=True)
    mu = (w * x).sum(red, keepdims=True) / n
    var = (w * (x - mu) ** 2).sum(red, keepdims=True) / n
    inv = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mu) * inv
    y = gamma * x_hat + beta
    s1 = dy.sum(red, keepdims=True)
    s2 = (dy * x_hat).sum(red, keepdims=True)
    if mask is None:
        dx = (1.0 / n) * gamma * inv * (n * dy - s1 - x_hat * s2)
    else:
        dx = gamma * inv * (dy - w / n * (s1 + x_hat * s2))
    fshape = [x.shape[a] for a in feature]
    return dict(y=y, mean=mu.reshape(fshape), var=var.reshape(fshape), n=n.reshape(fshape),
                dx=dx, dgamma=s2.reshape(fshape), dbeta=s1.reshape(fshape))


def train_step(module, variables, x, dy, mask=None):
    """Output, updated batch_stats and grads wrt (params, x) of sum(y * dy) in training mode."""

    def loss(params, x):
        y, new = module.apply({**variables, "params": params}, x, use_running_average=False,
                              mask=mask, mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32) * dy), (y, new["batch_stats"])

    (_, (y, stats)), (dparams, dx) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        variables.get("params", {}), x)
    return y, stats, dparams, dx


def random_inputs(shape, axis, seed=0, loc=0.5, scale=2.0):
    k = jax.random.split(jax.random.key(seed), 4)
    feature, _ = _axes(len(shape), axis)
    fshape = [shape[a] for a in feature]
    x = loc + scale * jax.random.normal(k[0], shape)
    dy = jax.random.normal(k[1], shape)
    gamma = 1.0 + 0.3 * jax.random.normal(k[2], fshape)
    beta = 0.3 * jax.random.normal(k[3], fshape)
    return x, dy, gamma, beta


def masked_sync_inputs(shape):
    """The cross-device programs' inputs, of ``shape = (B, T, C)`` with ``B`` a multiple of 8.

    Returns ``x ~ 3 + 2 N(0, 1)``, a cotangent ``dy ~ N(0, 1)`` and a mask of shape ``(B, T,
    1)``: the examples of device ``i`` of 8 keep each step with probability ``(i + 1) / 9``
    (very unequal counts; ``[0, 0]`` always kept).
    """
    b, t, _ = shape
    kx, kdy, km = jax.random.split(jax.random.key(0), 3)
    x = 3.0 + 2.0 * jax.random.normal(kx, shape)
    dy = jax.random.normal(kdy, shape)
    p = jnp.repeat((jnp.arange(8) + 1) / 9.0, b // 8)[:, None, None]
    mask = (jax.random.uniform(km, (b, t, 1)) < p).at[0, 0].set(True)
    return x, dy, mask


# --- IDX data files

def write_idx(path, array, dtype_code=0x08, compress=None):
    """Writes ``array`` as an IDX file (gzip when the name ends in .gz); returns the bytes."""
    array = np.asarray(array)
    raw = (struct.pack(">BBBB", 0, 0, dtype_code, array.ndim)
           + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(">u1").tobytes())
    blob = gzip.compress(raw) if str(path).endswith(".gz") else raw
    Path(path).write_bytes(blob)
    return blob


def write_dataset(directory, marker, n_train=6, n_test=4, suffix=".gz"):
    """Writes four tiny IDX files whose first pixel is ``marker``, to tell sources apart."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[0, 0, 0] = marker
        images[-1, -1, -1] = 255
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return directory


def idx_bytes(array) -> bytes:
    """An uncompressed IDX file of unsigned bytes: magic 00 00 08 ndim, dims, payload."""
    array = np.asarray(array, np.uint8)
    return (struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
            + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def tiny_files(n_train=6, n_test=4, test_shape=(28, 28), labels_train=None, marker=1):
    """Stem -> IDX bytes of a tiny dataset (first pixel ``marker``, to tell copies apart)."""
    rng = np.random.default_rng(marker)
    train = rng.integers(0, 256, (n_train, 28, 28))
    train.flat[:1] = marker
    test = rng.integers(0, 256, (n_test, *test_shape))
    return {
        "train-images-idx3-ubyte": idx_bytes(train),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(n_train) % 10 if labels_train is None
                                             else labels_train),
        "t10k-images-idx3-ubyte": idx_bytes(test),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(n_test) % 10),
    }


def write(directory: Path, files: dict, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, content in files.items():
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (directory / stem).write_bytes(content)
    return directory


# --- Subprocesses: this tree on the path, simulated CPU devices

ROOT = Path(__file__).resolve().parents[1]


def source_env(**variables: str) -> dict[str, str]:
    """This process's environment plus ``variables``, the repository root first on the path
    (so a subprocess imports this tree and runs ``python -m tests.programs.<name>`` anywhere)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)


def cpu_devices_env(devices: int) -> dict[str, str]:
    """:func:`source_env` with ``devices`` simulated CPU devices."""
    return source_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                      JAX_PLATFORMS="cpu")


def run_module(module: str, *args: str, devices: int = 8, timeout: float = 300) -> str:
    """Runs ``python -m module *args`` on ``devices`` simulated CPU devices; its stdout. Asserts
    it exits 0, showing the end of its stderr otherwise."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=cpu_devices_env(devices), timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# --- Matmul precision

#: The relative rounding of a matmul operand at the default precision, per backend: float32's
#: unit roundoff, TF32's (10 explicit mantissa bits), bfloat16's (7).
DEFAULT_ROUNDOFF = {"cpu": 2.0**-24, "gpu": 2.0**-11, "tpu": 2.0**-8}


def matmul_tolerance(tol: float) -> float:
    """``tol``, a float32 tolerance at full precision, raised to 16 roundoffs of this backend's
    default precision unless the precision is pinned to ``"highest"``/``"float32"``."""
    if jax.config.jax_default_matmul_precision in ("highest", "float32"):  # type: ignore[attr-defined]
        return tol
    return max(tol, 16 * DEFAULT_ROUNDOFF.get(jax.default_backend(), 2.0**-8))


def run_main(argv: list) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``jaxreg ARGV`` (:func:`jaxreg.cli.main`) run in this
    process; ``argv``'s items as strings."""
    from jaxreg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def fill_disk_at(monkeypatch, step: int) -> None:
    """Makes the checkpoint of ``step`` fail to write, as a full disk (ENOSPC) would, in the
    integrity record's write (the last file of a checkpoint); the other steps write normally."""
    from jaxreg.train import checkpoint

    write_record = checkpoint._write_record

    def full_disk(step_dir):
        if step_dir.name == str(step):
            raise OSError(28, "No space left on device")
        write_record(step_dir)

    monkeypatch.setattr(checkpoint, "_write_record", full_disk)

