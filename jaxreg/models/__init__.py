"""The built-in models, each in flax linen and NNX form, and their one registry.

:data:`MODELS` maps a name to both forms (``MODELS["seed-mlp"].linen``, ``.nnx``) and
:func:`get` builds one. The linen forms (:mod:`jaxreg.models.linen`) are also importable from
here (``jaxreg.models.SeedMLP``); the NNX forms are in :mod:`jaxreg.models.nnx`. Needs only
flax (no ``[train]`` extra).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from flax import nnx as fnnx

from jaxreg._validate import check_choice, require
from jaxreg.models import nnx
from jaxreg.models.linen import (
    BN_EPSILON,
    BN_MOMENTUM,
    MLP,
    KerasMLP,
    Linear,
    SeedMLP,
    SmallCNN,
)


class Model(NamedTuple):
    """One registered model: its linen and NNX classes (see :func:`get` for their arguments)."""

    linen: Callable[..., Any]
    nnx: Callable[..., Any]


MODELS: dict[str, Model] = {
    "linear": Model(Linear, nnx.Linear),
    "seed-mlp": Model(SeedMLP, nnx.SeedMLP),
    "keras-mlp": Model(KerasMLP, nnx.KerasMLP),
    "small-cnn": Model(SmallCNN, nnx.SmallCNN),
}
"""The registered models by name (the CLI's ``--model``)."""


def get(name: str, num_classes: int | None = 10, *, api: str = "linen",
        input_shape: Sequence[int] | None = None, seed: int = 0) -> Any:
    """The registered model ``name`` with ``num_classes`` outputs (``None``: one, regression).

    Args:
      name: one of :data:`MODELS`.
      num_classes: the number of outputs; ``None`` (a regression dataset's) gives one.
      api: ``"linen"`` (a ``flax.linen.Module``) or ``"nnx"`` (an ``nnx.Module``).
      input_shape: NNX only, required: one example's shape (an NNX module is built for it).
      seed: NNX only: its weights are drawn from ``nnx.Rngs(seed)``.

    Returns:
      The model, linen or NNX.
    """
    model = MODELS[check_choice("name", name, MODELS)]
    check_choice("api", api, ("linen", "nnx"))
    if api == "linen":
        return model.linen(num_classes=num_classes or 1)
    require(input_shape is not None, "input_shape", "one example's shape with api='nnx'",
            input_shape)
    return model.nnx(tuple(input_shape), num_classes=num_classes or 1,  # type: ignore[arg-type]
                     rngs=fnnx.Rngs(seed))


__all__ = [
    "BN_EPSILON", "BN_MOMENTUM", "MLP", "MODELS", "KerasMLP", "Linear", "Model", "SeedMLP",
    "SmallCNN", "get", "linen", "nnx",
]
