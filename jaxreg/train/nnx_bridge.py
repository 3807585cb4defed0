"""Flax NNX modules in the engine: split once into the engine's pure form, merge back at the end.

The engine (:func:`jaxreg.train.fit`, :func:`jaxreg.train.evaluate`, :func:`jaxreg.train.sweep`,
checkpoints) works on pure functions of arrays: a linen-shaped ``apply(variables, x, train=...)``
and a :class:`jaxreg.train.TrainState`. An ``nnx.Module`` (built with its ``nnx.Rngs``) enters
it through :func:`wrap`, which splits it once::

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

``params`` (the ``nnx.Param`` variables) become ``TrainState.params``; ``rest`` (batch
statistics, ``nnx.Rngs`` counters and keys, any other variable) becomes
``TrainState.model_state``, the state that a training step carries along without
differentiating it. Inside the jitted step, :meth:`NNXModel.apply` merges
``graphdef, params, rest`` into a module, sets ``.train()`` or ``.eval()``, calls it and, in
training, splits the updated ``rest`` out again: batch statistics update as in
``nnx.BatchNorm``, and each ``nnx.Dropout`` draws from its own ``nnx.Rngs`` stream, whose
count advances by one per call (per step, or per micro-batch with ``accumulate``), exactly
as in an ``@nnx.jit`` loop (a step skipped as non-finite keeps all of ``rest``, so its
draw is repeated by the next step). RNG keys travel as their raw ``uint32`` data
(``jax.random.key_data``), since the engine casts and selects that state like any array.

The whole epoch is then the engine's one ``lax.scan`` over pure arrays, with no graph
traversal per step; :func:`merge` puts a trained state back into an ``nnx.Module``.
The module's initial weights are its own (the engine's ``seed`` only orders the data).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def _key_data(rest: nnx.State) -> nnx.State:
    """``rest`` with every ``nnx.RngKey`` holding ``key_data(key)`` instead of the key."""
    return jax.tree.map(
        lambda v: v.replace(jax.random.key_data(v.get_value())) if isinstance(v, nnx.RngKey) else v,
        rest, is_leaf=lambda v: isinstance(v, nnx.Variable))


def _wrap_keys(rest: nnx.State, impls: tuple[tuple[Any, Any], ...]) -> nnx.State:
    """Inverse of :func:`_key_data`: the ``nnx.RngKey`` data wrapped with the recorded impls."""
    impl = dict(impls)
    flat = [(path, v.replace(jax.random.wrap_key_data(v.get_value(), impl=impl[path]))
             if isinstance(v, nnx.RngKey) else v) for path, v in nnx.to_flat_state(rest)]
    return nnx.from_flat_state(flat)


@dataclasses.dataclass(frozen=True)
class NNXModel:
    """A split ``nnx.Module`` seen as a linen-shaped model by the engine.

    ``graphdef`` (static, hashable) and ``key_impls`` (the PRNG implementation of each
    ``nnx.RngKey``) define it: two wraps of the same architecture compare equal, so compiled
    evaluations are shared. ``variables`` holds the module's weights at :func:`wrap` time, the
    initial state that :meth:`init` returns.
    """

    graphdef: Any
    key_impls: tuple[tuple[Any, Any], ...]
    variables: dict[str, nnx.State] = dataclasses.field(compare=False, repr=False)

    def init(self, key: jax.Array, x: Any, train: bool = False) -> dict[str, nnx.State]:
        """``{"params": ..., "batch_stats": rest}`` of the wrapped module (its own weights,
        built by its ``nnx.Rngs``; ``key`` and ``x`` are not used)."""
        del key, x, train
        return self.variables

    def init_with_output(self, key: jax.Array, x: Any, train: bool = False) -> tuple[Any, Any]:
        """``(outputs, variables)``, as linen's: the outputs of the wrapped module on ``x``
        (``train`` selects its mode) and its variables (:meth:`init`)."""
        variables = self.init(key, x)
        return self.apply(variables, x, train=train), variables

    def module(self, variables: dict[str, Any]) -> nnx.Module:
        """``nnx.merge(graphdef, params, rest)`` of engine variables, with new ``nnx.Variable``
        objects (``copy=True``): a module merged inside a trace (e.g. under ``jax.grad``) owns
        variables of that trace, which it may update."""
        return nnx.merge(self.graphdef, variables["params"],
                         _wrap_keys(variables["batch_stats"], self.key_impls), copy=True)

    def apply(self, variables: dict[str, Any], x: Any, *, train: bool, mutable: Any = False,
              rngs: Any = None, capture_intermediates: bool = False) -> Any:
        """``module(x)`` in ``.train()`` or ``.eval()`` mode; with ``mutable``, also
        ``{"batch_stats": rest after the call}``, and with ``capture_intermediates`` the
        outputs of every submodule's call under ``"intermediates"`` (``nnx.capture``), as linen.
        ``rngs`` (the engine's per-step key) is not used: the module's ``nnx.Rngs`` streams live
        in ``rest``."""
        del rngs
        module = self.module(variables)
        if train:
            module.train()
        else:
            module.eval()
        if capture_intermediates:
            outputs, *intermediates = nnx.capture(module, method_outputs=nnx.Intermediate)(x)
        else:
            outputs, intermediates = module(x), None
        if not mutable:
            return outputs
        _, _, rest = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]
        updates = {"batch_stats": _key_data(rest)}
        return outputs, updates if intermediates is None else {
            **updates,
            "intermediates": intermediates,
        }


def wrap(model: Any) -> Any:
    """An ``nnx.Module`` as an :class:`NNXModel` (split once); anything else unchanged."""
    if not isinstance(model, nnx.Module):
        return model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    impls = tuple((path, jax.random.key_impl(v.get_value()))
                  for path, v in nnx.to_flat_state(rest) if isinstance(v, nnx.RngKey))
    # copies: the engine donates its state's buffers, which must not be the module's
    variables = jax.tree.map(jnp.copy, {"params": params, "batch_stats": _key_data(rest)})
    return NNXModel(graphdef, impls, variables)


def merge(model: Any, state: Any) -> Any:
    """The trained ``nnx.Module`` of a :class:`jaxreg.train.TrainState` (in ``.eval()``
    mode) when ``model`` is an :class:`NNXModel`; otherwise ``model`` itself (a linen module
    holds no weights)."""
    if not isinstance(model, NNXModel):
        return model
    module = model.module({"params": state.params, "batch_stats": state.model_state})
    module.eval()
    return module
