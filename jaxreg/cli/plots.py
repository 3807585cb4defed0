"""Training curves as a PNG, from a :func:`jaxreg.train.fit` history.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global
backend switch, no display needed, safe to call from any process or thread.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PANELS = (
    ("loss", ("loss", "val_loss")),
    ("accuracy", ("accuracy", "val_accuracy")),
    ("learning rate", ("learning_rate",)),
)
"""Panel title and the history keys drawn in it; a key with no finite value is left out, and
so is a panel with no key left, or a learning-rate panel whose value never changes (it is
named in the loss panel's title instead)."""


def figure_row(panels: int, panel_size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with ``panels`` axes side by side, each ``panel_size`` inches, on the Agg canvas."""
    fig = Figure(figsize=(panel_size[0] * panels, panel_size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def history_panels(history: Mapping[str, Sequence[float]]) -> list[tuple[str, list[str]]]:
    """The panels :func:`plot_history` draws: ``(title, keys)`` with data, in :data:`PANELS`
    order (see there for what is left out)."""
    panels = []
    for name, candidates in PANELS:
        keys = [k for k in candidates if _finite(history.get(k, []))]
        if name == "learning rate" and keys and len(set(_finite(history[keys[0]]))) == 1:
            keys = []
        if keys:
            panels.append((name, keys))
    return panels


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike,
                 title: str | None = None, test: Mapping[str, float] | None = None) -> None:
    """Writes ``path`` (PNG): one panel per epoch curve of :data:`PANELS` with data.

    Training curves are solid, validation (``val_*``) curves dashed; ``test`` (the final test
    metrics, e.g. ``FitResult.test``) adds a star at the last epoch of the accuracy (else the
    loss) panel, labelled with its value. The learning-rate panel uses a log scale when every
    value is positive (plateau reductions are factors); a constant learning rate gets no panel,
    its value is in the loss panel's title.

    Raises:
        ValueError: ``history`` holds none of the plotted keys with a finite value.
    """
    panels = history_panels(history)
    if not panels:
        raise ValueError(
            f"nothing to plot: history has none of {[k for _, ks in PANELS for k in ks]}"
        )
    lrs = _finite(history.get("learning_rate", []))
    constant_lr = lrs[0] if lrs and len(set(lrs)) == 1 else None
    names = [name for name, _ in panels]
    test_panel = "accuracy" if test and "accuracy" in test and "accuracy" in names else "loss"
    fig, axes = figure_row(len(panels), (4.2, 3.6))
    for ax, (name, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = list(history[key])
            ax.plot(range(1, len(values) + 1), values, marker=".",
                    linestyle="--" if key.startswith("val_") else "-", label=key)
        if test and name == test_panel and test.get(name) is not None:
            epochs = max(len(history[k]) for k in keys)
            ax.plot([epochs], [test[name]], marker="*", markersize=12, linestyle="none",
                    color="black", label=f"test {name} {test[name]:.4g}")
        if name == "learning rate" and all(v > 0 for k in keys for v in history[k]):
            ax.set_yscale("log")
        panel_title = name
        if name == "loss" and constant_lr is not None:
            panel_title = f"loss (learning rate {constant_lr:.3g})"
        ax.set(title=panel_title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
