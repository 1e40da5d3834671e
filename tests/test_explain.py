"""Replacement heat maps: vmapped chunks equal the plain loop, and they point at the right region."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from original_loop import heatmaps_sequential

from sscjax import explain, heatmaps
from sscjax.configs.snet import ExplainConfig
from sscjax.errors import ConfigError

CFG = heatmaps.HeatmapConfig(patch=16, stride=4, fade=4, chunk=8)


def _conv_net(seed=0):
    """A small fixed nonlinear scorer (batch-independent), standing in for the S-Net."""
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(rng.normal(size=(5, 5, 1, 3)).astype(np.float32))

    def predict(x):
        y = jnp.tanh(jax_conv(x, kernel))
        return 100 * jnp.stack([y[..., 0].mean((1, 2)), (y[..., 1] ** 2).mean((1, 2)), y[..., 2].max((1, 2))], -1)

    return predict


def jax_conv(x, kernel):
    import jax

    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _slice(h=40, w=36, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, (h, w)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    lung = ((yy - 18) ** 2 / 14**2 + (xx - 10) ** 2 / 7**2 < 1) | ((yy - 20) ** 2 / 12**2 + (xx - 27) ** 2 / 6**2 < 1)
    texture = rng.uniform(0.1, 0.3, (6, 5)).astype(np.float32)
    return image, lung, texture


def test_vmapped_chunks_equal_the_sequential_loop():
    image, lung, texture = _slice()
    predict = _conv_net()
    fast = heatmaps.heatmaps(predict, image, lung, texture, CFG)
    slow = heatmaps_sequential(predict, image, lung, texture, CFG)
    assert fast.shape == image.shape + (3,)
    assert np.abs(slow).max() > 0.1
    np.testing.assert_allclose(fast, slow, atol=2e-4)


def test_constant_occlusion_equals_the_sequential_loop():
    image, lung, texture = _slice(seed=3)
    cfg = heatmaps.HeatmapConfig(patch=16, stride=8, fade=4, chunk=5, occlusion="constant", constant=0.5)
    predict = _conv_net(2)
    np.testing.assert_allclose(
        heatmaps.heatmaps(predict, image, lung, texture, cfg),
        heatmaps_sequential(predict, image, lung, texture, cfg),
        atol=2e-4,
    )


def test_toy_model_gives_negative_delta_only_around_its_region():
    h = w = 64
    image = np.full((h, w), 0.5, np.float32)
    region = np.zeros((h, w), bool)
    region[28:36, 40:48] = True
    image[region] = 0.9
    lung = np.ones((h, w), bool)
    texture = np.full((8, 8), 0.5, np.float32)  # healthy texture: the background value
    mask = jnp.asarray(region, jnp.float32)

    def predict(x):  # "disease" = mean intensity inside the region, the same for the three patterns
        score = (x[..., 0] * mask).sum((1, 2)) / mask.sum() * 100
        return jnp.stack([score] * 3, -1)

    maps = heatmaps.heatmaps(predict, image, lung, texture, CFG)
    yy, xx = np.mgrid[:h, :w]
    # a pixel can only see a negative Delta P if some patch covering it also covers the region
    reach = (yy > 28 - CFG.patch) & (yy < 36 + CFG.patch - 1) & (xx > 40 - CFG.patch) & (xx < 48 + CFG.patch - 1)
    assert np.all(maps[~reach] == 0)
    assert np.all(maps <= 1e-6)
    assert maps[region].mean() < -5
    assert maps[region].mean() < 3 * maps[reach & ~region].mean()
    # the most negative pixels lie in the region
    assert region[np.unravel_index(np.argmin(maps[..., 0]), (h, w))]


def test_positions_without_lung_are_skipped():
    lung = np.zeros((40, 40), bool)
    lung[20:22, 30:31] = True
    cells = heatmaps.lung_positions(lung, CFG)
    # brute force: corners every 4 px whose 16 px patch touches the lung
    expected = [
        (iy, ix) for iy in range(10) for ix in range(10) if lung[iy * 4 : iy * 4 + 16, ix * 4 : ix * 4 + 16].any()
    ]
    assert sorted(map(tuple, cells)) == expected


def test_derived_scores_and_calibration():
    rng = np.random.default_rng(0)
    n, h, w = 12, 20, 20
    lungs = np.zeros((n, h, w), bool)
    lungs[:, 2:18, 2:18] = True  # 256 lung pixels
    maps = np.zeros((n, h, w, 3), np.float32)
    truth = np.zeros((n, 3))
    for i in range(n):
        for p in range(3):
            k = rng.integers(0, 100)
            flat = np.flatnonzero(lungs[i].ravel())[:k]
            maps[i].reshape(-1, 3)[flat, p] = -2.5
            truth[i, p] = 100 * k / 256
    maps[..., :] += np.where(lungs[..., None], -0.5, -9.0)  # outside the lung never counts
    np.testing.assert_allclose(heatmaps.derived_scores(maps, lungs, -1.0), truth)
    calib = heatmaps.calibrate(maps, lungs, truth, explain.search_thresholds(ExplainConfig()))
    assert np.all((calib.thresholds > -3.0) & (calib.thresholds <= -0.5))
    np.testing.assert_allclose(calib.mae, 0)
    np.testing.assert_allclose(calib.r2, 1)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="multiple of the stride"):
        heatmaps.HeatmapConfig(patch=64, stride=24)
    with pytest.raises(ConfigError, match="occlusion"):
        heatmaps.HeatmapConfig(occlusion="blur")


def test_chunk_size_never_changes_the_maps_and_must_be_positive():
    image, lung, texture = _slice()
    predict = _conv_net()
    by_default = heatmaps.heatmaps(predict, image, lung, texture, dataclasses.replace(CFG, chunk=None))
    np.testing.assert_allclose(by_default, heatmaps.heatmaps(predict, image, lung, texture, CFG), atol=1e-4)
    with pytest.raises(ConfigError, match="chunk 0"):
        heatmaps.HeatmapConfig(chunk=0)
