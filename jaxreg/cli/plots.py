"""Training curves as a PNG: one run's :func:`jaxreg.train.fit` history (:func:`plot_history`),
or several runs on shared axes (:func:`plot_runs`, for ``jaxreg compare``).

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global
backend switch, no display needed, safe to call from any process or thread.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
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


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike | IO[bytes],
                 title: str | None = None, test: Mapping[str, float] | None = None) -> None:
    """Writes ``path`` (PNG; a file name or a binary file): one panel per epoch curve of
    :data:`PANELS` with data.

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


def run_panels(histories: Sequence[Mapping[str, Sequence[float]]]) -> list[tuple[str, list[str]]]:
    """The panels :func:`plot_runs` draws: ``(title, keys)`` of :data:`PANELS` with data in
    some history; the learning-rate panel only when the learning rate is not one constant
    shared by every run."""
    panels = []
    for name, candidates in PANELS:
        keys = [k for k in candidates if any(_finite(h.get(k, [])) for h in histories)]
        if name == "learning rate" and len({v for h in histories for k in keys
                                            for v in _finite(h.get(k, []))}) < 2:
            keys = []
        if keys:
            panels.append((name, keys))
    return panels


def plot_runs(runs: Sequence[tuple[str, Mapping[str, Sequence[float]],
                                   Mapping[str, float | None]]],
              path: str | os.PathLike, title: str | None = None) -> None:
    """Writes ``path`` (PNG): the epoch curves of several runs on shared axes, one colour each.

    ``runs``: ``(label, history, test)`` per run, ``test`` its final test metrics (``loss``,
    ``accuracy``; a missing or ``None`` one is not drawn). One panel per :data:`PANELS` entry
    with data (:func:`run_panels`); training curves solid, validation dashed, the test metric a
    star at the run's last epoch. The legend, below the panels, names each run by its label
    (one colour each: ``tab10``, ``tab20`` beyond 10 runs) and the line styles.

    Raises:
        ValueError: no history holds a plotted key with a finite value.
    """
    panels = run_panels([history for _, history, _ in runs])
    if not panels:
        raise ValueError(
            f"nothing to plot: no run has any of {[k for _, ks in PANELS for k in ks]}"
        )
    columns = 1 if len(panels) == 1 else 2  # of the legend, below the panels
    fig, axes = figure_row(len(panels), (4.6, 3.6))
    fig.set_figheight(3.6 + 0.25 * math.ceil((len(runs) + 3) / columns))
    colors: list[Any] = ([f"C{i}" for i in range(len(runs))] if len(runs) <= 10
                         else [colormaps["tab20"](i % 20) for i in range(len(runs))])
    for ax, (name, keys) in zip(axes, panels, strict=True):
        for color, (_, history, test) in zip(colors, runs, strict=True):
            for key in keys:
                values = list(history.get(key, []))
                ax.plot(range(1, len(values) + 1), values, color=color, marker=".",
                        linestyle="--" if key.startswith("val_") else "-")
            epochs = max((len(history.get(k, [])) for k in keys), default=0)
            if test.get(name) is not None and epochs:
                ax.plot([epochs], [test[name]], marker="*", markersize=12, color=color,
                        markeredgecolor="black", linestyle="none")
        if name == "learning rate" and all(v > 0 for _, h, _ in runs for k in keys
                                           for v in _finite(h.get(k, []))):
            ax.set_yscale("log")
        ax.set(title=name, xlabel="epoch", ylabel=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    drawn = {key for _, keys in panels for key in keys}
    styles = [Line2D([], [], color="gray", linestyle="-", label="training")]
    if any(key.startswith("val_") for key in drawn):
        styles.append(Line2D([], [], color="gray", linestyle="--", label="validation"))
    if any(test.get(name) is not None for _, _, test in runs for name, _ in panels):
        styles.append(Line2D([], [], color="gray", marker="*", markersize=10,
                             markeredgecolor="black", linestyle="none", label="test (final)"))
    handles = [Line2D([], [], color=color, linewidth=3, label=label)
               for color, (label, _, _) in zip(colors, runs, strict=True)]
    fig.legend(handles=handles + styles, loc="outside lower center", ncols=columns,
               fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
