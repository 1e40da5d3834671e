"""Affine augmentation: bounds, the geometry of the warp, image/mask consistency, fill, lung kept in view."""

import numpy as np
import pytest
from scipy import ndimage

from sscjax.data.augment import AffineParams, AugmentConfig, augment, draw_affine, lung_boxes, transforms, warp
from sscjax.data.slices import window
from sscjax.domain import AIR

SIZE = 64


def params(angle_deg: float, scale: float, shift: tuple[float, float]) -> AffineParams:
    return AffineParams(np.radians([angle_deg]), np.array([scale]), np.array([shift], dtype=float))


def test_draws_and_transforms_stay_within_the_bounds():
    config = AugmentConfig(keep_lung_in_view=False)
    drawn = draw_affine(np.random.default_rng(0), 4000, config)
    matrix, shift = transforms(drawn, (SIZE, SIZE), config)
    scale = np.sqrt(np.linalg.det(matrix))
    angle = np.degrees(np.arctan2(matrix[:, 1, 0], matrix[:, 0, 0]))
    assert 0.95 <= scale.min() < 0.96 and 1.04 < scale.max() <= 1.05
    assert -30 <= angle.min() < -29 and 29 < angle.max() <= 30
    limit = 10 * SIZE / 512
    assert np.abs(shift).max() <= limit and np.abs(shift).max() > 0.99 * limit


def blob_image(points: np.ndarray) -> np.ndarray:
    image = np.zeros((SIZE, SIZE), np.float32)
    image[tuple(np.round(points).astype(int).T)] = 1
    return ndimage.gaussian_filter(image, 1.5)[None]


def centroid(image: np.ndarray, near: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    window_ = (yy - near[0]) ** 2 + (xx - near[1]) ** 2 <= 36
    weights = image * window_
    return np.array([(weights * yy).sum(), (weights * xx).sum()]) / weights.sum()


def test_warp_moves_a_known_shape_as_specified():
    points = np.array([[20.0, 22.0], [40.0, 44.0]])
    image = blob_image(points)
    config = AugmentConfig(shift_px=40, keep_lung_in_view=False)  # 40 px at 512 = 5 px here
    p = params(25.0, 1.04, (0.6, -0.8))
    matrix, shift = transforms(p, (SIZE, SIZE), config)
    warped, _ = warp(image, None, matrix, shift, fill=0.0)
    centre = np.array([SIZE - 1, SIZE - 1]) / 2
    expected = (points - centre) @ matrix[0].T + centre + shift[0]
    found = np.array([centroid(warped[0], e) for e in expected])
    np.testing.assert_allclose(found, expected, atol=0.1)
    np.testing.assert_allclose(shift[0], [3.0, -4.0])
    # recover the rotation (counter-clockwise as displayed, y down) and the scale from the two blobs
    before, after = points[1] - points[0], found[1] - found[0]
    turn = np.degrees(np.arctan2(-after[0], after[1]) - np.arctan2(-before[0], before[1]))
    assert turn == pytest.approx(25.0, abs=0.3)
    assert np.linalg.norm(after) / np.linalg.norm(before) == pytest.approx(1.04, abs=0.005)


def test_mask_and_image_get_the_same_transform():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    shapes = np.stack(
        [
            ((yy - 30) / 18) ** 2 + ((xx - 20) / 9) ** 2 <= 1,
            (np.abs(yy - 35) < 12) & (np.abs(xx - 40) < 7),
            ((yy - 25) ** 2 + (xx - 45) ** 2 <= 100) | ((yy - 45) ** 2 + (xx - 15) ** 2 <= 64),
        ]
    )
    config = AugmentConfig(shift_px=80)
    drawn = draw_affine(rng, 3, config)
    images, masks = augment(shapes.astype(np.float32), shapes, drawn, AugmentConfig(shift_px=80, fill=0.0))
    thresholded = images > 0.5
    differ = thresholded != masks
    # nearest and thresholded bilinear may differ only at the boundary, where the bilinear value is mixed
    assert differ.mean() < 0.01
    assert np.all((images[differ] > 0) & (images[differ] < 1))
    # the warped mask keeps the shape's area up to the scale squared
    ratio = masks.sum(axis=(1, 2)) / shapes.sum(axis=(1, 2))
    np.testing.assert_allclose(ratio, drawn.scale**2, rtol=0.06)


def test_fill_is_air_and_labels_of_a_batch_match_single_images():
    flat = np.full((2, SIZE, SIZE), window(40.0), np.float32)
    lung = np.zeros((2, SIZE, SIZE), bool)
    lung[:, 20:44, 20:44] = True
    drawn = AffineParams(np.radians([30.0, -20.0]), np.array([0.95, 1.0]), np.zeros((2, 2)))
    out, _ = augment(flat, lung, drawn, AugmentConfig())
    assert out[0, 0, 0] == pytest.approx(AIR) and pytest.approx(500 / 3000) == AIR
    assert out[0, SIZE // 2, SIZE // 2] == pytest.approx(window(40.0))
    for i in range(2):
        one, one_lung = augment(flat[i : i + 1], lung[i : i + 1], drawn.take([i]), AugmentConfig())
        batch_image, batch_lung = augment(flat, lung, drawn, AugmentConfig())
        assert np.array_equal(one[0], batch_image[i]) and np.array_equal(one_lung[0], batch_lung[i])


def test_shift_is_clipped_so_the_lung_stays_in_view():
    lung = np.zeros((1, SIZE, SIZE), bool)
    lung[0, 20:40, 44:62] = True  # near the right border
    image = lung.astype(np.float32)
    push_right = params(0.0, 1.0, (0.0, 1.0))
    free = AugmentConfig(shift_px=80, keep_lung_in_view=False)  # 10 px at 64
    _, lost = augment(image, lung, push_right, free)
    kept_config = AugmentConfig(shift_px=80)
    _matrix, shift = transforms(push_right, (SIZE, SIZE), kept_config, lung_boxes(lung))
    _, kept = augment(image, lung, push_right, kept_config)
    assert lost.sum() < lung.sum()
    assert kept.sum() == lung.sum() and kept[0, :, SIZE - 1].any()  # moved right as far as possible
    np.testing.assert_allclose(shift[0], [0.0, 2.0])  # columns 44..61 may move 2 px
    np.testing.assert_array_equal(lung_boxes(np.concatenate([lung, 0 * lung])), [[20, 39, 44, 61], [-1, -1, -1, -1]])
    boxed, none = augment(image, None, push_right, kept_config, boxes=lung_boxes(lung))
    assert none is None and np.array_equal(boxed, augment(image, lung, push_right, kept_config)[0])
