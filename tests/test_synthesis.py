"""Data synthesis: exact area labels, untouched pixels outside the lesions, healthy-only input, texture transforms."""

import numpy as np
import pytest
from scipy import ndimage

from sscjax.data.synthesis import (
    GG,
    RET,
    Patterns,
    SynthesisConfig,
    SynthesisParams,
    draw_synthesis,
    ellipse_regions,
    synthesize,
    texture_values,
)

SIZE = 64


def healthy_batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy images and lungs of varied shape (two ellipses each, random sizes and places)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    cy, cx = rng.uniform(0.4, 0.6, (2, n, 1, 1)), rng.uniform(0.25, 0.35, (2, n, 1, 1))
    ry, rx = rng.uniform(0.15, 0.3, (2, n, 1, 1)), rng.uniform(0.08, 0.15, (2, n, 1, 1))
    lung = (((yy - cy[0]) / ry[0]) ** 2 + ((xx - cx[0]) / rx[0]) ** 2 <= 1) | (
        ((yy - cy[1]) / ry[1]) ** 2 + ((xx - 1 + cx[1]) / rx[1]) ** 2 <= 1
    )
    images = rng.uniform(0.1, 0.2, (n, SIZE, SIZE)).astype(np.float32)
    return images, lung, np.zeros((n, 3), np.float32)


def patterns(gg: float = 0.8, ret: float = 0.3) -> Patterns:
    rng = np.random.default_rng(1)
    return Patterns(
        np.full((20, 24), gg, np.float32) + rng.normal(0, 0.01, (20, 24)).astype(np.float32),
        np.full((20, 24), ret, np.float32) + rng.normal(0, 0.01, (20, 24)).astype(np.float32),
        0.7,
    )


@pytest.fixture(scope="module")
def synthesized():
    images, lung, scores = healthy_batch(24)
    config = SynthesisConfig()
    params = draw_synthesis(np.random.default_rng(5), 24, config)
    before = images.copy()
    result = synthesize(images, lung, scores, params, patterns(), config)
    assert np.array_equal(images, before)  # the input is not modified
    return images, lung, params, result


def test_labels_are_the_exact_area_ratios_of_the_returned_lesions(synthesized):
    _, lung, _, result = synthesized
    area = lung.sum(axis=(1, 2))
    gg, ret = (result.lesion & 1) > 0, (result.lesion & 2) > 0
    assert not np.any(result.lesion & ~lung)  # lesions lie inside the lung
    expected = (
        np.stack([(gg | ret).sum(axis=(1, 2)), gg.sum(axis=(1, 2)), ret.sum(axis=(1, 2))], 1) / area[:, None] * 100
    )
    np.testing.assert_allclose(result.targets, expected, rtol=1e-6)
    tot, g, r = result.targets.T
    assert np.all(np.maximum(g, r) <= tot + 1e-5) and np.all(tot <= g + r + 1e-5)
    assert np.all(tot > 0)  # at least one ellipse per image, centred inside the lung
    assert np.any(g == 0) and np.any(r == 0) and np.any((g > 0) & (r > 0))  # 0..3 ellipses per pattern


def test_pixels_outside_the_lesions_are_unchanged_and_texture_fills_them(synthesized):
    images, _, _, result = synthesized
    outside = result.lesion == 0
    assert np.array_equal(result.images[outside], images[outside])
    inside = ~outside
    assert np.all(result.images[inside] != images[inside])  # every lesion pixel is (partly) textured
    # Deeper inside a GG-only lesion than the fade (sigma 3 px at 512 -> 0.375 px here) the image is the GG
    # texture (0.8); RET-only -> 0.3.
    gg_only, ret_only = (ndimage.binary_erosion(result.lesion == k, np.ones((1, 5, 5))) for k in (1, 2))
    assert gg_only.sum() > 50 and ret_only.sum() > 50
    np.testing.assert_allclose(result.images[gg_only], 0.8, atol=0.04)
    np.testing.assert_allclose(result.images[ret_only], 0.3, atol=0.04)
    # The fade: at the lesion boundary the texture is only partly blended in.
    edge = inside & ~ndimage.binary_erosion(inside, np.ones((1, 3, 3)))
    change = np.abs(result.images - images)
    assert np.median(change[edge]) < 0.9 * np.median(change[gg_only])


def test_non_healthy_or_lungless_inputs_are_refused():
    images, lung, scores = healthy_batch(3)
    params = draw_synthesis(np.random.default_rng(0), 3, SynthesisConfig())
    scores[1, 0] = 5.0
    with pytest.raises(ValueError, match="healthy"):
        synthesize(images, lung, scores, params, patterns(), SynthesisConfig())
    lung[2] = False
    with pytest.raises(ValueError, match="lung"):
        synthesize(images, lung, np.zeros((3, 3)), params, patterns(), SynthesisConfig())


def test_ellipse_counts_and_the_parameters_within_their_bounds():
    config = SynthesisConfig()
    params = draw_synthesis(np.random.default_rng(2), 2000, config)
    counts = params.active.sum(axis=2)
    assert counts.min() == 0 and counts.max() == 3 and counts.sum(axis=1).min() >= 1
    assert set(np.unique(counts[:, GG])) == {0, 1, 2, 3}
    assert params.semi_axes.min() >= 1 and params.semi_axes.max() <= 150
    assert np.abs(params.texture_angle).max() <= np.pi and np.abs(params.texture_angle).max() > 0.95 * np.pi
    assert params.texture_scale.min() >= 0.95 and params.texture_scale.max() <= 1.05


def test_ellipse_region_matches_a_direct_evaluation():
    rng = np.random.default_rng(3)
    lung = np.ones((6, SIZE, SIZE), bool)
    params = SynthesisParams(
        active=np.zeros((6, 2, 1), bool) | np.array([True, False])[None, :, None],
        centre=rng.random((6, 2, 1)),
        semi_axes=rng.uniform(2, 30, (6, 2, 1, 2)),
        angle=rng.uniform(0, np.pi, (6, 2, 1)),
        texture_angle=np.zeros((6, 2)),
        texture_scale=np.ones((6, 2)),
        texture_phase=np.zeros((6, 2, 2)),
    )
    regions = ellipse_regions(lung, params, px=1.0)
    assert not regions[RET].any()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(6):
        flat = int(np.floor(params.centre[i, GG, 0] * SIZE * SIZE))
        cy, cx = divmod(flat, SIZE)  # all-lung image: the lung pixels in row-major order
        (a, b), t = params.semi_axes[i, GG, 0], params.angle[i, GG, 0]
        u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
        v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
        q = u**2 + v**2
        certain = np.abs(q - 1) > 1e-3
        assert np.array_equal(regions[GG, i][certain], (q <= 1)[certain])
        assert regions[GG, i, cy, cx]


def test_texture_rotation_and_scale():
    ramp = np.tile(np.arange(33, dtype=np.float32) / 32, (33, 1))  # value = column / 32
    shape = (16, 16)
    y, x = np.divmod(np.arange(256), 16)
    b = np.zeros(256, int)
    phase = np.full((1, 2), 0.25)  # a quarter of the mirror period (64) = 16 px: no folding near the centre
    flat = texture_values(ramp, b, y, x, shape, np.zeros(1), np.ones(1), phase, np.ones(1))
    np.testing.assert_allclose(flat, (x - 7.5 + 16) / 32, atol=1e-6)
    turned = texture_values(ramp, b, y, x, shape, np.full(1, np.pi / 2), np.full(1, 1.05), phase, np.ones(1))
    np.testing.assert_allclose(turned, ((y - 7.5) / 1.05 + 16) / 32, atol=1e-6)
    coarse = texture_values(ramp, b, y, x, shape, np.zeros(1), np.ones(1), phase, np.full(1, 0.5))
    np.testing.assert_allclose(coarse, ((x - 7.5) * 0.5 + 16) / 32, atol=1e-6)  # step 0.5: finer image pixels
    tiled = texture_values(
        ramp,
        np.zeros(4096, int),
        *np.divmod(np.arange(4096), 64),
        (64, 64),
        np.ones(1),
        np.ones(1),
        np.zeros((1, 2)),
        np.full(1, 3.0),
    )
    assert tiled.min() >= 0 and tiled.max() <= 1 and tiled.max() - tiled.min() > 0.9  # mirror-tiled, no gaps


def test_batch_equals_one_image_at_a_time():
    images, lung, scores = healthy_batch(5, seed=4)
    config = SynthesisConfig(ellipses=(1, 3))
    params = draw_synthesis(np.random.default_rng(9), 5, config)
    batch = synthesize(images, lung, scores, params, patterns(), config)
    assert np.all(params.active.sum(axis=2) >= 1)
    for i in range(5):
        one = synthesize(images[i : i + 1], lung[i : i + 1], scores[i : i + 1], params.take([i]), patterns(), config)
        assert np.array_equal(one.images[0], batch.images[i]) and np.array_equal(one.targets[0], batch.targets[i])
