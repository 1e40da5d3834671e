"""Geometric primitives of the phantom: smooth 3D random fields, tubes as swept spheres, disk rasterisation.

Everything is analytic in world millimetres, so a slice at any z (and any pixel grid) can be drawn alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceGrid:
    """World x and y (mm) of the pixel centres of one axial slice; square pixels of `pixel_mm`."""

    x: np.ndarray  # (nx,) increasing
    y: np.ndarray  # (ny,) increasing

    @property
    def pixel_mm(self) -> float:
        return float(self.x[1] - self.x[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.y), len(self.x))

    def rows(self, lo: float, hi: float) -> slice:
        """Index range of the rows whose y lies in [lo, hi]."""
        return slice(int(np.searchsorted(self.y, lo)), int(np.searchsorted(self.y, hi, side="right")))

    def cols(self, lo: float, hi: float) -> slice:
        """Index range of the columns whose x lies in [lo, hi]."""
        return slice(int(np.searchsorted(self.x, lo)), int(np.searchsorted(self.x, hi, side="right")))


@dataclass(frozen=True)
class WaveField:
    """A smooth Gaussian-like random field: a normalised sum of random 3D plane waves (unit variance)."""

    k: np.ndarray  # (K, 3) wave vectors (rad/mm), x y z
    phase: np.ndarray  # (K,)

    @staticmethod
    def sample(rng: np.random.Generator, n_waves: int, wavelength_mm: tuple[float, float]) -> WaveField:
        """Random directions (uniform on the sphere), wavelengths log-uniform in the given range."""
        direction = rng.standard_normal((n_waves, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        lo, hi = np.log(wavelength_mm)
        wavelength = np.exp(rng.uniform(lo, hi, n_waves))
        return WaveField(direction * (2 * np.pi / wavelength)[:, None], rng.uniform(0, 2 * np.pi, n_waves))

    @property
    def scale(self) -> float:
        """Amplitude of each wave, for unit variance."""
        return float(np.sqrt(2.0 / len(self.phase)))

    def on_slice(self, z: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The field on the (len(y), len(x)) grid of one slice: a rank-K complex product, no per-pixel trig."""
        ex = np.exp(1j * np.outer(x, self.k[:, 0])).astype(np.complex64)
        ey = np.exp(1j * np.outer(y, self.k[:, 1])).astype(np.complex64)
        coef = (self.scale * np.exp(1j * (self.k[:, 2] * z + self.phase))).astype(np.complex64)
        return ((ey * coef) @ ex.T).real


@dataclass(frozen=True)
class Spheres:
    """A union of spheres (tubes swept along polylines); kept sorted by z (see concat) so that one slice
    finds its spheres fast."""

    centre: np.ndarray  # (n, 3) x y z mm
    radius: np.ndarray  # (n,)
    code: np.ndarray  # (n,) uint8 label (tissue) of each sphere

    @staticmethod
    def concat(parts: list[Spheres]) -> Spheres:
        """All spheres of `parts`, sorted by z."""
        centre = np.concatenate([p.centre for p in parts]) if parts else np.zeros((0, 3))
        radius = np.concatenate([p.radius for p in parts]) if parts else np.zeros(0)
        code = np.concatenate([p.code for p in parts]) if parts else np.zeros(0, np.uint8)
        order = np.argsort(centre[:, 2], kind="stable")
        return Spheres(centre[order], radius[order], code[order])

    @property
    def max_radius(self) -> float:
        return float(self.radius.max()) if len(self.radius) else 0.0

    def cut(self, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The disks where the plane at z cuts the spheres: centres (n, 2 as x, y), radii, codes."""
        zc = self.centre[:, 2]
        reach = self.max_radius
        lo, hi = np.searchsorted(zc, z - reach), np.searchsorted(zc, z + reach, side="right")
        r = self.radius[lo:hi]
        dz = zc[lo:hi] - z
        keep = np.abs(dz) < r
        rho = np.sqrt(r[keep] ** 2 - dz[keep] ** 2)
        return self.centre[lo:hi][keep, :2], rho, self.code[lo:hi][keep]


def tube(points, radii, code: int) -> Spheres:
    """Spheres swept along a polyline (points (m, 3)), the radius interpolated between its points."""
    points = np.asarray(points, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
    return segments(points[:-1], points[1:], radii[:-1], radii[1:], code, step=0.35)


def segments(
    start: np.ndarray,
    end: np.ndarray,
    r_start: np.ndarray,
    r_end: np.ndarray,
    code: int,
    step: float = 0.5,
    min_step: float = 0.3,
) -> Spheres:
    """Spheres along many straight segments at once (vectorised), radius interpolated from start to end;
    spaced `step` x the smaller radius, at least `min_step` mm."""
    seg = end - start
    length = np.linalg.norm(seg, axis=1)
    spacing = np.maximum(step * np.minimum(r_start, r_end), min_step)
    n = np.maximum(np.ceil(length / spacing).astype(int), 1) + 1
    which = np.repeat(np.arange(len(seg)), n)
    first = np.repeat(np.cumsum(n) - n, n)
    t = (np.arange(len(which)) - first) / (n[which] - 1)
    centre = start[which] + seg[which] * t[:, None]
    radius = r_start[which] + (r_end[which] - r_start[which]) * t
    return Spheres.concat([Spheres(centre, radius, np.full(len(radius), code, np.uint8))])


def _uncovered(centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Indices of the disks not contained in another one (a tube cut by a slice is many nested disks)."""
    if len(radius) < 2 or len(radius) > 2000:
        return np.arange(len(radius))
    d = np.sqrt(((centre[:, None, :] - centre[None, :, :]) ** 2).sum(-1))
    inside = d + radius[:, None] <= radius[None, :]  # [i, j]: disk i lies in disk j
    order = np.arange(len(radius))
    same = (d == 0) & (radius[:, None] == radius[None, :])  # identical disks: keep the first
    inside &= ~same | (order[:, None] > order[None, :])
    return np.flatnonzero(~inside.any(axis=1))


REACH_BUCKETS = np.array([1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181, 256, 362, 512, 1024])


def rasterise_disks(
    grid: SliceGrid, centre: np.ndarray, radius: np.ndarray, soft: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels covered by disks (world centres (n, 2), radii mm): flat indices, coverage in (0, 1], disk index.

    Hard disks cover the pixels whose centre lies inside; soft disks give an anti-aliased coverage and
    keep sub-pixel disks as faint dots (coverage ~ their area), like partial volume in CT. Disks are
    handled in a few groups of similar size (one stencil per group), not one by one.
    """
    keep = np.arange(len(radius)) if soft else _uncovered(centre, radius)
    px = grid.pixel_mm
    cx = ((centre[keep, 0] - grid.x[0]) / px).astype(np.float32)
    cy = ((centre[keep, 1] - grid.y[0]) / px).astype(np.float32)
    rad = (radius[keep] / px).astype(np.float32)
    ny, nx = grid.shape
    bucket = np.searchsorted(REACH_BUCKETS, np.ceil(rad + (0.5 if soft else 0.0)))
    out_idx, out_w, out_owner = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        r = int(REACH_BUCKETS[b])
        o = np.arange(-r, r + 1, dtype=np.int32)
        iy = np.rint(cy[sel]).astype(np.int32)[:, None, None] + o[None, :, None]
        ix = np.rint(cx[sel]).astype(np.int32)[:, None, None] + o[None, None, :]
        d2 = (iy - cy[sel, None, None]) ** 2 + (ix - cx[sel, None, None]) ** 2
        rs = rad[sel, None, None]
        if soft:
            w = np.clip(rs - np.sqrt(d2) + 0.5, 0.0, 1.0) * np.minimum(1.0, np.pi * rs**2)
            ok = w > 0
        else:
            ok = d2 <= rs**2
        ok &= (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        owner = np.broadcast_to(keep[sel][:, None, None], ok.shape)[ok]
        iy, ix = np.broadcast_arrays(iy, ix)
        out_idx.append(iy[ok].astype(np.int64) * nx + ix[ok])
        out_w.append(w[ok] if soft else np.ones(len(owner), np.float32))
        out_owner.append(owner)
    return np.concatenate(out_idx), np.concatenate(out_w), np.concatenate(out_owner)


def superellipse(
    grid: SliceGrid, cx: float, cy: float, half_x: float, half_front: float, half_back: float, power: float
) -> np.ndarray:
    """Normalised radius^power of a superellipse with different front (y < cy) and back half-depths.

    Separable: two 1D terms broadcast into one 2D sum, so each shape costs one full-slice add.
    """
    tx = (np.abs(grid.x - cx) / half_x) ** power
    dy = grid.y - cy
    ty = (np.abs(dy) / np.where(dy < 0, half_front, half_back)) ** power
    return ty.astype(np.float32)[:, None] + tx.astype(np.float32)[None, :]
