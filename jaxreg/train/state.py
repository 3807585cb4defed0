"""The training state: one pytree with everything a step reads and writes.

Unlike :class:`flax.training.train_state.TrainState`, the state holds only arrays (no
``apply_fn`` or ``tx``), so it can be vmapped (hyperparameter sweeps read their values from
``opt_state``), sharded, donated to a jitted step and checkpointed as is. Its
:meth:`TrainState.apply_gradients` forwards extra keyword arguments such as ``batch_size=`` to
the optimizer's ``update``; flax's drops them (flax issue 4471), which breaks batch-size-scaled
regularizers.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxreg.train import nnx_bridge


@struct.dataclass
class TrainState:
    """``step`` (int32 count of applied steps), ``params``, ``model_state`` (the model's
    non-trained state: a linen model's ``batch_stats`` collection, an NNX module's batch
    statistics and ``nnx.Rngs`` keys and counters; ``{}`` for a model without any),
    ``opt_state`` and ``key``, the RNG key from which step ``t`` derives its dropout key as
    ``fold_in(key, t)``."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: optax.OptState
    key: jax.Array

    if TYPE_CHECKING:  # flax.struct.dataclass adds it; declared here for type checkers
        def replace(self, **updates: Any) -> TrainState: ...

    def apply_gradients(
        self, tx: optax.GradientTransformation, grads: Any, **extra_args: Any
    ) -> TrainState:
        """One optimizer step: ``u, s' = tx.update(g, s, params, **extra_args)``,
        ``params' = params + u``. Transformations that take no extra arguments ignore them."""
        updates, opt_state = optax.with_extra_args_support(tx).update(
            grads, self.opt_state, self.params, **extra_args
        )
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
        )


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(model: nn.Module, key: jax.Array, sample_x: Any) -> Any:
    """``model.init(key, sample_x, train=False)`` compiled as one program, cached per model
    (linen modules hash by their fields) and input shape. Run eagerly, flax's initializers
    compile every primitive separately (many small XLA compilations); this is one, with the
    same values bit for bit (timings: ``benchmarks/RESULTS.md``, "Notes moved from
    docstrings")."""
    return model.init(key, sample_x, train=False)


def create_train_state(
    model: Any, tx: optax.GradientTransformation, sample_x: Any, seed: int
) -> TrainState:
    """Initializes ``model`` on ``sample_x`` (a batch of inputs; only its shape and dtype
    matter) and ``tx`` on its parameters, with keys derived from ``seed``. An ``nnx.Module``
    (or its :class:`jaxreg.train.nnx_bridge.NNXModel`) gives its own variables instead."""
    init_key, step_key = jax.random.split(jax.random.key(seed))
    model = nnx_bridge.wrap(model)
    if isinstance(model, nn.Module):
        variables = _init_variables(model, init_key, sample_x)
    else:
        variables = model.init(init_key, sample_x, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        model_state=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        key=step_key,
    )
