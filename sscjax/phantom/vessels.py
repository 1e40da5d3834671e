"""Pulmonary vessel trees: tapering branches that fill each lung from its hilum, densest near the hilum.

A tree is grown by recursive splitting of target points sampled in the lung: each branch heads toward
the centroid of its targets, then the targets split in two across their principal axis. Radii follow
Murray's law (r^3 shared between the children in proportion to their targets), so the branches taper
from ~9 mm at the hilum to ~1 mm near the pleura. The thicker arteries run beside a bronchus (an air
lumen with a thin wall), as in the bronchovascular bundles of real lungs.
"""

from __future__ import annotations

import numpy as np

from sscjax.phantom.anatomy import BLOOD, LUMEN, WALL, Anatomy, Mediastinum
from sscjax.phantom.fields import SliceGrid, Spheres, segments
from sscjax.phantom.render import lung_domain

TARGET_GRID_MM = 4.0


def lung_targets(
    anatomy: Anatomy, mediastinum: Mediastinum, rng: np.random.Generator, n: int, z_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points spread uniformly through each lung (right, left): cells of a coarse grid of drawn lung
    slices, chosen at random and jittered inside the cell."""
    a = anatomy
    step = TARGET_GRID_MM
    grid = SliceGrid(
        np.arange(a.x_mid - a.cav_half_x, a.x_mid + a.cav_half_x, step),
        np.arange(a.y0 - a.cav_front, a.y0 + a.cav_back, step),
    )
    per_slice = []
    for z in np.arange(z_range[0] + step / 2, z_range[1], step):
        iy, ix = np.nonzero(lung_domain(a, mediastinum, grid, z))
        per_slice.append(np.column_stack([grid.x[ix], grid.y[iy], np.full(len(ix), z)]))
    cells = np.concatenate(per_slice)
    out = []
    for right in (True, False):
        side = cells[(cells[:, 0] < a.x_mid) == right]
        pick = side[rng.choice(len(side), size=n, replace=len(side) < n)]
        out.append(pick + rng.uniform(-step / 2, step / 2, size=pick.shape))
    return out[0], out[1]


def grow_tree(
    root: np.ndarray, targets: np.ndarray, root_radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Branches (start, end, start radius, end radius) of a tree from `root` that reaches every target."""
    starts, ends, r0s, r1s = [], [], [], []
    n_all = len(targets)
    stack = [(np.asarray(root, dtype=np.float64), np.arange(n_all), root_radius)]
    while stack:
        start, idx, radius = stack.pop()
        pts = targets[idx]
        if len(idx) == 1:
            starts.append(start)
            ends.append(pts[0])
            r0s.append(radius)
            r1s.append(radius * 0.8)
            continue
        centroid = pts.mean(axis=0)
        end = start + (centroid - start) * rng.uniform(0.4, 0.65)
        starts.append(start)
        ends.append(end)
        r0s.append(radius)
        r1s.append(radius * 0.97)
        centred = pts - centroid
        _, vectors = np.linalg.eigh(centred.T @ centred)
        side = centred @ vectors[:, -1] > 0
        if side.all() or not side.any():
            side = np.arange(len(idx)) < len(idx) // 2
        for part in (idx[side], idx[~side]):
            stack.append((end, part, radius * (len(part) / len(idx)) ** (1 / 3)))
    return np.array(starts), np.array(ends), np.array(r0s), np.array(r1s)


BRONCHUS_MIN_ARTERY_MM = 1.8


def bronchi_beside(start: np.ndarray, end: np.ndarray, r0: np.ndarray, r1: np.ndarray) -> Spheres:
    """Bronchi (wall and lumen) alongside the artery branches thicker than BRONCHUS_MIN_ARTERY_MM."""
    keep = r0 >= BRONCHUS_MIN_ARTERY_MM
    start, end, r0, r1 = start[keep], end[keep], r0[keep], r1[keep]
    direction = end - start
    side = np.cross(direction, [0.0, 0.0, 1.0])
    flat = np.linalg.norm(side, axis=1) < 1e-6 * np.maximum(np.linalg.norm(direction, axis=1), 1e-9)
    side[flat] = [1.0, 0.0, 0.0]
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    lumen0, lumen1 = 0.7 * r0, 0.7 * r1
    wall0, wall1 = lumen0 + 0.3 + 0.25 * lumen0, lumen1 + 0.3 + 0.25 * lumen1
    shift0, shift1 = (r0 + wall0 + 0.5)[:, None] * side, (r1 + wall1 + 0.5)[:, None] * side
    return Spheres.concat(
        [
            segments(start + shift0, end + shift1, wall0, wall1, code=WALL),
            segments(start + shift0, end + shift1, lumen0, lumen1, code=LUMEN),
        ]
    )


def vessel_trees(
    anatomy: Anatomy, mediastinum: Mediastinum, rng: np.random.Generator, leaves: int, z_range: tuple[float, float]
) -> Spheres:
    """Arteries from both hila with their bronchi, and veins from the four pulmonary veins, as spheres
    (codes BLOOD, WALL, LUMEN)."""
    parts = []
    for side, targets in enumerate(lung_targets(anatomy, mediastinum, rng, 2 * leaves, z_range)):
        arteries = grow_tree(mediastinum.artery_roots[side], targets[:leaves], 9.0 * anatomy.size, rng)
        parts += [segments(*arteries, code=BLOOD), bronchi_beside(*arteries)]
        veins = sorted(
            (v for v in mediastinum.vein_roots if (v[0] < anatomy.x_mid) == (side == 0)), key=lambda v: -v[2]
        )
        vt = targets[leaves:]
        upper = vt[:, 2] > np.mean([v[2] for v in veins])
        for vein, part in zip(veins, (vt[upper], vt[~upper])):
            if len(part):
                parts.append(segments(*grow_tree(vein, part, 6.0 * anatomy.size, rng), code=BLOOD))
    return Spheres.concat(parts)
