"""The optional extras: ``[train]`` (the engine, data, models, plots and CLI beyond jax) and
``[tensorboard]`` (TensorBoard event files).

``pip install jaxreg`` installs what the transforms, schedules, plateau, masks, ``jaxreg.nn``
and ``jaxreg.nnx`` need; the layers above them call :func:`require_train` when imported (the
TensorBoard writer calls :func:`require_extra` when it opens), so a missing extra is one line
naming the command that installs it rather than an import error deep inside orbax, matplotlib
or tensorboardX.
"""
from __future__ import annotations

import importlib.util

TRAIN_MODULES = ("orbax.checkpoint", "tqdm", "matplotlib", "sklearn")
"""Modules of the ``[train]`` extra (orbax-checkpoint, tqdm, matplotlib, scikit-learn)."""

EXTRAS = {"train": TRAIN_MODULES, "tensorboard": ("tensorboardX",)}
"""Each extra's modules, checked by :func:`require_extra`."""


def install(extra: str) -> str:
    """The command that installs ``extra``: ``pip install "jaxreg[<extra>]"``."""
    return f'pip install "jaxreg[{extra}]"'


def missing(modules: tuple[str, ...] = TRAIN_MODULES) -> list[str]:
    """The modules of ``modules`` that cannot be found (found ones are not imported)."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a missing parent package; a None in sys.modules
            found = False
        if not found:
            absent.append(name)
    return absent


def require_extra(feature: str, extra: str) -> None:
    """Raises ModuleNotFoundError, one line naming :func:`install`, if ``extra`` (a key of
    :data:`EXTRAS`) is not installed."""
    if absent := missing(EXTRAS[extra]):
        raise ModuleNotFoundError(f"{feature} needs the [{extra}] extra (missing: "
                                  f"{', '.join(absent)}); install it with: {install(extra)}",
                                  name=absent[0])


def require_train(feature: str) -> None:
    """:func:`require_extra` for the ``[train]`` extra."""
    require_extra(feature, "train")
