"""Training curves as a PNG, from a :func:`jaxreg.train.fit` history.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global
backend switch, no display needed, safe to call from any process or thread.
"""
from __future__ import annotations

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
"""Panel title and the history keys drawn in it; a panel with none of its keys is left out."""


def figure_row(panels: int, panel_size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with ``panels`` axes side by side, each ``panel_size`` inches, on the Agg canvas."""
    fig = Figure(figsize=(panel_size[0] * panels, panel_size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike,
                 title: str | None = None) -> None:
    """Writes ``path`` (PNG): one panel per epoch curve of :data:`PANELS` present in ``history``.

    Training curves are solid, validation (``val_*``) curves dashed. The learning-rate panel
    uses a log scale when every value is positive (plateau reductions are factors).

    Raises:
        ValueError: ``history`` holds none of the plotted keys.
    """
    panels = [(name, [k for k in keys if history.get(k)]) for name, keys in PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        raise ValueError(
            f"nothing to plot: history has none of {[k for _, ks in PANELS for k in ks]}"
        )
    fig, axes = figure_row(len(panels), (4.2, 3.6))
    for ax, (name, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = list(history[key])
            ax.plot(range(1, len(values) + 1), values, marker=".",
                    linestyle="--" if key.startswith("val_") else "-", label=key)
        if name == "learning rate" and all(v > 0 for k in keys for v in history[k]):
            ax.set_yscale("log")
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
