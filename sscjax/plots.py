"""Figures written to files: agreement plots (Bland-Altman, correlation).

Matplotlib's object-oriented API on the Agg canvas only (no pyplot, no windows, no global state), so it
runs headless and in threads. Every figure is written atomically through `save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sscjax import metrics
from sscjax.io import atomic_write

DPI = 150
SCATTER_STYLE = {"s": 14, "alpha": 0.5, "color": "tab:blue", "edgecolors": "none"}


# --- shared -------------------------------------------------------------------------------------------

def new_figure(size: tuple[float, float] = (5.0, 4.5)) -> tuple[Figure, Axes]:
    """A figure on an Agg canvas with one axes."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` atomically to `path` (format from the extension, e.g. .png, .pdf, .svg)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    return path


# --- agreement ----------------------------------------------------------------------------------------

def bland_altman_plot(pred, true, path: str | Path, title: str, unit: str = "%") -> Path:
    """Bland-Altman plot: difference (pred - true) against the mean of the two, with bias and 95 % limits."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    ba = metrics.bland_altman_stats(pred, true)
    fig, ax = new_figure()
    ax.scatter((pred + true) / 2, pred - true, **SCATTER_STYLE)
    lines = [("mean_diff", "-", "bias"), ("loa_high", "--", "+1.96 SD"), ("loa_low", "--", "-1.96 SD")]
    for key, style, name in lines:
        ax.axhline(ba[key], color="tab:red", linestyle=style, linewidth=1,
                   label=f"{name}: {ba[key]:.2f} {unit}")
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set(title=f"{title} (n = {ba['n']})", xlabel=f"mean of prediction and reference ({unit})",
           ylabel=f"prediction - reference ({unit})")
    ax.legend(fontsize="small", loc="best")
    return save_figure(fig, path)


def correlation_plot(pred, true, path: str | Path, title: str, unit: str = "%") -> Path:
    """Scatter of prediction against reference with the identity line; Pearson r and ICC(A,1) in the legend."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    r = metrics.pearson_r(pred, true)
    icc, _ = metrics.icc_a1(pred, true)
    fig, ax = new_figure((4.8, 4.8))
    ax.scatter(true, pred, label=f"r = {r:.2f}, ICC = {icc:.2f} (n = {pred.size})", **SCATTER_STYLE)
    both = np.concatenate([pred, true])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    margin = 0.05 * (hi - lo) or 1.0
    lo, hi = lo - margin, hi + margin
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label="identity")
    ax.set(title=title, xlabel=f"reference ({unit})", ylabel=f"prediction ({unit})", xlim=(lo, hi), ylim=(lo, hi),
           aspect="equal")
    ax.legend(fontsize="small", loc="upper left")
    return save_figure(fig, path)
