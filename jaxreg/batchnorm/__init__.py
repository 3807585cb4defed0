"""The batch normalization family, one package: the maths and both flax front ends.

Modules, lowest first: ``core`` (pure functions of arrays; public name
:mod:`jaxreg.nn.functional`) -> ``layer`` (one layer call: hyperparameters onto the core) ->
``linen`` and ``nnx`` (the flax linen and NNX modules: variables only) -> ``tools``
(recalibration and folding, written once for both). The public faces are :mod:`jaxreg.nn`
(linen) and :mod:`jaxreg.nnx`; this package depends only on jax, flax and numpy.
"""
