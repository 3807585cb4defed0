"""Flax (linen) layers: the batch normalization family and CPU-fast convolution and pooling.

``BatchNorm``, ``BatchRenorm`` and the tools are :mod:`jaxreg.batchnorm`'s; the tools take NNX
models too. :mod:`jaxreg.nn.functional` is the BatchNorm core (:mod:`jaxreg.batchnorm.core`),
:mod:`jaxreg.nn.layers` holds :func:`im2col_conv` and :func:`max_pool_2x2`. Depends only on
jax, flax and numpy (never on jaxreg.train, data or cli).
"""
import sys

from jaxreg.batchnorm import core as functional
from jaxreg.batchnorm.core import momentum_from_keras, momentum_from_torch
from jaxreg.batchnorm.linen import BatchNorm, BatchRenorm
from jaxreg.batchnorm.tools import fold_batchnorm, recalibrate_batch_stats
from jaxreg.nn.layers import im2col_conv, max_pool_2x2

# ``import jaxreg.nn.functional`` works as ``import os.path`` does: the module is the core.
sys.modules[f"{__name__}.functional"] = functional

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "fold_batchnorm",
    "functional",
    "im2col_conv",
    "max_pool_2x2",
    "momentum_from_keras",
    "momentum_from_torch",
    "recalibrate_batch_stats",
]
