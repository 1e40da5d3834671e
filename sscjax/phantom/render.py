"""Drawing a phantom patient slice by slice: tissue labels, HU, lung and lesion masks, noise and blur.

Each axial slice is drawn alone from the analytic anatomy at its world z, so a volume is generated one
slice at a time (no full-volume temporaries) and any single slice can be redrawn exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sscjax.phantom.anatomy import (
    ABDOMEN,
    AIR,
    APEX_HEIGHT,
    APEX_RADIUS,
    BLOOD,
    CARTILAGE,
    CORTEX,
    CSF,
    DISC,
    FAT,
    FOAM,
    LIVER,
    LUMEN,
    LUNG,
    MARROW,
    MUSCLE,
    TABLE,
    WALL,
    Anatomy,
    Mediastinum,
)
from sscjax.phantom.disease import GG, RET, Disease
from sscjax.phantom.fields import SliceGrid, Spheres, rasterise_disks, superellipse

MEDFAT = 16  # fat inside the thorax (mediastinum, pericardium)
NESTED_LABELS = np.array([AIR, FAT, MUSCLE, MEDFAT], np.uint8)  # by depth: outside, fat, muscle, cavity
HU_OF_LABEL = np.array(
    [-1000, 120, -930, -100, 45, 130, 230, 750, 40, 55, -1000, -850, 60, 30, 10, 85, -95], dtype=np.float32
)
LUNG_TUBE_HU = ((BLOOD, 40.0), (WALL, 30.0), (LUMEN, -990.0))  # vessels, then bronchial walls and air
LUNG_HU = -862.0  # parenchyma, anterior; the dependent (posterior) lung is denser
LUNG_GRAVITY_HU = 28.0
TUBE_ORDER = (MUSCLE, BLOOD, CORTEX, WALL, LUMEN)
BIG_VESSEL_MM = 2.5  # lung vessels this thick also show in the hilar fat
HU_LIMITS = (-1024.0, 3071.0)
TRIANGULAR_STD = float(np.sqrt(2 * (256**2 - 1) / 12))


@dataclass(frozen=True)
class PatientModel:
    """Everything needed to draw any slice of one patient."""

    anatomy: Anatomy
    mediastinum: Mediastinum
    vessels: Spheres
    disease: Disease
    table_y: float  # top of the CT table (the back rests on it)
    table_x: float


@dataclass
class SliceImage:
    """One drawn slice (or the body's box of it)."""

    hu: np.ndarray  # float32 (ny, nx), noise-free, unblurred
    lung: np.ndarray  # bool
    lesion: np.ndarray  # uint8 bits GG | RET
    labels: np.ndarray  # uint8 tissue labels


def _paint(lab: np.ndarray, idx: np.ndarray, code: int, only: int | None = None) -> None:
    """Set the flat pixels `idx` to `code` (only those that hold label `only`, if given)."""
    flat = lab.reshape(-1)
    if only is not None:
        idx = idx[flat[idx] == only]
    flat[idx] = code


def _ellipses(grid: SliceGrid, parts, z: float, grow: float) -> np.ndarray:
    """Union of the heart's ellipsoid cross-sections at z (grown by `grow` mm) as a boolean slice."""
    out = np.zeros(grid.shape, bool)
    for centre, axes, angle in parts:
        a, b, c = axes + grow
        dz = (z - centre[2]) / c
        if abs(dz) >= 1:
            continue
        s = np.sqrt(1 - dz * dz)
        reach = max(a, b) * s
        rows = grid.rows(centre[1] - reach, centre[1] + reach)
        cols = grid.cols(centre[0] - reach, centre[0] + reach)
        dx = (grid.x[cols] - centre[0])[None, :]
        dy = (grid.y[rows] - centre[1])[:, None]
        ca, sa = np.cos(angle), np.sin(angle)
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        out[rows, cols] |= (u / (a * s)) ** 2 + (v / (b * s)) ** 2 <= 1
    return out


def _spine(lab: np.ndarray, an: Anatomy, grid: SliceGrid, z: float) -> None:
    """Vertebral body (cortex, cancellous bone) or disc, spinal canal, posterior arch and processes."""
    y_vb, r_vb = an.spine(z)
    rows = grid.rows(y_vb - r_vb - 2, y_vb + r_vb + 60)
    cols = grid.cols(an.x_mid - 45, an.x_mid + 45)
    sub = lab[rows, cols]
    dx = (grid.x[cols] - an.x_mid)[None, :]
    yy = grid.y[rows][:, None]
    d2 = dx**2 + (yy - y_vb) ** 2
    bone = an.in_vertebra(z)
    if bone:
        sub[d2 <= r_vb**2] = MARROW
        sub[(d2 <= r_vb**2) & (d2 > (r_vb - 1.6) ** 2)] = CORTEX
    else:
        sub[d2 <= r_vb**2] = DISC
    yc = y_vb + r_vb + 8.5
    dc2 = dx**2 + (yy - yc) ** 2
    sub[(dc2 <= 12.5**2) & (yy > y_vb + r_vb - 4)] = CORTEX
    if bone:
        sub[(np.abs(yy - yc + 1) < 4.5) & (np.abs(dx) > 9) & (np.abs(dx) < 30)] = CORTEX
    if ((z - an.vertebra_phase - 8.0) / an.vertebra_pitch) % 1.0 > 0.35:
        sub[(np.abs(dx) < 3.5) & (yy > yc + 9) & (yy < yc + 38)] = CORTEX
    sub[dc2 <= 7.0**2] = CSF


def _sternum(lab: np.ndarray, an: Anatomy, grid: SliceGrid, z: float) -> None:
    """Manubrium (wide, upper chest) and sternal body in front, from above L1 to below the domes."""
    if not an.dome_r - 30 < z < an.levels[0] + 30:
        return
    _, front, _ = an.cavity(z)
    cy = an.y0 - front - an.rib_t / 2
    half_x = 22.0 if z > an.carina + 5 else 13.0
    half_y = an.rib_t / 2 + 1.0
    rows, cols = grid.rows(cy - half_y, cy + half_y), grid.cols(an.x_mid - half_x, an.x_mid + half_x)
    e = ((grid.x[cols] - an.x_mid)[None, :] / half_x) ** 2 + ((grid.y[rows] - cy)[:, None] / half_y) ** 2
    sub = lab[rows, cols]
    sub[e <= 1] = CORTEX
    sub[e <= 0.55] = MARROW


def _scapulae(lab: np.ndarray, an: Anatomy, grid: SliceGrid, z: float) -> None:
    """Shoulder blades: thin bony plates on the back of the upper ribs, narrowing to their lower tip."""
    z_lo, z_hi = an.carina - 75.0, an.apex_r + 25.0
    if not z_lo < z < z_hi:
        return
    a, _, back = an.rib_outer(z)
    rows = grid.rows(an.y0 + 0.25 * back, np.inf)
    sub_grid = SliceGrid(grid.x, grid.y[rows])
    plate = (superellipse(sub_grid, an.x_mid, an.y0, a + 3, 1.0, back + 3, an.power) > 1) & (
        superellipse(sub_grid, an.x_mid, an.y0, a + 8, 1.0, back + 8, an.power) <= 1
    )
    tip = np.sqrt((z - z_lo) / (z_hi - z_lo))
    dx = np.abs(grid.x - an.x_mid)
    plate &= ((dx > a * (0.75 - 0.4 * tip)) & (dx < a * (0.8 + 0.15 * tip)))[None, :]
    sub = lab[rows]
    sub[plate & (sub != AIR)] = CORTEX


def _ribs(lab: np.ndarray, an: Anatomy, grid: SliceGrid, z: float, ring: np.ndarray, rho_c: np.ndarray) -> None:
    """Ribs in the band between the cavity and the rib outline: oblique (lower in front), cartilage at the front."""
    if z > an.apex_r + 8:
        return
    iy, ix = np.nonzero(ring)
    dx = grid.x[ix] - an.x_mid
    dy = grid.y[iy] - an.y0
    sin_t = dy / np.maximum(np.hypot(dx, dy), 1e-6)
    phase = ((z + an.rib_drop * (1 - sin_t) / 2 - an.rib_phase) / an.rib_pitch) % 1.0
    _y_vb, r_vb = an.spine(z)
    a, _, _ = an.cavity(z)
    rib = (phase < 0.36) & ~((dy > 0) & (np.abs(dx) < r_vb + 9))
    inner = (rho_c[iy, ix] ** (1 / an.power) - 1) * a < 1.6
    cortex = (phase < 0.07) | (phase > 0.29) | inner
    cartilage = (dy < 0) & (np.abs(dx) < 0.32 * a)
    flat = lab.reshape(-1)
    idx = iy * lab.shape[1] + ix
    flat[idx[rib & cartilage]] = CARTILAGE
    flat[idx[rib & ~cartilage & cortex]] = CORTEX
    flat[idx[rib & ~cartilage & ~cortex]] = MARROW


def _interp_matrix(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Linear-interpolation weights (len(fine), len(coarse)) from coarse to fine positions."""
    w = np.zeros((len(fine), len(coarse)), np.float32)
    pos = np.clip(np.interp(fine, coarse, np.arange(len(coarse))), 0, len(coarse) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(coarse) - 2) if len(coarse) > 1 else np.zeros(len(fine), int)
    frac = pos - lo
    rows = np.arange(len(fine))
    w[rows, lo] = 1 - frac
    if len(coarse) > 1:
        w[rows, lo + 1] += frac
    return w


def _lesions(
    model: PatientModel, grid: SliceGrid, z: float, lung: np.ndarray, rho_c: np.ndarray, force: str | None
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """Ground-glass and reticulation regions (inside the lung bounding box) and the GG extent excess."""
    an, dis = model.anatomy, model.disease
    if force is None and dis.healthy:
        return None
    rr, cc = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    if len(rr) == 0:
        return None
    box = (slice(rr[0], rr[-1] + 1), slice(cc[0], cc[-1] + 1))
    lung_box = lung[box]
    if force is not None:
        full = lung_box.copy()
        none = np.zeros_like(full)
        excess = np.full(full.shape, 0.4, np.float32)
        return box, excess, (full if force == "gg" else none), (full if force == "ret" else none)
    step = max(1, round(3.0 / grid.pixel_mm))
    ys, xs = grid.y[box[0]], grid.x[box[1]]
    yc, xc = ys[::step], xs[::step]
    a, f, b = an.cavity(z)
    depth = (1 - np.clip(rho_c[box][::step, ::step], 0, 1) ** (1 / an.power)) * (a + 0.5 * (f + b)) / 2
    gg_c, ret_c = dis.extent(an, z, xc, yc, depth)
    if gg_c.max() <= 0 and ret_c.max() <= 0:
        return None
    wy, wx = _interp_matrix(ys, yc), _interp_matrix(xs, xc)
    gg_e = wy @ gg_c.astype(np.float32) @ wx.T
    ret_e = wy @ ret_c.astype(np.float32) @ wx.T
    return box, gg_e, (gg_e > 0) & lung_box, (ret_e > 0) & lung_box


def _put(lab: np.ndarray, mask: np.ndarray, code: int) -> None:
    """lab[mask] = code, as wrapping uint8 arithmetic (several times faster than boolean indexing)."""
    step = np.subtract(np.uint8(code), lab)
    step *= mask
    lab += step


class SliceDrawer:
    """Draws slices of one patient on one pixel grid; the table and the air around are drawn once."""

    def __init__(self, model: PatientModel, grid: SliceGrid):
        self.model, self.grid = model, grid
        labels = np.zeros(grid.shape, np.uint8)
        dy = grid.y - model.table_y
        wide = np.abs(grid.x - model.table_x) < 230.0
        for lo, hi, code in ((0.0, 4.0, TABLE), (4.0, 38.0, FOAM), (38.0, 42.0, TABLE)):
            labels[np.ix_((dy >= lo) & (dy < hi), wide)] = code
        self.labels, self.hu = labels, HU_OF_LABEL[labels]

    def body_box(self, z: float) -> tuple[slice, slice]:
        """Rows and columns of the body at z (it ends on the table)."""
        an, grid = self.model.anatomy, self.grid
        half_x, front, back = an.body(z)
        return (
            grid.rows(an.y0 - front - 1, min(an.y0 + back + 1, self.model.table_y - 1e-6)),
            grid.cols(an.x_mid - half_x - 1, an.x_mid + half_x + 1),
        )

    def draw(self, z: float, force: str | None = None) -> SliceImage:
        """The noise-free slice at world z: HU, tissue labels, lung mask and lesion bits.

        `force` ("gg", "ret", "healthy") replaces the patient's disease inside the lung (texture patches).
        """
        box = self.body_box(z)
        body = _draw_body(self.model, SliceGrid(self.grid.x[box[1]], self.grid.y[box[0]]), z, force)
        labels, hu = self.labels.copy(), self.hu.copy()
        lung = np.zeros(self.grid.shape, bool)
        lesion = np.zeros(self.grid.shape, np.uint8)
        labels[box], hu[box], lung[box], lesion[box] = body.labels, body.hu, body.lung, body.lesion
        return SliceImage(hu, lung, lesion, labels)

    def draw_lung(self, z: float, force: str) -> np.ndarray:
        """Noise-free HU of lung tissue over the whole grid (no other anatomy): parenchyma, vessels and the
        forced pattern ("gg", "ret", "healthy"); for texture patches."""
        an, grid = self.model.anatomy, self.grid
        lung = np.ones(grid.shape, bool)
        rho_c = superellipse(grid, an.x_mid, an.y0, *an.cavity(z), an.power)
        return _lung_hu(self.model, grid, z, lung, rho_c, self.model.vessels.cut(z), force)[0]


def _draw_body(model: PatientModel, grid: SliceGrid, z: float, force: str | None) -> SliceImage:
    """Labels, HU, lung and lesions of the body's box at z."""
    an = model.anatomy
    lab, cavity, ring, rho_c = _wall(an, grid, z)
    below = _below_diaphragm(an, grid, z)
    if below is not None:
        _abdomen(lab, an, grid, cavity & below)
    _put(lab, _lung_domain(an, model.mediastinum, grid, z, cavity, below), LUNG)
    heart = _ellipses(grid, an.heart_parts(), z, 0.0) & cavity
    _put(lab, heart if below is None else heart & ~below, BLOOD)
    vessels = _tubes(lab, model, grid, z)
    _ribs(lab, an, grid, z, ring, rho_c)
    _scapulae(lab, an, grid, z)
    _spine(lab, an, grid, z)
    _sternum(lab, an, grid, z)
    lung = lab == LUNG
    hu = HU_OF_LABEL[lab]
    lung_hu, lesion = _lung_hu(model, grid, z, lung, rho_c, vessels, force)
    hu += lung * (lung_hu - hu)
    return SliceImage(hu, lung, lesion, lab)


def _wall(an: Anatomy, grid: SliceGrid, z: float):
    """Subcutaneous fat, muscle, the rib band and the thoracic cavity (filled with mediastinal fat)."""
    p = an.power
    rho_c = superellipse(grid, an.x_mid, an.y0, *an.cavity(z), p)
    cavity = rho_c <= 1
    ring = (superellipse(grid, an.x_mid, an.y0, *an.rib_outer(z), p) <= 1) & ~cavity
    depth = (
        (superellipse(grid, an.x_mid, an.y0, *an.body(z), p) <= 1).view(np.uint8)
        + (superellipse(grid, an.x_mid, an.y0, *an.muscle(z), p) <= 1).view(np.uint8)
        + cavity.view(np.uint8)
    )
    return NESTED_LABELS[depth], cavity, ring, rho_c


def _below_diaphragm(an: Anatomy, grid: SliceGrid, z: float) -> np.ndarray | None:
    """Where the slice lies under the diaphragm (None: nowhere, above the right dome)."""
    return z < an.diaphragm_surface(grid.x, grid.y) if z < an.dome_r + 1 else None


def _abdomen(lab: np.ndarray, an: Anatomy, grid: SliceGrid, abdomen: np.ndarray) -> None:
    """Liver (right) and other upper-abdominal tissue below the diaphragm."""
    liver = grid.x[None, :] < an.x_mid + an.liver_split - 0.3 * (grid.y[:, None] - an.y0)
    _put(lab, abdomen & liver, LIVER)
    _put(lab, abdomen & ~liver, ABDOMEN)


def lung_domain(an: Anatomy, med: Mediastinum, grid: SliceGrid, z: float) -> np.ndarray:
    """Where the lungs are on a slice (a boolean mask); used to spread the vessel trees through them."""
    cavity = superellipse(grid, an.x_mid, an.y0, *an.cavity(z), an.power) <= 1
    return _lung_domain(an, med, grid, z, cavity, _below_diaphragm(an, grid, z))


def _lung_domain(
    an: Anatomy, med: Mediastinum, grid: SliceGrid, z: float, cavity: np.ndarray, below: np.ndarray | None
) -> np.ndarray:
    """The cavity minus the midline band, spine, heart, the tubes' keep-out zones; above the diaphragm,
    inside the apical caps."""
    lung = cavity.copy() if below is None else cavity & ~below
    dx2 = ((grid.x - an.x_mid) ** 2).astype(np.float32)
    lung &= dx2[None, :] > (an.mediastinum_half_width(grid.y, z) ** 2).astype(np.float32)[:, None]
    y_vb, r_vb = an.spine(z)
    lung &= dx2[None, :] + ((grid.y - y_vb) ** 2).astype(np.float32)[:, None] > (r_vb + 6) ** 2
    for (xa, ya), apex, side in zip(an.apex_centres(), (an.apex_r, an.apex_l), (-1, 1)):
        reach = (apex - z) / APEX_HEIGHT
        if reach < 8:
            cap = ((grid.x - xa) ** 2).astype(np.float32)[None, :] + ((grid.y - ya) ** 2).astype(np.float32)[
                :, None
            ] <= APEX_RADIUS**2 * max(reach, 0)
            lung &= cap | ((grid.x - an.x_mid) * side < 0)[None, :]
    lung &= ~_ellipses(grid, an.heart_parts(), z, an.pericardial_fat)
    centre, rho, _ = med.keep_out.cut(z)
    lung.reshape(-1)[rasterise_disks(grid, centre, rho)[0]] = False
    return lung


def _tubes(
    lab: np.ndarray, model: PatientModel, grid: SliceGrid, z: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the mediastinal tubes and the thick lung vessels' hilar parts; returns the lung tubes' disks."""
    centre, rho, code = model.mediastinum.tubes.cut(z)
    for c in TUBE_ORDER:
        sel = code == c
        if sel.any():
            _paint(lab, rasterise_disks(grid, centre[sel], rho[sel])[0], c)
    vessels = model.vessels.cut(z)
    big = (vessels[1] >= BIG_VESSEL_MM) & (vessels[2] == BLOOD)
    _paint(lab, rasterise_disks(grid, vessels[0][big], vessels[1][big])[0], BLOOD, only=MEDFAT)
    return vessels


def _lung_hu(
    model: PatientModel, grid: SliceGrid, z: float, lung: np.ndarray, rho_c: np.ndarray, vessels, force: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Lung HU (gravity gradient, lesions, partial-volume vessels) on the whole box, and the lesion bits."""
    an = model.anatomy
    gravity = LUNG_HU + LUNG_GRAVITY_HU * np.clip((grid.y - an.y0) / an.cav_back, -1, 1).astype(np.float32)
    lung_hu = np.repeat(gravity[:, None], grid.shape[1], axis=1)
    lesion = np.zeros(grid.shape, np.uint8)
    found = _lesions(model, grid, z, lung, rho_c, force)
    if found is not None:
        box, gg_excess, gg, ret = found
        lesion[box] = gg * np.uint8(GG) | ret * np.uint8(RET)
        lung_hu[box] = model.disease.shade(
            lung_hu[box], z, grid.x[box[1]], grid.y[box[0]], gg_excess, gg, ret, grid.pixel_mm
        )
    centre, rho, code = vessels
    idx, w, owner = rasterise_disks(grid, centre, rho, soft=True)
    for c, value in LUNG_TUBE_HU:
        mine = code[owner] == c
        if mine.any():
            frac = np.zeros(lung_hu.size, np.float32)
            np.maximum.at(frac, idx[mine], w[mine])
            lung_hu += frac.reshape(lung_hu.shape) * (value - lung_hu)
    return lung_hu, lesion


def _kernel(sigma_px: float) -> np.ndarray:
    """A 1D Gaussian truncated at 2 sigma (at least 3 taps), summing to 1."""
    radius = max(1, int(np.ceil(2 * sigma_px)))
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2).astype(np.float32)
    return w / w.sum()


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur (edges repeated) as a few shifted multiply-adds: faster than ndimage here."""
    w = _kernel(sigma_px)
    radius = len(w) // 2
    for axis in (0, 1):
        pad = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = image.shape[axis]
        out = pad[(slice(0, n), slice(None)) if axis == 0 else (slice(None), slice(0, n))] * w[0]
        for k in range(1, 2 * radius + 1):
            out += pad[(slice(k, k + n), slice(None)) if axis == 0 else (slice(None), slice(k, k + n))] * w[k]
        image = out
    return image


def noisy(hu: np.ndarray, rng: np.random.Generator, noise_hu: float, blur_px: float) -> np.ndarray:
    """Reconstruction blur and slightly correlated noise of std `noise_hu`, rounded to whole HU.

    The noise is the sum of two uniform random bytes (triangular, std 104.5) which the blur turns
    near-Gaussian; far cheaper than normal variates.
    """
    kernel = _kernel(blur_px)
    u = np.frombuffer(rng.bytes(2 * hu.size), np.int8).reshape(2, *hu.shape)
    out = np.add(u[0], u[1], dtype=np.int16).astype(np.float32)
    out *= np.float32(noise_hu / float(np.sum(kernel**2)) / TRIANGULAR_STD)
    out += hu
    return np.clip(np.rint(_blur(out, blur_px)), *HU_LIMITS)
