"""``--deterministic``: XLA's deterministic GPU kernels, so that a resumed run is bit-exact there.

On a GPU, XLA autotunes: when it compiles a matrix product or a convolution it times candidate
kernels and keeps the fastest, which can be another one in another process; and some
reductions and scatters add with atomics, in a varying order. A run resumed in a new process
can then compute other bits than the uninterrupted run. ``--xla_gpu_deterministic_ops=true``
turns autotuning off and uses deterministic kernels (XLA refuses to compile an op that has
none). CPU kernels are deterministic anyway; the flag changes nothing there. XLA reads
``XLA_FLAGS`` once, when jax starts its backend, so :func:`request` must run before anything is
computed; library users set the variable themselves before importing jax::

    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true"
    import jax
"""
from __future__ import annotations

import os

__all__ = ["FLAG", "enabled", "request", "resume_note"]

FLAG = "xla_gpu_deterministic_ops"
"""The XLA flag (``--xla_gpu_deterministic_ops=true`` in ``XLA_FLAGS``)."""


def enabled() -> bool:
    """Whether ``XLA_FLAGS`` turns :data:`FLAG` on (its last occurrence; a bare flag is on)."""
    value = False
    for token in os.environ.get("XLA_FLAGS", "").split():
        name, _, given = token.removeprefix("--").partition("=")
        if name == FLAG:
            value = given.lower() in ("", "true", "1")
    return value


def request(deterministic: bool) -> None:
    """Adds ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` if ``deterministic`` and it is
    not on yet (a user's own ``XLA_FLAGS`` are kept).

    Raises:
      ValueError: jax's backend has already started in this process, so the flag would do
        nothing (``jaxreg.cli.main`` called after computing something).
    """
    if not deterministic or enabled():
        return
    from jax._src import xla_bridge  # jax has no public "has the backend started?"

    if xla_bridge.backends_are_initialized():
        raise ValueError(f"--deterministic: jax's backend has already started in this process; "
                         f"set XLA_FLAGS=--{FLAG}=true before importing jax")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{FLAG}=true".strip()


def resume_note(started_deterministic: bool, backend: str) -> str | None:
    """The line ``jaxreg train --resume`` prints when the run started with the other setting
    (``config.json``'s ``deterministic``) than this process has, on a GPU (``backend``); else
    ``None`` (CPU kernels are deterministic either way)."""
    if started_deterministic == enabled() or backend != "gpu":
        return None
    then, now = ("on", "off") if started_deterministic else ("off", "on")
    return (f"note: this run started with deterministic GPU kernels {then} and resumes with "
            f"them {now} (--deterministic): its numbers may differ from an uninterrupted run's")
