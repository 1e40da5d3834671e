"""Synthetic diseased slices (the paper's data synthesis): ground-glass (GG) and reticulation (RET) texture
inserted into healthy (TOT = 0) slices inside random ellipses, with exactly known scores.

Per image and pattern, 0..3 ellipses (at least one ellipse per image over both patterns, so every synthetic
image is diseased; the paper says "up to three"), each centred on a random lung pixel with random semi-axes
(1..150 px at 512 px, the paper's "axes") and angle. The pattern's region is the union of its ellipses (binary);
the lesion of a pattern is region ∩ lung, and its score is exactly |region ∩ lung| / |lung| * 100 on the
returned image's own lung mask; TOT is the same ratio for the union of both lesions. The texture is blended in
with weight w = region * (Gaussian-blurred region): about 1/2 at the ellipse boundary, rising to 1 some two
sigma inside ("edges faded by a Gaussian decay"), 0 outside the ellipse, and cut hard at the lung boundary.
Where GG and RET overlap the two textures are mixed by their weights. Pixels outside the lesions keep their
exact value. Textures are the pattern patches (window units) rotated by +-180 deg, scaled by 0.95..1.05,
shifted by a random phase and mirror-tiled over the image, at the image's pixel size.
All work is vectorised over the batch; the random draws come apart from the images (`draw_synthesis`) so a
global batch can be drawn once and any shard of it rendered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from sscjax.configs.snet import SynthesisConfig
from sscjax.data.slices import window
from sscjax.domain import LESION_PATTERNS
from sscjax.errors import ConfigError, ScanError
from sscjax.io import read_image

GG, RET = 0, 1
FADE_TRUNCATE = 3.0  # the Gaussian fade's kernel reaches this many sigmas


@dataclass(frozen=True)
class Patterns:
    """The GG and RET texture patches in window units, and their pixel size (mm)."""

    gg: np.ndarray
    ret: np.ndarray
    spacing_mm: float

    def smoothed(self, step: float) -> Patterns:
        """The patches low-pass filtered for sampling every `step` patch pixels (no change if step <= 1)."""
        if step <= 1:
            return self
        sigma = (step - 1) / 2
        gg, ret = [ndimage.gaussian_filter(p, sigma, mode="mirror") for p in (self.gg, self.ret)]
        return Patterns(gg, ret, self.spacing_mm)


def load_patterns(paths: Mapping[str, str | Path]) -> Patterns:
    """Read the gg and ret patches (one-slice images in HU, e.g. a cohort's `pattern_paths`)."""
    missing = [name for name in LESION_PATTERNS if name not in paths]
    if missing:
        raise ConfigError(
            f"data synthesis needs the texture patches {', '.join(missing)} (patterns/<name>.mha in the cohort)"
        )
    patches, spacings = [], []
    for name in LESION_PATTERNS:
        image = read_image(paths[name], dtype=np.float32)
        if image.shape[0] != 1 or min(image.shape[1:]) < 2:
            raise ScanError(f"{paths[name]}: a pattern must be one 2D slice of at least 2x2 pixels, not {image.shape}")
        patches.append(window(image.array[0]))
        spacings.append(np.mean(image.geometry.spacing[:2]))
    return Patterns(patches[GG], patches[RET], float(np.mean(spacings)))


@dataclass(frozen=True)
class SynthesisParams:
    """The random draws for n synthetic images (pattern axis: 0 GG, 1 RET; E ellipse slots)."""

    active: np.ndarray  # (n, 2, E) bool: which ellipse slots are used
    centre: np.ndarray  # (n, 2, E) in [0, 1): picks the centre among the image's lung pixels
    semi_axes: np.ndarray  # (n, 2, E, 2) px at the reference size
    angle: np.ndarray  # (n, 2, E) rad
    texture_angle: np.ndarray  # (n, 2) rad
    texture_scale: np.ndarray  # (n, 2)
    texture_phase: np.ndarray  # (n, 2, 2) in [0, 1): shift of the texture, in mirror periods

    def __len__(self) -> int:
        return len(self.active)

    def take(self, index: np.ndarray) -> SynthesisParams:
        return SynthesisParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_synthesis(rng: np.random.Generator, n: int, config: SynthesisConfig) -> SynthesisParams:
    """Draw the ellipses and texture transforms of n synthetic images."""
    lo, hi = config.ellipses
    counts = rng.integers(lo, hi + 1, size=(n, 2))
    none = np.flatnonzero(counts.sum(axis=1) == 0)
    counts[none, rng.integers(0, 2, size=len(none))] = 1
    rotation = np.radians(config.texture_rotation_deg)
    return SynthesisParams(
        active=np.arange(hi) < counts[..., None],
        centre=rng.random((n, 2, hi)),
        semi_axes=rng.uniform(*config.semi_axis_px, size=(n, 2, hi, 2)),
        angle=rng.uniform(0.0, np.pi, size=(n, 2, hi)),
        texture_angle=rng.uniform(-rotation, rotation, size=(n, 2)),
        texture_scale=rng.uniform(*config.texture_scale, size=(n, 2)),
        texture_phase=rng.random((n, 2, 2)),
    )


@dataclass(frozen=True)
class Synthesis:
    """Synthetic images, their exact scores and lesion masks."""

    images: np.ndarray  # (B, H, W) float32
    targets: np.ndarray  # (B, 3) float32: TOT, GG, RET in % of the lung area
    lesion: np.ndarray  # (B, H, W) uint8: bit 1 GG, bit 2 RET (inside the lung)


def _centres(lung: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the lung pixel that u in [0, 1) picks in each image (lung (B, H, W), u (B, ...))."""
    b, w = len(lung), lung.shape[2]
    flat = lung.reshape(b, -1)
    per_image = (b,) + (1,) * (u.ndim - 1)
    counts = np.count_nonzero(flat, axis=1).reshape(per_image)
    pixels = np.nonzero(flat)[1]  # row-major over (image, pixel): image i's lung pixels start at starts[i]
    starts = (np.cumsum(counts) - counts.ravel()).reshape(per_image)
    rank = np.minimum(np.floor(u * counts).astype(int), counts - 1)
    return np.divmod(pixels[starts + rank], w)


def ellipse_regions(lung: np.ndarray, params: SynthesisParams, px: float) -> np.ndarray:
    """(2, B, H, W) bool: the union of each pattern's active ellipses (semi-axes scaled by px)."""
    b, h, w = lung.shape
    cy, cx = _centres(lung, params.centre)
    yy, xx = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    regions = np.zeros((2, b, h, w), dtype=bool)
    for pattern in (GG, RET):
        for slot in range(params.active.shape[2]):
            rows = np.flatnonzero(params.active[:, pattern, slot])
            if len(rows) == 0:
                continue
            a, c = (params.semi_axes[rows, pattern, slot] * px).T
            cos, sin = np.cos(params.angle[rows, pattern, slot]), np.sin(params.angle[rows, pattern, slot])
            # Quadratic form of the rotated ellipse, split into (B, 1, W), (B, H, 1) and one cross term.
            qxx = (cos**2 / a**2 + sin**2 / c**2).astype(np.float32)[:, None, None]
            qyy = (sin**2 / a**2 + cos**2 / c**2).astype(np.float32)[:, None, None]
            qxy = (2 * cos * sin * (1 / a**2 - 1 / c**2)).astype(np.float32)[:, None, None]
            dx = (xx[None, :] - cx[rows, pattern, slot, None].astype(np.float32))[:, None, :]
            dy = (yy[None, :] - cy[rows, pattern, slot, None].astype(np.float32))[:, :, None]
            q = (qxy * dx) * dy
            q += qxx * dx**2
            q += qyy * dy**2
            regions[pattern, rows] |= q <= 1
    return regions


def fade_weights(regions: np.ndarray, sigma: float) -> np.ndarray:
    """Blending weights of binary regions (..., H, W): the Gaussian-blurred region, kept inside the region."""
    inside = regions.astype(np.float32)
    if sigma <= 0:
        return inside
    sigmas = (0,) * (regions.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(inside, sigmas, mode="constant", truncate=FADE_TRUNCATE) * inside


def _lung_window(lung: np.ndarray, margin: int) -> tuple[slice, slice]:
    """(rows, columns) of the bounding box of all lung pixels of a batch, widened by margin (within the image)."""
    rows, cols = np.flatnonzero(lung.any(axis=(0, 2))), np.flatnonzero(lung.any(axis=(0, 1)))
    h, w = lung.shape[1:]
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)),
    )


def texture_values(
    patch: np.ndarray,
    b: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    shape: tuple[int, int],
    angle: np.ndarray,
    scale: np.ndarray,
    phase: np.ndarray,
    step: np.ndarray,
) -> np.ndarray:
    """The mirror-tiled patch, rotated and scaled about the image centre, at image pixels (b, y, x):
    one bilinear interpolation for the whole batch. angle, scale, step: (B,); phase (B, 2)."""
    centre = (np.asarray(shape) - 1) / 2
    dy, dx = y - centre[0], x - centre[1]
    k = (step / scale)[b]
    cos, sin = np.cos(angle)[b], np.sin(angle)[b]
    period = 2 * (np.asarray(patch.shape) - 1)
    u = k * (cos * dy - sin * dx) + phase[b, 0] * period[0]
    v = k * (sin * dy + cos * dx) + phase[b, 1] * period[1]
    return ndimage.map_coordinates(patch, np.stack([u, v]), order=1, mode="mirror").astype(np.float32)


def _check_inputs(images: np.ndarray, lung: np.ndarray, scores: np.ndarray, params: SynthesisParams) -> np.ndarray:
    """The lung area (pixels) of each slice; ValueError when the inputs disagree in shape, a slice is not healthy
    (TOT > 0) or one has no lung to put lesions in."""
    b = images.shape[0]
    if len(params) != b or lung.shape != images.shape or np.shape(scores) != (b, 3):
        raise ValueError(
            f"synthesis inputs disagree: images {images.shape}, lung {lung.shape}, "
            f"scores {np.shape(scores)}, {len(params)} parameter sets"
        )
    if np.any(np.asarray(scores)[:, 0] != 0):
        raise ValueError(
            f"data synthesis starts from healthy slices only; got TOT = {np.asarray(scores)[:, 0].tolist()}"
        )
    lung_area = np.count_nonzero(lung, axis=(1, 2))
    if np.any(lung_area == 0):
        raise ValueError(
            f"data synthesis needs lung on every slice; images {np.flatnonzero(lung_area == 0).tolist()} have none"
        )
    return lung_area


def _pattern_textures(
    patterns: Patterns,
    params: SynthesisParams,
    pixels: tuple[np.ndarray, ...],
    shape: tuple[int, int],
    step: np.ndarray,
) -> list[np.ndarray]:
    """The GG and RET textures (indexed by GG, RET) at `pixels` (image, row, column), each image's patch turned,
    scaled and shifted by its parameters."""
    bi, yi, xi = pixels
    return [
        texture_values(
            patch,
            bi,
            yi,
            xi,
            shape,
            params.texture_angle[:, p],
            params.texture_scale[:, p],
            params.texture_phase[:, p],
            step,
        )
        for p, patch in ((GG, patterns.gg), (RET, patterns.ret))
    ]


def _blend(
    images: np.ndarray, pixels: tuple[np.ndarray, ...], textures: list[np.ndarray], wg: np.ndarray, wr: np.ndarray
) -> np.ndarray:
    """A copy of `images` with `pixels` faded towards the textures by their weights wg (GG) and wr (RET); where
    both lesions reach, towards the textures mixed in proportion."""
    mixed = (wg * textures[GG] + wr * textures[RET]) / (wg + wr)  # wg + wr > 0 on every lesion pixel
    weight = 1 - (1 - wg) * (1 - wr)
    out = images.copy()
    out[pixels] = images[pixels] * (1 - weight) + mixed * weight
    return out


def _lesion_outcome(
    lesions: np.ndarray, changed: np.ndarray, lung_area: np.ndarray, window: tuple[slice, slice], shape: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """The slices' new scores (percent of the lung changed, in GG and in RET) and their (B, H, W) lesion masks (bit 0
    GG, bit 1 RET), from the lesions within the lung window."""
    area = np.stack([np.count_nonzero(m, axis=(1, 2)) for m in (changed, lesions[GG], lesions[RET])], axis=1)
    targets = (area / lung_area[:, None] * 100).astype(np.float32)
    lesion = np.zeros(shape, np.uint8)
    lesion[:, window[0], window[1]] = lesions[GG].astype(np.uint8) | (lesions[RET].astype(np.uint8) << 1)
    return targets, lesion


def synthesize(
    images: np.ndarray,
    lung: np.ndarray,
    scores: np.ndarray,
    params: SynthesisParams,
    patterns: Patterns,
    config: SynthesisConfig,
    texture_step: np.ndarray | float = 1.0,
) -> Synthesis:
    """Insert GG and RET texture into B healthy slices (images (B, H, W) in window units, lung (B, H, W),
    scores (B, 3): TOT must be 0); texture_step: patch pixels per image pixel, per image or one for all."""
    images = np.asarray(images, dtype=np.float32)
    lung = np.asarray(lung, dtype=bool)
    b, h, w = images.shape
    lung_area = _check_inputs(images, lung, scores, params)
    px = max(h, w) / config.reference_size
    sigma = config.fade_sigma_px * px
    # Work inside the lungs' common bounding box, widened by the fade filter's reach: exactly the same result
    # (nothing outside it reaches a lung pixel) on a fraction of the pixels.
    window = _lung_window(lung, int(FADE_TRUNCATE * sigma + 0.5) + 1)
    lung_window = lung[:, window[0], window[1]]
    regions = ellipse_regions(lung_window, params, px)
    lesions = regions & lung_window
    weights = fade_weights(regions, sigma)
    changed = lesions.any(axis=0)
    bi, yi, xi = np.nonzero(changed)
    pixels = (bi, yi + window[0].start, xi + window[1].start)
    step = np.broadcast_to(np.asarray(texture_step, dtype=np.float64), (b,))
    textures = _pattern_textures(patterns, params, pixels, (h, w), step)
    wg, wr = (weights[p, bi, yi, xi] * lesions[p, bi, yi, xi] for p in (GG, RET))
    targets, lesion = _lesion_outcome(lesions, changed, lung_area, window, (b, h, w))
    return Synthesis(_blend(images, pixels, textures, wg, wr), targets, lesion)
