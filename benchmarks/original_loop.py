"""The original code's replacement heat maps, one batch-1 forward pass per patch position in plain Python loops:
the reference that `sscjax.heatmaps.heatmaps` must equal (tests/test_explain.py) and beat (benchmarks/explain.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sscjax.domain import SCORES
from sscjax.heatmaps import HeatmapConfig, Predict, fade_window, texture_patch


def heatmaps_sequential(
    predict: Predict, image: np.ndarray, lung: np.ndarray, texture: np.ndarray, cfg: HeatmapConfig = HeatmapConfig()
) -> np.ndarray:
    """The original algorithm, one batch-1 forward pass per position and plain loops: the reference for
    tests and benchmarks of `sscjax.heatmaps.heatmaps`."""
    h, w = image.shape
    window, content = fade_window(cfg), texture_patch(texture, cfg)
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
