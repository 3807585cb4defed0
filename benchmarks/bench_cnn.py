"""SmallCNN training steps as ``fit`` runs them: a scanned epoch, jaxreg's model vs flax's layers.

``SmallCNN`` (Conv 3x3 32 -> BN -> relu -> pool, Conv 3x3 64 -> BN -> relu -> pool, Dense 128,
Dense 10), Adam 1e-3, batch 128 of 28x28x1 images, ``jit(scan_epoch(step=train_step))`` with the
state donated, against the same model written with flax's ``nn.Conv`` (``lax.conv``) and
``nn.max_pool`` -- what SmallCNN was before :func:`jaxreg.nn.im2col_conv` and
:func:`jaxreg.nn.max_pool_2x2` (which it uses on CPU only). Rows give seconds per epoch of
``steps`` steps and, in ``gflops``, XLA's FLOP count of one step over its time. Target on CPU: a
60000-example epoch (468 steps) in at most 30 s, i.e. 64 ms per step; information on GPU,
where both sides use ``lax.conv``. ``--quick``: 2 steps. Each side compiles its epoch once;
the FLOP count comes from the lowered step, not a second compilation (which made the CPU dry
run of ``benchmarks/gpu.sh`` overrun its limit).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.timing import interleaved_medians, row
from jaxreg import models
from jaxreg.nn import BatchNorm
from jaxreg.train import create_train_state, scan_epoch, train_step

BATCH_SIZE = 128


class FlaxLayersCNN(models.SmallCNN):
    """SmallCNN with flax's ``Conv`` and ``max_pool``: the reference."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for c in self.channels:
            x = nn.Conv(c, (3, 3))(x)
            x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=models.BN_EPSILON)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def run(quick: bool) -> list[dict[str, Any]]:
    steps = 2 if quick else 8
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((steps * BATCH_SIZE, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, len(x)).astype(np.int32))
    tx = optax.adam(1e-3)
    fns: dict[str, Callable[[], Any]] = {}
    flops: dict[str, float] = {}
    key = jax.random.key(1)
    for name, model in (("jaxreg", models.SmallCNN()), ("flax", FlaxLayersCNN())):
        step = functools.partial(train_step, model=model, tx=tx, skip_nonfinite=True)
        state0 = create_train_state(model, tx, x[:1], 0)
        epoch = jax.jit(functools.partial(scan_epoch, step=step, batch_size=BATCH_SIZE),
                        donate_argnums=0)
        fns[name] = functools.partial(lambda e, s: e(jax.tree.map(jnp.copy, s), x, y, key)[1],
                                      epoch, state0)
        # XLA's count on the lowered (not compiled) step: no compilation beyond the timed epoch's
        cost = jax.jit(step).lower(state0, x[:BATCH_SIZE], y[:BATCH_SIZE]).cost_analysis()
        assert cost is not None, "the backend reports no cost analysis"
        flops[name] = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
    times = interleaved_medians(fns, repeats=2 if quick else 3, warmup=1)
    per_step = {k: v / steps for k, v in times.items()}
    target = "<= 0.064 s/step (CPU)" if jax.default_backend() == "cpu" else "info"
    return [
        row(
            "cnn",
            f"SmallCNN scanned epoch, batch {BATCH_SIZE}, {steps} steps",
            times["jaxreg"],
            "flax Conv + max_pool",
            times["flax"],
            target,
            seconds_per_step=per_step["jaxreg"],
            reference_seconds_per_step=per_step["flax"],
            gflops=flops["jaxreg"] / per_step["jaxreg"] / 1e9,
            reference_gflops=flops["flax"] / per_step["flax"] / 1e9,
        )
    ]
