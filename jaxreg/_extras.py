"""The optional ``[train]`` extra: what the engine, data, models, plots and CLI need beyond jax.

``pip install jaxreg`` installs what the transforms, schedules, plateau, masks, ``jaxreg.nn``
and ``jaxreg.nnx`` need; the layers above them call :func:`require_train` when imported, so a
missing extra is one line naming the command that installs it rather than an import error deep
inside orbax or matplotlib.
"""
from __future__ import annotations

import importlib.util

TRAIN_MODULES = ("orbax.checkpoint", "tqdm", "matplotlib", "sklearn")
"""Modules of the ``[train]`` extra (orbax-checkpoint, tqdm, matplotlib, scikit-learn)."""

INSTALL = 'pip install "jaxreg[train]"'


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


def require_train(feature: str) -> None:
    """Raises ModuleNotFoundError, one line naming ``INSTALL``, if the extra is not installed."""
    if absent := missing():
        raise ModuleNotFoundError(f"{feature} needs the [train] extra (missing: "
                                  f"{', '.join(absent)}); install it with: {INSTALL}",
                                  name=absent[0])
