"""Flax NNX modules: the batch normalization family (the core is :mod:`jaxreg.nn.functional`).

The tools of :mod:`jaxreg.nn` take NNX models too and are re-exported here:
``recalibrate_batch_stats(model, batches)`` (PreciseBN, in place), ``fold_batchnorm(model,
[(model.linear, model.bn)])`` (epsilon read from the layer) and the momentum converters
(``BatchNorm(n, momentum=momentum_from_torch(0.1), unbiased_running_var=True, rngs=...)`` is
PyTorch's ``BatchNorm(momentum=0.1)``).

jaxreg.nnx depends only on jax/flax/numpy and jaxreg.nn (never on jaxreg.train, data or cli).
"""
from jaxreg.nn import (
    fold_batchnorm,
    momentum_from_keras,
    momentum_from_torch,
    recalibrate_batch_stats,
)
from jaxreg.nnx.normalization import BatchMoments, BatchNorm, BatchRenorm

__all__ = [
    "BatchMoments",
    "BatchNorm",
    "BatchRenorm",
    "fold_batchnorm",
    "momentum_from_keras",
    "momentum_from_torch",
    "recalibrate_batch_stats",
]
