"""Flax (linen) modules and tools: the batch normalization family.

jaxreg.nn depends only on jax/flax/numpy (never on jaxreg.train, data or cli).
"""
from jaxreg.nn.batch_stats import fold_batchnorm, recalibrate_batch_stats
from jaxreg.nn.normalization import (
    BatchNorm,
    BatchRenorm,
    momentum_from_keras,
    momentum_from_torch,
)

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "fold_batchnorm",
    "momentum_from_keras",
    "momentum_from_torch",
    "recalibrate_batch_stats",
]
