"""Figures: agreement plots, heat-map overlays, level montages and score profiles written to files, and the
images training shows in TensorBoard.

Matplotlib's object-oriented API on the Agg canvas only (no pyplot, no windows, no global state), so it
runs headless and in threads. Every figure file is written atomically through `save_figure`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sscjax import metrics
from sscjax.domain import HU_RANGE, LEVEL_NAMES, SCORES
from sscjax.io import atomic_write

DPI = 150
SCATTER_STYLE: dict[str, Any] = {"s": 14, "alpha": 0.5, "color": "tab:blue", "edgecolors": "none"}


# --- shared -------------------------------------------------------------------------------------------


def new_figure(size: tuple[float, float] = (5.0, 4.5)) -> tuple[Figure, Axes]:
    """A figure on an Agg canvas with one axes."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def render(fig: Figure, fmt: str = "png", dpi: int = DPI) -> bytes:
    """The contents of `fig` as a file of format `fmt` (png, pdf, svg, ...), rendered in memory."""
    rendered = io.BytesIO()
    fig.savefig(rendered, format=fmt, dpi=dpi)
    return rendered.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` atomically to `path` (format from the extension, e.g. .png, .pdf, .svg). It is rendered in memory
    first, so the temporary file exists only while the finished bytes are written, not while matplotlib draws."""
    path = Path(path)
    rendered = render(fig, path.suffix.lstrip(".").lower() or "png", dpi)
    with atomic_write(path) as tmp:
        tmp.write_bytes(rendered)
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
        ax.axhline(ba[key], color="tab:red", linestyle=style, linewidth=1, label=f"{name}: {ba[key]:.2f} {unit}")
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set(
        title=f"{title} (n = {ba['n']})",
        xlabel=f"mean of prediction and reference ({unit})",
        ylabel=f"prediction - reference ({unit})",
    )
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
    ax.set(
        title=title,
        xlabel=f"reference ({unit})",
        ylabel=f"prediction ({unit})",
        xlim=(lo, hi),
        ylim=(lo, hi),
        aspect="equal",
    )
    ax.legend(fontsize="small", loc="upper left")
    return save_figure(fig, path)


# --- slices and heat maps -----------------------------------------------------------------------------

LUNG_WINDOW = (0.05, 0.55)  # HU -1350..150 (level -600, width 1500) in the S-Net's [0, 1] units of -1500..1500
_HU_SPAN = HU_RANGE[1] - HU_RANGE[0]
LUNG_WINDOW_HU = (HU_RANGE[0] + LUNG_WINDOW[0] * _HU_SPAN, HU_RANGE[0] + LUNG_WINDOW[1] * _HU_SPAN)  # in HU
LUNG_OUTLINE = "tab:cyan"


def _show_slice(ax: Axes, image: np.ndarray, spacing_yx: tuple[float, float]) -> None:
    """An axial slice (window [0, 1] = HU -1500..1500) in a lung window, with its true aspect ratio, no ticks."""
    ax.imshow(
        image,
        cmap="gray",
        vmin=LUNG_WINDOW[0],
        vmax=LUNG_WINDOW[1],
        aspect=spacing_yx[0] / spacing_yx[1],
        interpolation="bilinear",
    )
    ax.set_axis_off()


def heatmap_overlay(
    image: np.ndarray,
    delta: np.ndarray,
    lung: np.ndarray,
    spacing_yx: tuple[float, float],
    path: str | Path,
    title: str,
    segmentation: np.ndarray | None = None,
    limit: float | None = None,
) -> Path:
    """The slice with its Delta P map (percentage points) on a diverging colour scale and a legend.

    Blue = negative Delta P (replacing that region lowered the score: seen as diseased), red = positive.
    The derived segmentation, if given, is outlined.
    """
    limit = limit or max(float(np.abs(delta[lung > 0]).max(initial=0.0)), 0.5)
    fig, ax = new_figure((5.6, 5.0))
    _show_slice(ax, image, spacing_yx)
    shown = np.ma.masked_where(lung == 0, delta)
    art = ax.imshow(
        shown,
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        alpha=0.6,
        aspect=spacing_yx[0] / spacing_yx[1],
        interpolation="nearest",
    )
    if segmentation is not None and segmentation.any():
        ax.contour(segmentation.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    fig.colorbar(art, ax=ax, shrink=0.8, label="ΔP (percentage points)")
    ax.set_title(title, fontsize="medium")
    return save_figure(fig, path)


def level_figure(
    images: list[np.ndarray],
    spacing_yx: list[tuple[float, float]],
    captions: list[str],
    title: str,
    lungs: list[np.ndarray] | None = None,
) -> Figure:
    """The five level slices side by side, each with its caption (level, z, scores) and, if given, its lung mask
    outlined."""
    fig = Figure(figsize=(3.2 * len(images), 3.9), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (image, spacing, caption) in enumerate(zip(images, spacing_yx, captions)):
        ax = fig.add_subplot(1, len(images), i + 1)
        _show_slice(ax, image, spacing)
        if lungs is not None and lungs[i].any():
            ax.contour(lungs[i].astype(float), levels=[0.5], colors=LUNG_OUTLINE, linewidths=0.8)
        ax.set_title(caption, fontsize="small")
    fig.suptitle(title)
    return fig


def level_montage(
    images: list[np.ndarray], spacing_yx: list[tuple[float, float]], captions: list[str], path: str | Path, title: str
) -> Path:
    """The five level slices side by side, each with its caption (level, z, scores), written to `path`."""
    return save_figure(level_figure(images, spacing_yx, captions, title), path)


def coronal_levels(volume: np.ndarray, slice_index, spacing_zx: tuple[float, float], title: str) -> Figure:
    """A coronal reformat (head up, lung window) of a canonical (z, y, x) volume in HU with the five levels' slices
    drawn (`level_overlay`) and named."""
    image = level_overlay(volume, np.asarray(slice_index), value_range=LUNG_WINDOW_HU)
    height = image.shape[0] * spacing_zx[0] / (image.shape[1] * spacing_zx[1])  # per unit of width
    fig, ax = new_figure((4.5, float(np.clip(4.0 * height + 0.5, 2.0, 9.0))))
    ax.imshow(image, aspect=spacing_zx[0] / spacing_zx[1], interpolation="nearest")
    for name, k in zip(LEVEL_NAMES, slice_index):
        ax.text(image.shape[1], len(volume) - 1 - k, f" {name}", color="tab:green", va="center", fontsize="small")
    ax.set_axis_off()
    ax.set_title(title, fontsize="medium")
    return fig


def scores_along_z(z_mm: np.ndarray, scores: np.ndarray, levels_mm: np.ndarray, path: str | Path, title: str) -> Path:
    """TOT, GG and RET (%) of every slice against world z, with the five levels marked."""
    fig, ax = new_figure((7.0, 4.0))
    for j, name in enumerate(SCORES):
        ax.plot(z_mm, scores[:, j], label=name, linewidth=1.2)
    for name, z in zip(LEVEL_NAMES, levels_mm):
        ax.axvline(z, color="0.5", linestyle=":", linewidth=0.8)
        ax.text(z, 0.98, name, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize="small")
    ax.set(xlabel="world z (mm, feet → head)", ylabel="score (%)", title=title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def calibration_scatter(
    derived: np.ndarray, snet: np.ndarray, thresholds: np.ndarray, r2: np.ndarray, path: str | Path
) -> Path:
    """Derived (heat-map) scores against S-Net scores per pattern, as the paper's Fig. 7."""
    fig = Figure(figsize=(12.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    for j, name in enumerate(SCORES):
        ax = fig.add_subplot(1, len(SCORES), j + 1)
        ax.scatter(snet[:, j], derived[:, j], **SCATTER_STYLE)
        hi = max(float(np.max(snet[:, j], initial=0)), float(np.max(derived[:, j], initial=0)), 1.0) * 1.05
        ax.plot([0, hi], [0, hi], color="0.4", linestyle="--", linewidth=1)
        ax.set(
            xlim=(0, hi),
            ylim=(0, hi),
            aspect="equal",
            xlabel=f"S-Net {name} (%)",
            ylabel=f"derived {name} (%)",
            title=f"{name}: threshold {thresholds[j]:.1f} pp, R² = {r2[j]:.2f}",
        )
    return save_figure(fig, path)


# --- TensorBoard images (pixels, not files) -----------------------------------------------------------

TB_DPI = 80
GRID_SAMPLES = 8  # training samples shown in TensorBoard
TRUE_RGB, PRED_RGB = (0, 255, 0), (255, 0, 0)


def _pixels(fig: Figure) -> np.ndarray:
    """A figure on its Agg canvas as an HxWx3 uint8 image."""
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _image_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=TB_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def score_scatter_image(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Predicted against true scores (%), one panel per score, as an image."""
    fig = _image_figure((9.0, 3.2))
    for j, p in enumerate(SCORES):
        ax = fig.add_subplot(1, len(SCORES), j + 1)
        hi = max(float(np.max(pred[:, j], initial=0)), float(np.max(true[:, j], initial=0)), 5.0) * 1.05
        ax.plot([0, hi], [0, hi], color="0.5", linestyle="--", linewidth=1)
        ax.scatter(true[:, j], pred[:, j], s=12, alpha=0.6)
        ax.set(
            title=p,
            xlabel="true (%)",
            ylabel="predicted (%)",
            xlim=(min(0, pred[:, j].min()), hi),
            ylim=(min(0, pred[:, j].min()), hi),
        )
    return _pixels(fig)


def sample_grid_image(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Up to GRID_SAMPLES training samples of an S-Net loader batch (synthetic ones first) with their TOT/GG/RET."""
    order = np.argsort(~batch["synthetic"], kind="stable")[:GRID_SAMPLES]
    cols = 4
    fig = _image_figure((2.2 * cols, 2.4 * -(-len(order) // cols)))
    for i, row in enumerate(order):
        ax = fig.add_subplot(-(-len(order) // cols), cols, i + 1)
        ax.imshow(batch["image"][row, ..., 0], cmap="gray", vmin=0.25, vmax=0.6)
        kind = "synthetic" if batch["synthetic"][row] else "real"
        ax.set_title(f"{kind}\n" + "/".join(f"{v:.0f}" for v in batch["target"][row]), fontsize="small")
        ax.set_axis_off()
    fig.suptitle("training samples (augmented): TOT/GG/RET %", fontsize="medium")
    return _pixels(fig)


def level_overlay(
    volume: np.ndarray, true: np.ndarray, pred: np.ndarray | None = None, value_range: tuple[float, float] = HU_RANGE
) -> np.ndarray:
    """A coronal reformat (head up) of a volume (values shown over `value_range`, HU by default) with true (green)
    and, if given, predicted (red) level lines, as a (z, x, 3) uint8 image."""
    section = np.asarray(volume[:, volume.shape[1] // 2, :], dtype=np.float32)[::-1]
    lo, hi = value_range
    grey = np.clip((section - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    image = np.repeat(grey[..., None], 3, axis=-1)
    n = volume.shape[0]
    for positions, rgb in ((true, TRUE_RGB), (() if pred is None else pred, PRED_RGB)):
        rows = np.clip(n - 1 - np.rint(np.asarray(positions)).astype(int), 0, n - 1)
        image[rows] = rgb
    return image
