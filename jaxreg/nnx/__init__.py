"""Flax NNX modules: the batch normalization family (the core is :mod:`jaxreg.nn.functional`).

jaxreg.nnx depends only on jax/flax/numpy and jaxreg.nn (never on jaxreg.train, data or cli).
"""
from jaxreg.nnx.normalization import BatchMoments, BatchNorm, BatchRenorm

__all__ = ["BatchMoments", "BatchNorm", "BatchRenorm"]
