"""Replacement heat maps, the pure algorithm: how much each region of a slice drives a scorer's TOT, GG and RET.

A patch of healthy lung texture slides over the slice (a grid of top-left corners, `stride` apart).
At each position it replaces the image inside the lung, blended with linearly fading edges, and the
scorer scores the result; Delta P = score(replaced) - score(original) per score, averaged over all
positions whose patch covers a pixel. Delta P < 0 means the covered region was seen as diseased.
Positions whose patch touches no lung leave the image unchanged, so their Delta P is exactly 0 and
they are not computed. The "authors" mode is the authors' code instead (docs/heatmaps.md): the weight of a position is
the 5x5 box blur of patch ∩ lung, the content the healthy seed tiled over the whole image, and maps are 0 outside
the lung; the same engine computes both, only the per-position weight and content differ. Thresholding the maps gives area scores, and `calibrate` picks the threshold that makes
them agree best with the scorer. Arrays in, arrays out: no files (the orchestration is `sscjax.explain`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sscjax.configs.snet import AUTHORS_OCCLUSION, OCCLUSIONS, Occlusion
from sscjax.domain import SCORES
from sscjax.errors import ConfigError

Predict = Callable[[jax.Array], jax.Array]  # (N, H, W, 1) images -> (N, 3) scores in %
BLUR = 5  # side of the authors' box blur of patch ∩ lung (OpenCV `blur(B, (5, 5))`), pixels at any image size


def default_chunk(shape: tuple[int, int]) -> int:
    """Patch positions per forward batch when not set: 32, but 8 for slices of 256x256 pixels or more on a CPU
    (measured fastest there: larger batches fall out of cache). It bounds the device memory, never the maps."""
    return 8 if jax.default_backend() == "cpu" and shape[0] * shape[1] >= 256 * 256 else 32


@dataclass(frozen=True)
class HeatmapConfig:
    """Settings of the replacement heat maps; the paper's are patch 64 and stride 16 on 512x512 slices."""

    patch: int = 64
    stride: int = 16
    fade: int = 16  # width in pixels of the linear fade at each patch edge
    chunk: int | None = None  # patch positions per forward batch; None: default_chunk(image shape)
    occlusion: Occlusion = "replace"  # "replace" with healthy texture, "constant" (classic occlusion), "authors"
    constant: float = 0.0  # the fill value of constant occlusion, in model input units

    def __post_init__(self):
        if self.patch % self.stride:
            raise ConfigError(f"heat-map patch {self.patch} must be a multiple of the stride {self.stride}")
        if not 0 < self.fade <= self.patch // 2:
            raise ConfigError(f"heat-map fade {self.fade} must lie in 1..patch/2 = {self.patch // 2}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"heat-map chunk {self.chunk} must be at least 1")
        if self.occlusion not in OCCLUSIONS:
            raise ConfigError(f"occlusion must be one of {', '.join(OCCLUSIONS)}, not {self.occlusion!r}")


def window_weights(cfg: HeatmapConfig) -> np.ndarray:
    """(patch, patch) blending weights of one position before the lung crops them: 1 inside, falling linearly to 0
    over `fade` pixels at each edge (the authors' mode: all 1, its blur comes after the crop)."""
    if cfg.occlusion == AUTHORS_OCCLUSION:
        return np.ones((cfg.patch, cfg.patch), np.float32)
    u = np.arange(cfg.patch) + 0.5
    ramp = np.minimum(1.0, np.minimum(u, cfg.patch - u) / cfg.fade)
    return np.outer(ramp, ramp).astype(np.float32)


def replacement_content(texture: np.ndarray, cfg: HeatmapConfig, shape: tuple[int, int]) -> np.ndarray:
    """What replaces the image: a (patch, patch) patch of the healthy texture mirror-tiled or cropped (the same at
    every position), of the constant, or (authors) the whole (H, W) image's `authors_texture`."""
    if cfg.occlusion == "constant":
        return np.full((cfg.patch, cfg.patch), cfg.constant, np.float32)
    if cfg.occlusion == AUTHORS_OCCLUSION:
        return authors_texture(texture, shape)
    texture = np.asarray(texture, np.float32)
    reps = (-(-cfg.patch // texture.shape[0]), -(-cfg.patch // texture.shape[1]))
    tiled = np.pad(texture, [(0, (r - 1) * s) for r, s in zip(reps, texture.shape)], mode="symmetric")
    return np.ascontiguousarray(tiled[: cfg.patch, : cfg.patch])


def authors_texture(seed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The authors' (H, W) texture: the cell [[rot180(E), flipud(E)], [flipud(E), rot180(E)]] of an (h, w) seed E
    tiled H // 2h * 2 times down and W // 2w * 2 across, cropped to the image, anchored at its top-left corner."""
    seed = np.asarray(seed, np.float32)
    (h, w), (n_y, n_x) = seed.shape, shape
    if 2 * h > n_y or 2 * w > n_x:
        raise ConfigError(f"healthy seed of {h}x{w} pixels: at most half the slice's {n_y}x{n_x} for the authors' mode")
    turned, flipped = np.rot90(seed, 2), np.flipud(seed)
    cell = np.block([[turned, flipped], [flipped, turned]])
    return np.ascontiguousarray(np.tile(cell, (n_y // (2 * h) * 2, n_x // (2 * w) * 2))[:n_y, :n_x])


def box_blur(image: jax.Array, size: int = BLUR) -> jax.Array:
    """The normalised size x size box filter with reflect-101 borders (OpenCV's `blur`) of an (H, W) array."""
    r, (h, w) = size // 2, image.shape
    padded = jnp.pad(image, r, mode="reflect")  # numpy's "reflect" leaves the edge out: OpenCV's BORDER_REFLECT_101
    rows = jnp.stack([padded[i : i + h] for i in range(size)]).sum(axis=0)
    return jnp.stack([rows[:, j : j + w] for j in range(size)]).sum(axis=0) / size**2


def grid_shape(shape: tuple[int, int], cfg: HeatmapConfig) -> tuple[int, int]:
    """Number of patch positions along y and x: corners at 0, stride, ... below the image size."""
    return -(-shape[0] // cfg.stride), -(-shape[1] // cfg.stride)


def lung_positions(lung: np.ndarray, cfg: HeatmapConfig) -> np.ndarray:
    """(P, 2) grid indices (iy, ix) of the positions whose patch touches the lung."""
    ny, nx = grid_shape(lung.shape, cfg)
    k = cfg.patch // cfg.stride
    cells = _pad_to(lung.astype(np.int64), (ny * cfg.stride, nx * cfg.stride))
    per_cell = cells.reshape(ny, cfg.stride, nx, cfg.stride).sum(axis=(1, 3))
    touched = _box_sum(per_cell, k, forward=True) > 0
    return np.argwhere(touched)


def _pad_to(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)] + [(0, 0)] * (a.ndim - 2))


def _box_sum(grid: np.ndarray, k: int, forward: bool) -> np.ndarray:
    """Sum over a k x k window of the first two axes: forward (cells i..i+k-1) or backward (i-k+1..i)."""
    padded = np.pad(grid, [(k, k), (k, k)] + [(0, 0)] * (grid.ndim - 2))
    c = padded.cumsum(0).cumsum(1)
    c = np.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (grid.ndim - 2))
    n0, n1 = grid.shape[:2]
    lo = np.arange(n0) + (k if forward else 1)
    lo1 = np.arange(n1) + (k if forward else 1)
    hi, hi1 = lo + k, lo1 + k
    return c[hi][:, hi1] - c[lo][:, hi1] - c[hi][:, lo1] + c[lo][:, lo1]


def _placed(patch: jax.Array, corner: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """An (H, W) array of zeros with `patch` at `corner`, cut off by the image's bottom and right edges."""
    padded = (shape[0] + patch.shape[0], shape[1] + patch.shape[1])  # room for a whole patch: no clamped corners
    return jax.lax.dynamic_update_slice(jnp.zeros(padded, patch.dtype), patch, corner)[: shape[0], : shape[1]]


def _replace(image, lung, content, window, corner, cfg: HeatmapConfig):
    """One replaced (H, W) image: the content blended in with the position's weights, which are the window at
    `corner` cropped by the lung (authors: then box-blurred, with their texture anchored to the image)."""
    crop = _placed(window, corner, image.shape) * lung
    if cfg.occlusion == AUTHORS_OCCLUSION:
        weight, fill = box_blur(crop), content
    else:
        weight, fill = crop, _placed(content, corner, image.shape)
    return image * (1 - weight) + fill * weight


def make_delta_fn(predict: Predict, shape: tuple[int, int], cfg: HeatmapConfig):
    """A jitted function (image, lung, content, corners (C, 2), base (1, 3)) -> Delta P (C, 3) for a chunk."""
    window = jnp.asarray(window_weights(cfg))

    @jax.jit
    def delta(image, lung, content, corners, base):
        replaced = jax.vmap(lambda c: _replace(image, lung, content, window, c, cfg))(corners)
        return predict(replaced[..., None]) - base

    return delta


def heatmaps(
    predict: Predict,
    image: np.ndarray,
    lung: np.ndarray,
    texture: np.ndarray,
    cfg: HeatmapConfig = HeatmapConfig(),
    delta_fn=None,
) -> np.ndarray:
    """(H, W, 3) Delta P maps (TOT, GG, RET, in percentage points) of one slice in model input units (`texture`:
    the healthy texture, or the authors' seed).

    Positions are evaluated by `jax.vmap` in chunks of `cfg.chunk` (None: `default_chunk`); pass `delta_fn` (from
    `make_delta_fn`) to reuse one compiled function over many slices of the same size.
    """
    image = np.asarray(image, np.float32)
    lung_f = np.asarray(lung, np.float32)
    delta_fn = delta_fn or make_delta_fn(predict, image.shape, cfg)
    content = jnp.asarray(replacement_content(texture, cfg, image.shape))
    base = jax.jit(predict)(jnp.asarray(image)[None, :, :, None])
    cells = lung_positions(lung_f > 0, cfg)
    deltas = np.zeros((len(cells), len(SCORES)), np.float32)
    size = cfg.chunk or default_chunk(image.shape)
    for start in range(0, len(cells), size):
        chunk = cells[start : start + size]
        corners = np.zeros((size, 2), np.int32)  # fixed chunk shape: one compilation
        corners[: len(chunk)] = chunk * cfg.stride
        out = delta_fn(jnp.asarray(image), jnp.asarray(lung_f), content, jnp.asarray(corners), base)
        deltas[start : start + len(chunk)] = np.asarray(out)[: len(chunk)]
    maps = spread_over_patches(deltas, cells, image.shape, cfg)
    return maps * (lung_f > 0)[..., None] if cfg.occlusion == AUTHORS_OCCLUSION else maps


def spread_over_patches(
    deltas: np.ndarray, cells: np.ndarray, shape: tuple[int, int], cfg: HeatmapConfig
) -> np.ndarray:
    """Average each position's Delta P over the pixels its patch covers (all grid positions count: inside the lung
    exactly those whose patch ∩ lung covers the pixel)."""
    ny, nx = grid_shape(shape, cfg)
    k = cfg.patch // cfg.stride
    grid = np.zeros((ny, nx, deltas.shape[1]), np.float64)
    grid[cells[:, 0], cells[:, 1]] = deltas
    total = _box_sum(grid, k, forward=False)
    count = _box_sum(np.ones((ny, nx)), k, forward=False)
    cell_mean = total / count[..., None]
    full = np.repeat(np.repeat(cell_mean, cfg.stride, axis=0), cfg.stride, axis=1)
    return full[: shape[0], : shape[1]].astype(np.float32)


def derived_scores(maps: np.ndarray, lung: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Area scores (%) derived from heat maps: the share of the lung where Delta P < threshold, per pattern.

    `maps` is (..., H, W, 3), `lung` (..., H, W); `threshold` a scalar or one per pattern.
    """
    lung = np.asarray(lung, bool)
    below = (maps < np.asarray(threshold)) & lung[..., None]
    return 100.0 * below.sum(axis=(-3, -2)) / np.maximum(lung.sum(axis=(-2, -1)), 1)[..., None]


def derived_segmentation(maps: np.ndarray, lung: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """(H, W, 3) boolean masks of the lung pixels with Delta P below the threshold."""
    return (maps < np.asarray(threshold)) & np.asarray(lung, bool)[..., None]


@dataclass
class Calibration:
    """Thresholds per pattern that make derived scores agree best with the S-Net, and how well they do."""

    thresholds: np.ndarray  # (3,) percentage points
    mae: np.ndarray  # (3,) MAE between derived score and S-Net output at the threshold
    r2: np.ndarray  # (3,) coefficient of determination of the S-Net output by the derived score
    derived: np.ndarray  # (N, 3) derived scores at the chosen thresholds
    candidates: np.ndarray  # the thresholds searched


def threshold_candidates(lo: float, hi: float, step: float) -> np.ndarray:
    """The thresholds a calibration tries: lo, lo + step, ... up to hi (percentage points)."""
    return np.round(np.arange(lo, hi + step / 1000, step), 6)


def calibrate(maps: np.ndarray, lungs: np.ndarray, snet_scores: np.ndarray, candidates: np.ndarray) -> Calibration:
    """Search the threshold among `candidates` (percentage points) minimising the MAE between derived and S-Net
    scores, per score."""
    snet_scores = np.asarray(snet_scores, np.float64)
    table = np.stack([derived_scores(maps, lungs, t) for t in candidates])  # (T, N, 3)
    mae = np.abs(table - snet_scores[None]).mean(axis=1)  # (T, 3)
    best = mae.argmin(axis=0)
    derived = table[best, :, np.arange(len(SCORES))].T
    residual = ((snet_scores - derived) ** 2).sum(axis=0)
    spread = ((snet_scores - snet_scores.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1.0 - residual / np.where(spread > 0, spread, np.nan)
    return Calibration(candidates[best], mae[best, np.arange(len(SCORES))], r2, derived, candidates)
