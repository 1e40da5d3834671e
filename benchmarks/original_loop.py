"""The original code's replacement heat maps, one batch-1 forward pass per patch position in plain Python loops:
the references that `sscjax.heatmaps.heatmaps` must equal (tests/test_explain.py, tests/test_authors_heatmaps.py) and
beat (benchmarks/explain.py): this project's first algorithm, and the authors' code (`occlusion_map` in their
`occlusion_sensitivity.py`) as docs/heatmaps.md describes it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sscjax.domain import SCORES
from sscjax.heatmaps import BLUR, HeatmapConfig, Predict, authors_texture, replacement_content, window_weights


def heatmaps_sequential(
    predict: Predict, image: np.ndarray, lung: np.ndarray, texture: np.ndarray, cfg: HeatmapConfig = HeatmapConfig()
) -> np.ndarray:
    """The original algorithm, one batch-1 forward pass per position and plain loops: the reference for
    tests and benchmarks of `sscjax.heatmaps.heatmaps`."""
    h, w = image.shape
    window, content = window_weights(cfg), replacement_content(texture, cfg, (h, w))
    base = np.asarray(predict(jnp.asarray(image[None, :, :, None], jnp.float32)))[0]
    total = np.zeros((h, w, len(SCORES)))
    count = np.zeros((h, w))
    for y0 in range(0, h, cfg.stride):
        for x0 in range(0, w, cfg.stride):
            ys, xs = slice(y0, min(y0 + cfg.patch, h)), slice(x0, min(x0 + cfg.patch, w))
            count[ys, xs] += 1
            weight = window[: ys.stop - y0, : xs.stop - x0] * lung[ys, xs]
            if not weight.any():
                continue
            replaced = image.astype(np.float32).copy()
            replaced[ys, xs] = image[ys, xs] * (1 - weight) + content[: ys.stop - y0, : xs.stop - x0] * weight
            total[ys, xs] += np.asarray(predict(jnp.asarray(replaced[None, :, :, None])))[0] - base
    return (total / count[..., None]).astype(np.float32)


def blur_reflect101(image: np.ndarray, size: int = BLUR) -> np.ndarray:
    """OpenCV's `blur(image, (size, size))`: the mean over a size x size box, borders mirrored without the edge."""
    r = size // 2
    boxes = np.lib.stride_tricks.sliding_window_view(np.pad(image, r, mode="reflect"), (size, size))
    return boxes.sum(axis=(-2, -1)) / size**2


def authors_heatmaps_sequential(
    predict: Predict,
    image: np.ndarray,
    lung: np.ndarray,
    seed: np.ndarray,
    patch: int,
    stride: int,
    limit: int | None = None,
) -> tuple[np.ndarray, int]:
    """The authors' loop: (H, W, 3) maps and the forward passes made, one batch-1 pass per window position (empty
    ones too, as their code does) plus one for the original; `limit` stops after that many positions (for timing
    a sample of the passes, which all cost the same: the maps are then partial)."""
    h, w = image.shape
    image = np.asarray(image, np.float32)
    texture, lung = authors_texture(seed, (h, w)), np.asarray(lung) > 0
    base = np.asarray(predict(jnp.asarray(image[None, :, :, None])))[0]
    total = np.zeros((h, w, len(SCORES)))
    count = np.zeros((h, w))
    passes = 1
    corners = [(y0, x0) for y0 in range(0, h, stride) for x0 in range(0, w, stride)]
    for y0, x0 in corners[:limit]:
        box = np.zeros((h, w), np.float32)
        box[y0 : y0 + patch, x0 : x0 + patch] = 1
        covered = box * lung
        weight = blur_reflect101(covered).astype(np.float32)
        replaced = image * (1 - weight) + texture * weight
        total += covered[..., None] * (np.asarray(predict(jnp.asarray(replaced[None, :, :, None])))[0] - base)
        count += covered
        passes += 1
    return np.where(count[..., None] > 0, total / np.maximum(count, 1)[..., None], 0.0), passes
