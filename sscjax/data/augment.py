"""Random affine augmentation of S-Net training slices: rotation (+-30 deg), scale (0.95..1.05) and shift
(+-10 px at 512 px), applied to the image and its lung mask with the same transform, labels unchanged.

The transform maps an input pixel p (y, x) to c + s R(angle) (p - c) + t, c the image centre, angle
counter-clockwise as displayed (y down). Each output is ONE interpolation over the whole batch (images
bilinear, masks nearest, from the same source coordinates). Pixels that come from outside the image get the
fill value: air (-1000 HU in window units, 1/6), the content around a patient, rather than 0 (-1500 HU, the
padding outside a scanner's field of view). With keep_lung_in_view the shift of each image is clipped so the
transformed bounding box of its lung stays inside the image (then no lung leaves the image and the area
scores stay true); if even the unshifted box does not fit, the shift centres it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from sscjax.configs.snet import AugmentConfig
from sscjax.domain import AIR


@dataclass(frozen=True)
class AffineParams:
    """Random draws for n images: angle (rad), scale, shift as a fraction in [-1, 1] of the largest shift."""

    angle: np.ndarray  # (n,)
    scale: np.ndarray  # (n,)
    shift: np.ndarray  # (n, 2) (y, x)

    def __len__(self) -> int:
        return len(self.angle)

    def take(self, index: np.ndarray) -> AffineParams:
        return AffineParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_affine(rng: np.random.Generator, n: int, config: AugmentConfig) -> AffineParams:
    """Draw rotation, scale and shift of n images, uniformly within the configured bounds."""
    rotation = np.radians(config.rotation_deg)
    return AffineParams(
        angle=rng.uniform(-rotation, rotation, size=n),
        scale=rng.uniform(*config.scale, size=n),
        shift=rng.uniform(-1.0, 1.0, size=(n, 2)),
    )


def lung_boxes(lung: np.ndarray) -> np.ndarray:
    """(B, 4) bounding box (y0, y1, x0, x1) of each (B, H, W) mask, pixel centres inclusive; -1 where empty."""
    rows, cols = np.any(lung, axis=2), np.any(lung, axis=1)
    h, w = lung.shape[1:]
    boxes = np.stack(
        [
            rows.argmax(axis=1),
            h - 1 - rows[:, ::-1].argmax(axis=1),
            cols.argmax(axis=1),
            w - 1 - cols[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    )
    return np.where(rows.any(axis=1)[:, None], boxes, -1)


def transforms(
    params: AffineParams, shape: tuple[int, int], config: AugmentConfig, boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Forward transforms p -> c + matrix (p - c) + shift in (y, x) pixels of (H, W) images: matrix (B, 2, 2),
    shift (B, 2); with lung `boxes` (see lung_boxes) and keep_lung_in_view the shifts keep each box in view."""
    h, w = shape
    cos, sin = np.cos(params.angle), np.sin(params.angle)
    # (y, x) rows: counter-clockwise as displayed with y pointing down.
    matrix = params.scale[:, None, None] * np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    shift = params.shift * config.shift_px * np.array([h, w]) / config.reference_size
    if config.keep_lung_in_view and boxes is not None:
        centre = (np.array([h, w]) - 1) / 2
        y0, y1, x0, x1 = np.asarray(boxes, dtype=np.float64).T
        corners = np.stack([np.stack(corner, 1) for corner in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))], 1)
        moved = np.einsum("bij,bkj->bki", matrix, corners - centre) + centre
        lo, hi = -moved.min(axis=1), (np.array([h, w]) - 1) - moved.max(axis=1)
        fitted = np.where(lo <= hi, np.clip(shift, lo, hi), (lo + hi) / 2)
        shift = np.where((np.asarray(boxes)[:, :1] >= 0), fitted, shift)
    return matrix, shift


def _source_coordinates(
    shape: tuple[int, int, int], matrix: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) source (y, x) that each output pixel samples (the inverse transform), in the frame of the
    fill-padded images (see `_sample`: 1 = the first row/column), clipped onto the fill border outside."""
    _b, h, w = shape
    centre = (np.array([h, w]) - 1) / 2
    inverse = np.linalg.inv(matrix)
    origin = centre - np.einsum("bij,bj->bi", inverse, centre + shift) + 1  # (B, 2)
    yy, xx = np.arange(h), np.arange(w)
    coordinates = []
    for axis, size in ((0, h), (1, w)):
        along_y = (inverse[:, axis, 0, None] * yy + origin[:, axis, None]).astype(np.float32)  # (B, H)
        along_x = (inverse[:, axis, 1, None] * xx).astype(np.float32)  # (B, W)
        source = along_y[:, :, None] + along_x[:, None, :]
        coordinates.append(np.clip(source, 0, size + 1, out=source))
    return coordinates[0], coordinates[1]


def _sample(arrays: np.ndarray, coordinates: tuple[np.ndarray, np.ndarray], order: int, fill: float) -> np.ndarray:
    """Gather a (B, H, W) batch at `_source_coordinates` in one go: order 1 bilinear, 0 nearest. The images are
    padded with fill (1 row/column before, 2 after, so clipped coordinates read fill only); each image's
    arithmetic is independent of the batch it is in."""
    b, h, w = arrays.shape
    stride = w + 3
    flat = np.pad(arrays, ((0, 0), (1, 2), (1, 2)), constant_values=fill).ravel()
    src_y, src_x = coordinates
    base = (np.arange(b, dtype=np.intp) * ((h + 3) * stride))[:, None, None]
    if order == 0:
        index = np.floor(src_y + 0.5) * stride + np.floor(src_x + 0.5)  # exact in float32 below 2^24 pixels
        return np.take(flat, index.astype(np.intp) + base)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    y0 *= stride
    y0 += x0
    index = y0.astype(np.intp)
    index += base
    top, right = np.take(flat, index), np.take(flat[1:], index)
    right -= top
    right *= fx
    top += right
    bottom, right = np.take(flat[stride:], index), np.take(flat[stride + 1 :], index)
    right -= bottom
    right *= fx
    bottom += right
    bottom -= top
    bottom *= fy
    top += bottom
    return top


def warp(
    images: np.ndarray, lung: np.ndarray | None, matrix: np.ndarray, shift: np.ndarray, fill: float = AIR
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply per-image forward transforms (see `transforms`) to images (bilinear) and lung masks (nearest)."""
    images = np.asarray(images, dtype=np.float32)
    coordinates = _source_coordinates(images.shape, matrix, shift)
    warped = _sample(images, coordinates, order=1, fill=fill)
    if lung is None:
        return warped, None
    return warped, _sample(np.asarray(lung, dtype=np.uint8), coordinates, order=0, fill=0).astype(bool)


def augment(
    images: np.ndarray,
    lung: np.ndarray | None,
    params: AffineParams,
    config: AugmentConfig,
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Randomly rotate, scale and shift a batch of images and their lung masks alike (lung None: images only;
    the lung boxes for keep_lung_in_view then come from `boxes`, see lung_boxes)."""
    if lung is not None:
        lung = np.asarray(lung, dtype=bool)
        boxes = lung_boxes(lung) if boxes is None else boxes
    if config.keep_lung_in_view and boxes is None:
        raise ValueError("keeping the lung in view needs the lung masks or their bounding boxes")
    matrix, shift = transforms(params, images.shape[1:], config, boxes)
    return warp(images, lung, matrix, shift, config.fill)
