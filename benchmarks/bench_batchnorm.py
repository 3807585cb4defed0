"""BatchNorm forward+backward: jaxreg.nn.BatchNorm vs flax.linen.BatchNorm (and torch if present).

One training step of the layer alone: ``jit(value_and_grad)`` of ``sum(y * w)`` with respect to
the params and the input, ``batch_stats`` mutable (running statistics updated), NHWC input,
statistics over N, H, W. jaxreg uses its default stable variance, flax its default fast variance
(``E[x^2] - E[x]^2``); the target is at most 5% slower. The input (``3 N(0, 1) + 1``) is an
ordinary activation, where jaxreg keeps the plain sums. Rows for information: flax's accurate
two-pass option (``use_fast_variance=False``); jaxreg on an input with ``|mean| / std = 1e4``,
where it recomputes the sums around the mean (flax's fast variance, timed on the same input, is
wrong there); and, if torch is importable, ``torch.nn.BatchNorm2d`` on a channels_last tensor
(forward + backward, cuDNN on a GPU), timed in the same interleaved loop.

On a GPU (128x56x56x256, one call ~1.5 ms) the time goes to starting the process, compiling
(each implementation is a program of its own, per dtype) and the 411 MB inputs, not to the
timed calls: there only jaxreg, flax and torch are timed (the informational two-pass and
ill-conditioned rows are CPU rows), 21 calls each, and each dtype's rows are yielded as soon
as they are measured.

On CPU, glibc returns the large freed buffers of every call to the OS and faults them back in
on the next one; that page-fault time can be half of a call and makes ratios swing by 10%.
``benchmarks/README.md`` gives the ``MALLOC_*`` settings that remove it (same for both sides).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp

from benchmarks.timing import interleaved_medians, row
from jaxreg.nn import BatchNorm

TARGET = "<= 1.05"


def _sizes(quick: bool) -> tuple[int, int, int, int]:
    if quick:
        return (32, 14, 14, 64)
    return (128, 56, 56, 256) if jax.default_backend() == "gpu" else (64, 28, 28, 128)


def inputs(quick: bool) -> Iterator[tuple[str, jax.Array, jax.Array]]:
    """For float32, then bfloat16: the row's config and the layer's NHWC inputs, ordinary
    (``3 z + 1``) and ill-conditioned (``z + 1e4``: |mean|/std = 1e4), ``z`` standard normal.
    Shared with ``bench_nnx_batchnorm``."""
    shape = _sizes(quick)
    z = jax.random.normal(jax.random.key(2), shape)
    for dtype in (jnp.float32, jnp.bfloat16):
        config = f"fwd+bwd train {'x'.join(map(str, shape))} {jnp.dtype(dtype).name}"
        yield config, (z * 3 + 1).astype(dtype), (z + 1e4).astype(dtype)


def repeats(quick: bool) -> int:
    """Timed calls per implementation (``interleaved_medians``)."""
    return 51 if quick else 21 if jax.default_backend() == "gpu" else 41


def _jax_step(module: fnn.Module, x: jax.Array) -> Callable[[], Any]:
    variables = module.init(jax.random.key(0), x)
    params, stats = variables["params"], variables["batch_stats"]
    w = jax.random.normal(jax.random.key(1), x.shape, x.dtype)

    def loss(p, xx):
        y, new = module.apply({"params": p, "batch_stats": stats}, xx, mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32) * w), new

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    return lambda: step(params, x)


def _torch_step(shape: tuple[int, ...], dtype_name: str) -> Callable[[], Any] | None:
    """``BatchNorm2d`` forward+backward on an NCHW tensor stored channels_last, or None."""
    try:
        import torch
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, h, w, c = shape
    dtype = getattr(torch, dtype_name)
    bn = torch.nn.BatchNorm2d(c).to(device=device, dtype=dtype)
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn_like(x)

    def step() -> None:
        bn.zero_grad(set_to_none=True)
        x.grad = None
        (bn(x).float() * dy).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def run(quick: bool) -> Iterator[dict[str, Any]]:
    full = jax.default_backend() != "gpu"  # the informational rows too
    torch_rows = False
    for config, x, x_ill in inputs(quick):
        fns = {
            "jaxreg": _jax_step(BatchNorm(use_running_average=False), x),
            "flax": _jax_step(fnn.BatchNorm(use_running_average=False), x),
        }
        if full:
            fns |= {
                "flax_exact": _jax_step(
                    fnn.BatchNorm(use_running_average=False, use_fast_variance=False), x),
                "jaxreg_ill": _jax_step(BatchNorm(use_running_average=False), x_ill),
                "flax_ill": _jax_step(fnn.BatchNorm(use_running_average=False), x_ill),
            }
        torch_step = _torch_step(x.shape, x.dtype.name)
        if torch_step is not None:
            fns["torch"] = torch_step
            torch_rows = True
        times = interleaved_medians(fns, repeats=repeats(quick), warmup=2)
        yield row("batchnorm", config, times["jaxreg"], "flax.linen.BatchNorm", times["flax"],
                  TARGET)
        if full:
            yield row("batchnorm", config, times["jaxreg"],
                      "flax.linen.BatchNorm(use_fast_variance=False)", times["flax_exact"], "info")
            yield row("batchnorm", config + " |mean|/std=1e4", times["jaxreg_ill"],
                      "flax.linen.BatchNorm (wrong variance here)", times["flax_ill"], "info")
        if torch_step is not None:
            yield row("batchnorm", config + " channels_last", times["jaxreg"],
                      "torch.nn.BatchNorm2d", times["torch"], "info")
    if not torch_rows:
        print("bench_batchnorm: torch is not importable; skipping torch.nn.BatchNorm2d rows")
