"""Lung masks from CT by classic image processing (thresholds, connectivity, morphology; no learned weights).

One pipeline serves volumes and single slices (a (1, y, x) scan). The 3D connectivity steps run on a
coarser working grid (blocks of voxels averaged to about `work_mm`); the lung boundary is then refined
at full resolution in a thin band around the coarse mask:
1. air = voxels below `air_hu` (scanner padding outside the reconstruction circle counts as air);
2. body = the largest dense component, holes filled slice by slice; only air inside it can be lung;
3. airway = the very dark (< `airway_hu`) tube through the middle of the body (trachea, followed down
   into the main bronchi), removed with a thin margin;
4. lungs = the one or two largest remaining air components that look like lung (not pure gas);
5. each lung closed (`closing_mm`) and its holes (up to `max_hole_cm2`) filled slice by slice, so that
   vessels and dense subpleural disease stay inside; everything is kept inside the body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from sscjax.errors import ScanError
from sscjax.io import RAW_VALUES_HINT, Geometry, Scan

PLANE = np.zeros((3, 3, 3), dtype=bool)  # 4-connectivity within a slice, none across slices
PLANE[1] = ndi.generate_binary_structure(2, 1)
SPACE = ndi.generate_binary_structure(3, 1)
SPECK_FRACTION = 0.01  # after refinement, parts smaller than this fraction of the mask are dropped


@dataclass(frozen=True)
class LungSettings:
    """Thresholds (HU) and sizes (mm, mL, cm^2) of the lung segmentation."""

    air_hu: float = -320.0  # below: air-like (lung parenchyma, airways, outside air)
    airway_hu: float = -900.0  # below: airway lumen (grown with stricter thresholds when it leaks into lung)
    gas_hu: float = -960.0  # an air region darker than this on average is gas (bowel, stomach), not lung
    work_mm: tuple[float, float] = (3.0, 1.5)  # (z, in-plane) voxel size aimed at by the working grid
    closing_mm: float = 6.0  # radius of the closing that brings vessels and dense subpleural disease in
    max_hole_cm2: float = 6.0  # larger dense regions ringed by lung in a slice (heart, liver dome) stay out
    airway_margin_mm: float = 3.0  # removed around the airway lumen (its wall)
    airway_area_cm2: tuple[float, float] = (0.1, 8.0)  # plausible airway cross-section
    airway_offset: float = 0.12  # airway centre within this fraction of the body width from the body centre
    airway_max_fraction: float = 0.15  # an "airway" larger than this fraction of the air inside the body leaks
    cropped_fov_fraction: float = 0.5  # body on this fraction of a slice's border: the field of view is cut
    second_lung_ratio: float = 0.15  # a second component must be this large relative to the first
    min_lung_ml: float = 20.0  # smallest plausible lung volume (volumes)
    min_lung_cm2: float = 3.0  # smallest plausible lung area (single slices)


def lung_mask(scan: Scan, settings: LungSettings = LungSettings()) -> np.ndarray:
    """Lung mask (uint8 0/1, same (z, y, x) shape) of a CT volume or a one-slice scan in HU."""
    spacing = np.asarray(scan.geometry.spacing[::-1], dtype=np.float64)
    return _segment(np.asarray(scan.array, dtype=np.float32), spacing, scan.source or "scan", settings)


def lung_mask_slice(
    hu: np.ndarray, spacing_yx: tuple[float, float], source: str = "slice", settings: LungSettings = LungSettings()
) -> np.ndarray:
    """Lung mask (uint8 0/1, (y, x)) of one axial slice in HU with pixel spacing (y, x) in mm."""
    spacing = np.asarray([1.0, *spacing_yx], dtype=np.float64)
    return _segment(np.asarray(hu, dtype=np.float32)[None], spacing, source, settings)[0]


def lung_sizes(mask: np.ndarray, geometry: Geometry) -> dict[str, float]:
    """Size of the right and left lung: mL for a volume, cm^2 for a single slice (split at the midline gap)."""
    mask = np.asarray(mask) > 0
    columns = mask.sum(axis=(0, 1))
    xs = np.flatnonzero(columns)
    if xs.size == 0:
        return {"right": 0.0, "left": 0.0}
    lo, hi = xs[0] + (xs[-1] - xs[0]) // 3, xs[-1] - (xs[-1] - xs[0]) // 3
    split = lo + int(np.argmin(columns[lo : hi + 1]))
    sx, sy, sz = geometry.spacing
    unit = sx * sy / 100.0 if mask.shape[0] == 1 else sx * sy * sz / 1000.0
    # canonical x points toward the patient's left: the right lung has the smaller x
    return {"right": float(columns[:split].sum() * unit), "left": float(columns[split:].sum() * unit)}


def _segment(hu: np.ndarray, spacing: np.ndarray, source: str, s: LungSettings) -> np.ndarray:
    """The pipeline of the module docstring on a (z, y, x) HU array with (z, y, x) spacing in mm."""
    factors = _work_factors(spacing, hu.shape, s)
    coarse = _block_mean(hu, factors)
    cspacing = spacing * factors
    air = coarse < s.air_hu
    body = _body(~air, s)
    if not body.any():
        raise ScanError(f"{source}: no body found (no tissue denser than {s.air_hu:g} HU)")
    inside = air & body
    airway = _airway(inside, coarse, body, cspacing, s)
    margin = _ellipsoid(s.airway_margin_mm, cspacing)
    airway_zone = ndi.binary_dilation(airway, margin) if airway.any() else airway
    lungs = _select_lungs(inside & ~airway_zone, coarse, cspacing, source, s)
    # airway enclosed by lung within a slice (bronchi inside the lung) belongs to the lung
    max_hole = s.max_hole_cm2 * 100.0 / (cspacing[1] * cspacing[2])
    mediastinal_airway = airway_zone & ~_fill_slices(lungs, max_hole)
    closed = _close_each(lungs, s.closing_mm, cspacing, max_hole) & body & ~mediastinal_airway
    if factors.tolist() == [1, 1, 1]:
        return closed.astype(np.uint8)
    return _refine(closed, closed & ~air, body & ~mediastinal_airway, hu, s.air_hu, factors).astype(np.uint8)


def _work_factors(spacing: np.ndarray, shape: tuple[int, ...], s: LungSettings) -> np.ndarray:
    """Integer block size per (z, y, x) axis that brings the voxels nearest to `work_mm` (1 to the axis size)."""
    target = np.asarray([s.work_mm[0], s.work_mm[1], s.work_mm[1]])
    return np.clip(np.round(target / spacing), 1, shape).astype(int)


def _block_mean(array: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Average over (fz, fy, fx) blocks; a partial last block is completed by repeating the last voxel."""
    out = array
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        front = np.moveaxis(out, axis, 0)
        blocks = -(-front.shape[0] // f)
        parts = [front[i::f] for i in range(f)]  # strided sums: much faster than a mean over a 6D reshape
        total = sum(p if len(p) == blocks else np.concatenate([p, front[-1:]]) for p in parts)
        out = np.moveaxis(np.asarray(total), 0, axis)
    return (out / np.prod(factors)).astype(np.float32, copy=False)


def _upsample(array: np.ndarray, factors: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour inverse of `_block_mean`, cropped to `shape`."""
    (nz, ny, nx), (fz, fy, fx) = array.shape, factors
    blocks = np.broadcast_to(array[:, None, :, None, :, None], (nz, fz, ny, fy, nx, fx))
    return blocks.reshape(nz * fz, ny * fy, nx * fx)[: shape[0], : shape[1], : shape[2]]


def _ellipsoid(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """A structuring element: the voxels within `radius_mm` of the centre, given the voxel spacing."""
    radii = np.floor(radius_mm / spacing + 1e-6).astype(int)
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist = sum((g * sp / max(radius_mm, 1e-6)) ** 2 for g, sp in zip(grids, spacing))
    return dist <= 1.0 + 1e-6


def _largest(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """The largest connected component of `mask` (all of it when it is empty)."""
    labels, n = ndi.label(mask, structure)
    if n == 0:
        return mask
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _slice_borders(array: np.ndarray) -> np.ndarray:
    """The border pixels of every slice, as a (z, perimeter) array."""
    return np.concatenate([array[:, 0, :], array[:, -1, :], array[:, :, 0], array[:, :, -1]], axis=1)


def _fill_slices(mask: np.ndarray, max_pixels: float = np.inf) -> np.ndarray:
    """Fill the holes of every axial slice (background regions that do not reach the slice border) of at
    most `max_pixels` pixels."""
    labels, n = ndi.label(~mask, PLANE)
    hole = np.bincount(labels.ravel(), minlength=n + 1) <= max_pixels
    hole[np.unique(_slice_borders(labels))] = False
    hole[0] = False
    return mask | hole[labels]


def _body(dense: np.ndarray, s: LungSettings) -> np.ndarray:
    """The largest dense component with its slices' holes filled; where it covers most of a slice's border
    (a field of view cut inside the body), that whole slice counts as body."""
    body = _largest(dense, SPACE)
    cropped = _slice_borders(body).mean(axis=1) >= s.cropped_fov_fraction
    return _fill_slices(body) | cropped[:, None, None]


def _airway(inside: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing: np.ndarray, s: LungSettings) -> np.ndarray:
    """Trachea and main bronchi: the very dark tube through the middle of the body, grown in 3D from it."""
    blobs = _airway_blobs(inside & (hu < s.airway_hu), body, spacing, s)
    if not blobs.any():
        return blobs
    limit = s.airway_max_fraction * inside.sum()
    for threshold in s.airway_hu - np.arange(0.0, 100.0, 25.0):
        labels, _ = ndi.label(inside & (hu < threshold), SPACE)
        grown = np.isin(labels, np.unique(labels[blobs & (labels > 0)]))
        if 0 < grown.sum() <= limit:
            return grown | blobs
    return blobs


def _airway_blobs(dark: np.ndarray, body: np.ndarray, spacing: np.ndarray, s: LungSettings) -> np.ndarray:
    """Per-slice dark blobs of airway size near the body's midline, on the tube that has most of them."""
    labels, n = ndi.label(dark, PLANE)
    if n == 0:
        return dark
    blob = labels[dark]
    z, _, x_voxel = np.nonzero(dark)
    pixels = np.bincount(blob, minlength=n + 1)[1:]
    area_cm2 = pixels * spacing[1] * spacing[2] / 100.0
    x = np.bincount(blob, weights=x_voxel, minlength=n + 1)[1:] / pixels
    k = np.zeros(n + 1, dtype=int)
    k[blob] = z  # the slice of each blob
    tubes, _ = ndi.label(dark, SPACE)
    tube_of_blob = np.zeros(n + 1, dtype=int)
    tube_of_blob[blob] = tubes[dark]  # each blob lies in one 3D component
    k, tube_of_blob = k[1:], tube_of_blob[1:]
    xs = np.arange(body.shape[2])
    cols = body.any(axis=1)  # (z, x): body columns per slice
    left = np.where(cols, xs, body.shape[2]).min(axis=1)
    right = np.where(cols, xs, -1).max(axis=1)
    centre, width = (left[k] + right[k]) / 2.0, np.maximum(right[k] - left[k], 1)
    lo, hi = s.airway_area_cm2
    good = (area_cm2 >= lo) & (area_cm2 <= hi) & (np.abs(x - centre) <= s.airway_offset * width)
    if not good.any():
        return np.zeros_like(dark)
    # keep the blobs of the 3D dark component(s) that run through the most slices: the trachea
    slices_per_tube = np.bincount(tube_of_blob[good])
    keep_tubes = np.flatnonzero(slices_per_tube >= max(1, 0.5 * slices_per_tube.max()))
    chosen = np.zeros(n + 1, dtype=bool)
    chosen[1:] = good & np.isin(tube_of_blob, keep_tubes)
    return chosen[labels]


def _select_lungs(
    candidates: np.ndarray, hu: np.ndarray, spacing: np.ndarray, source: str, s: LungSettings
) -> np.ndarray:
    """The one or two largest air components that look like lung; ScanError if there are none."""
    labels, n = ndi.label(candidates, SPACE)
    single = candidates.shape[0] == 1
    unit, minimum, what = (
        (spacing[1] * spacing[2] / 100.0, s.min_lung_cm2, "cm^2")
        if single
        else (np.prod(spacing) / 1000.0, s.min_lung_ml, "mL")
    )
    voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    means = np.bincount(labels.ravel(), weights=hu.ravel(), minlength=n + 1)[1:] / np.maximum(voxels, 1)
    sizes = np.where(means >= s.gas_hu, voxels * unit, 0.0)  # pure gas (bowel, stomach) is no lung
    order = np.argsort(sizes)[::-1][:2]
    keep = [i for i in order if sizes[i] >= minimum and sizes[i] >= s.second_lung_ratio * sizes[order[0]]]
    if not keep:
        largest = float(sizes.max()) if n else 0.0
        raw = f"; no value below 0 HU, so no air: the scan {RAW_VALUES_HINT}" if hu.min() >= 0 else ""
        raise ScanError(
            f"{source}: no lungs found (largest lung-like air region inside the body: "
            f"{largest:.1f} {what}, at least {minimum:g} {what} expected){raw}"
        )
    return np.isin(labels, np.asarray(keep) + 1)


def _close_each(lungs: np.ndarray, radius_mm: float, spacing: np.ndarray, max_hole: float) -> np.ndarray:
    """Close each lung on its own (so the two lungs are not bridged) and fill its holes slice by slice
    (up to `max_hole` pixels: vessels and nodules, not the heart or the liver dome ringed by lung).

    The element is a cylinder (an in-plane disk, then a line along z: two cheap passes, not one ball)."""
    ball = _ellipsoid(radius_mm, spacing)
    rz, ry, rx = np.asarray(ball.shape) // 2
    disk, line = ball[rz : rz + 1], ball[:, ry : ry + 1, rx : rx + 1]
    labels, n = ndi.label(lungs, SPACE)
    out = np.zeros_like(lungs)
    pad = np.asarray(ball.shape) // 2
    for box, label in zip(ndi.find_objects(labels), range(1, n + 1)):
        lo = [max(b.start - p, 0) for b, p in zip(box, pad)]
        hi = [min(b.stop + p, size) for b, p, size in zip(box, pad, lungs.shape)]
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        part = np.pad(labels[window] == label, [(p, p) for p in pad], mode="edge")
        grown = ndi.binary_dilation(ndi.binary_dilation(part, disk), line)
        closed = ndi.binary_erosion(ndi.binary_erosion(grown, line, border_value=1), disk, border_value=1)
        core = tuple(slice(p, p + size) for p, size in zip(pad, np.asarray(hi) - np.asarray(lo)))
        out[window] |= _fill_slices(closed[core], max_hole)
    return out


def _refine(
    closed: np.ndarray, filled: np.ndarray, allowed: np.ndarray, hu: np.ndarray, air_hu: float, factors: np.ndarray
) -> np.ndarray:
    """Full-resolution mask: the coarse mask's interior and the dense voxels it filled in (lesions, vessels),
    plus the air voxels of a one-voxel band around its edge; specks cut off from the lungs are dropped."""
    step = ndi.generate_binary_structure(3, 1)
    keep = ndi.binary_erosion(closed, step, border_value=1) | filled
    band = ndi.binary_dilation(closed, step) & allowed
    coarse_box = ndi.find_objects(band.astype(np.uint8))[0]
    box = tuple(slice(b.start * f, min(b.stop * f, n)) for b, f, n in zip(coarse_box, factors, hu.shape))
    code = keep[coarse_box].astype(np.uint8) + band[coarse_box]  # 2: kept, 1: edge band
    inner = _upsample(code, factors, hu[box].shape) + (hu[box] < air_hu) >= 2
    _drop_specks(inner, SPECK_FRACTION * np.count_nonzero(inner))
    mask = np.zeros(hu.shape, dtype=bool)
    mask[box] = inner
    return mask


def _drop_specks(mask: np.ndarray, min_voxels: float) -> None:
    """Remove, in place, the connected parts that fit in a box of fewer than `min_voxels` voxels."""
    labels, _ = ndi.label(mask, SPACE)
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if np.prod([b.stop - b.start for b in box]) < min_voxels:
            mask[box][labels[box] == label] = False
