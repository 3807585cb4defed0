"""Flax NNX layers: the batch normalization family (:mod:`jaxreg.batchnorm`).

The tools take NNX models: ``recalibrate_batch_stats(model, batches)`` (PreciseBN, in place)
and ``fold_batchnorm(model, [(model.linear, model.bn)])`` (the model in ``.eval()`` mode;
epsilon read from the layer); ``BatchNorm(n, momentum=momentum_from_torch(0.1),
unbiased_running_var=True, rngs=...)`` is PyTorch's ``BatchNorm(momentum=0.1)``. Depends only
on jax, flax and numpy (never on jaxreg.train, data or cli).
"""
from jaxreg.batchnorm.core import momentum_from_keras, momentum_from_torch
from jaxreg.batchnorm.nnx import BatchMoments, BatchNorm, BatchRenorm
from jaxreg.batchnorm.tools import fold_batchnorm, recalibrate_batch_stats

__all__ = [
    "BatchMoments",
    "BatchNorm",
    "BatchRenorm",
    "fold_batchnorm",
    "momentum_from_keras",
    "momentum_from_torch",
    "recalibrate_batch_stats",
]
