"""Batch-size schedules in the engine: the batch size of each epoch of a run.

``fit(batch_size=...)`` takes an integer, boundaries ``{epoch: size}`` (or ``[(epoch, size),
...]``: ``size`` from that epoch on, epoch 0 included), or a
:class:`jaxreg.schedules.BatchSizeSchedule`, whose boundaries are steps: epoch ``e`` trains at
``schedule.batch_size(s_e)``, ``s_e = sum_{j<e} N // b_j`` the steps before it (a boundary
inside an epoch takes effect at the next one). The run's steps are ``sum_e N // b_e``.
``jaxreg train --batch-size-schedule 5:256,8:512`` is :func:`parse`'s syntax.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxreg._validate import check_int, message, require
from jaxreg.transforms.schedules import BatchSizeSchedule


def boundaries(batch_size: Any) -> dict[int, int]:
    """``{epoch: size}`` of ``batch_size`` given as an integer or boundaries (checked, sorted);
    ValueError/TypeError naming ``batch_size``."""
    if not isinstance(batch_size, (Mapping, Sequence)) or isinstance(batch_size, str):
        return {0: check_int("batch_size", batch_size, 1, exact=True)}
    pairs = list(batch_size.items() if isinstance(batch_size, Mapping) else batch_size)
    condition = "an integer >= 1, {epoch: size} or [(epoch, size), ...] from epoch 0"
    for pair in pairs:
        require(isinstance(pair, (tuple, list)) and len(pair) == 2, "batch_size", condition,
                batch_size, TypeError)
    out = {check_int("batch_size epoch", e, 0, exact=True):
           check_int(f"batch_size[{e}]", b, 1, exact=True) for e, b in pairs}
    require(len(out) == len(pairs) and 0 in out, "batch_size",
            condition + " (each epoch once)", batch_size)
    return dict(sorted(out.items()))


def fewest_steps(batch_size: Any, num_examples: int) -> int:
    """A lower bound on any epoch's steps (at least 1), without expanding the schedule: what
    bounds ``epochs`` before :func:`epoch_sizes` builds a tuple of them."""
    if isinstance(batch_size, BatchSizeSchedule):
        return 1
    return max(1, num_examples // max(boundaries(batch_size).values()))


def epoch_sizes(batch_size: Any, epochs: int, num_examples: int) -> tuple[int, ...]:
    """The batch size of each of ``epochs`` epochs over ``num_examples`` training examples
    (see the module docstring); ValueError naming ``batch_size`` for a size above
    ``num_examples`` (an epoch without steps)."""
    sizes: list[int] = []
    if isinstance(batch_size, BatchSizeSchedule):
        steps = 0
        for _ in range(epochs):
            sizes.append(check_int("batch_size", batch_size.batch_size(steps), 1, exact=True))
            steps += num_examples // sizes[-1]
    else:
        changes = boundaries(batch_size)
        for epoch in range(epochs):
            sizes.append(changes.get(epoch, sizes[-1] if sizes else changes[0]))
    require(max(sizes) <= num_examples, "batch_size",
            f"at most the {num_examples} training examples in every epoch", max(sizes))
    return tuple(sizes)


def changes(sizes: Sequence[int]) -> int | list[list[int]]:
    """The per-epoch ``sizes`` as their ``[[epoch, size], ...]`` boundaries (an integer when
    constant): how a checkpoint's fingerprint records them, unchanged by more epochs."""
    out = [[e, b] for e, b in enumerate(sizes) if e == 0 or b != sizes[e - 1]]
    return out[0][1] if len(out) == 1 else out


def parse(text: str, name: str = "batch_size_schedule") -> dict[int, int]:
    """``{epoch: size}`` of ``"EPOCH:SIZE,..."`` (``"5:256,8:512"``: 256 from epoch 5, 512
    from epoch 8; epochs >= 1, increasing; epoch 0 is ``--batch-size``'s); ValueError naming
    ``name``."""
    condition = "EPOCH:SIZE,... with increasing epochs >= 1 and sizes >= 1 (e.g. 5:256,8:512)"
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",")]
    except ValueError:
        raise ValueError(message(name, condition, text)) from None
    epochs = [p[0] for p in pairs]
    ok = (all(len(p) == 2 and p[0] >= 1 and p[1] >= 1 for p in pairs)
          and epochs == sorted(set(epochs)))
    require(ok, name, condition, text)
    return dict(pairs)  # type: ignore[arg-type]  # pairs of two, checked


__all__ = ["boundaries", "changes", "epoch_sizes", "fewest_steps", "parse"]
