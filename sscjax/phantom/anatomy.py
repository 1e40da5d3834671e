"""Chest anatomy of one phantom patient: landmarks that define the Goh levels, shapes as functions of z.

World coordinates (mm, LPS): x toward the patient's left, y toward posterior, z toward the head.
The five levels are tied to structures drawn from the same parameters:
L1 = top of the aortic arch where the great vessels arise, L2 = carina (the trachea splits),
L3 = the superior pulmonary veins joining the left atrium, L5 = 10 mm above the right hemidiaphragm dome,
L4 = halfway between L3 and L5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sscjax.phantom.fields import SliceGrid, Spheres, superellipse, tube

# tissue labels; HU in render.HU_OF_LABEL. Higher codes of tube spheres are painted later (on top).
(AIR, TABLE, FOAM, FAT, MUSCLE, CARTILAGE, MARROW, CORTEX, BLOOD, WALL, LUMEN, LUNG, LIVER, ABDOMEN, CSF, DISC) = range(
    16
)

# cavity shape along the normalised height t = (apex - z) / (apex - right dome): 0 at the apex, 1 at the dome
T_KNOTS = np.array([-0.6, 0.0, 0.12, 0.3, 0.55, 0.8, 1.0, 1.3, 2.2])
WIDTH_PROFILE = np.array([0.56, 0.6, 0.72, 0.85, 0.93, 0.98, 1.0, 1.0, 0.96])
FRONT_PROFILE = np.array([0.55, 0.6, 0.72, 0.85, 0.94, 0.99, 1.0, 1.0, 0.97])
BACK_PROFILE = np.array([0.66, 0.7, 0.8, 0.9, 0.96, 1.0, 1.0, 0.98, 0.94])
APEX_RADIUS, APEX_HEIGHT = 50.0, 45.0  # lung apex: a paraboloid, this radius (mm) this far below the top
LEVEL_QUANTUM_MM = 0.02  # landmarks are multiples of this, so L4 = (L3 + L5) / 2 has two decimals exactly


def _q(value: float) -> float:
    return round(round(value / LEVEL_QUANTUM_MM) * LEVEL_QUANTUM_MM, 2)


@dataclass
class Anatomy:
    """Every number that shapes one patient's chest (mm, world coordinates)."""

    levels: tuple[float, float, float, float, float]
    apex_r: float
    apex_l: float
    dome_r: float
    dome_l: float
    x_mid: float
    y0: float
    size: float
    cav_half_x: float
    cav_front: float
    cav_back: float
    rib_t: float
    muscle_lat: float
    muscle_front: float
    muscle_back: float
    fat: float
    power: float
    trachea_r: float
    trachea_wall: float
    bronchus_r: tuple[float, float]
    bronchus_angle: tuple[float, float]
    bronchus_len: tuple[float, float]
    aorta_r: tuple[float, float, float]  # ascending, arch, descending
    arch_height: float
    pa_r: float
    heart_axes: tuple[float, float]  # in-plane semi-axes of the ventricles
    heart_angle: float
    pericardial_fat: float
    rib_pitch: float
    rib_phase: float
    rib_drop: float
    vertebra_pitch: float
    vertebra_phase: float
    dome_drop: tuple[float, float, float]  # lateral, front, back (mm at the cavity edge)
    liver_split: float

    @property
    def carina(self) -> float:
        """z of the carina (= L2)."""
        return self.levels[1]

    # ---- profiles along z -------------------------------------------------------------------------------
    def t_of(self, z):
        """Normalised height: 0 at the right apex, 1 at the right dome top."""
        return (self.apex_r - np.asarray(z, dtype=np.float64)) / (self.apex_r - self.dome_r)

    def cavity(self, z) -> tuple[Any, Any, Any]:
        """Inner thorax (inside the ribs): half-width, front and back half-depths around (x_mid, y0)."""
        t = self.t_of(z)
        return (
            self.cav_half_x * np.interp(t, T_KNOTS, WIDTH_PROFILE),
            self.cav_front * np.interp(t, T_KNOTS, FRONT_PROFILE),
            self.cav_back * np.interp(t, T_KNOTS, BACK_PROFILE),
        )

    def rib_outer(self, z) -> tuple[Any, Any, Any]:
        """Outer boundary of the rib band around the cavity."""
        a, f, b = self.cavity(z)
        return a + self.rib_t, f + self.rib_t, b + self.rib_t

    def shoulder(self, z):
        """Extra muscle of the shoulder girdle around the upper chest (0 below the carina)."""
        return np.clip((np.asarray(z) - self.carina) / (self.apex_r + 30 - self.carina), 0, 1)

    def muscle(self, z) -> tuple[Any, Any, Any]:
        """Outer boundary of the muscle layer (inside the subcutaneous fat)."""
        a, f, b = self.rib_outer(z)
        s = self.shoulder(z)
        return a + self.muscle_lat + 45 * s, f + self.muscle_front + 8 * s, b + self.muscle_back + 10 * s

    def body(self, z) -> tuple[Any, Any, Any]:
        """Skin: the muscle layer plus subcutaneous fat (thinner on the back the patient lies on)."""
        a, f, b = self.muscle(z)
        return a + self.fat, f + self.fat, b + 0.6 * self.fat

    def spine(self, z):
        """Vertebral body centre y and radius; the body sits in the back of the cavity between the lungs."""
        t = self.t_of(z)
        radius = np.interp(t, [0.0, 1.0, 2.0], [12.5, 17.0, 19.0]) * np.sqrt(self.size)
        _, _, back = self.cavity(z)
        return self.y0 + back - 0.8 * radius, radius

    def in_vertebra(self, z) -> bool:
        """Whether z cuts a vertebral body (True) or an intervertebral disc (False)."""
        return ((z - self.vertebra_phase) / self.vertebra_pitch) % 1.0 > 0.2

    # ---- fixed points of the mediastinum (taken at the carina) ------------------------------------------
    @property
    def trachea_xy(self) -> tuple[float, float]:
        y_vb, r_vb = self.spine(self.carina)
        return self.x_mid - 2.0, float(y_vb - r_vb - 2 * 7.0 - 3.0 - self.trachea_r)

    @property
    def dome_centres(self) -> tuple[float, float, float]:
        """x of the right and left dome tops and their common y."""
        return (self.x_mid - 0.45 * self.cav_half_x, self.x_mid + 0.45 * self.cav_half_x, self.y0 - 0.1 * self.cav_back)

    def _dome_terms(self, x, y):
        """The diaphragm height as (term of x) - (term of y): the higher of two domes, lower toward the back."""
        xr, xl, yd = self.dome_centres
        lat, front, back = self.dome_drop
        dy = np.asarray(y, dtype=np.float64) - yd
        x = np.asarray(x, dtype=np.float64)
        width = 0.55 * self.cav_half_x
        tx = np.maximum(self.dome_r - lat * ((x - xr) / width) ** 2, self.dome_l - lat * ((x - xl) / width) ** 2)
        return tx, np.where(dy < 0, front, back) * (dy / self.cav_back) ** 2

    def diaphragm_surface(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z of the diaphragm on the (len(y), len(x)) grid of a slice (float32)."""
        tx, ty = self._dome_terms(x, y)
        return tx.astype(np.float32)[None, :] - ty.astype(np.float32)[:, None]

    def apex_centres(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(x, y) of the right and left lung apex (toward the back)."""
        ya = self.y0 + 0.15 * self.cav_back
        return (self.x_mid - 0.42 * self.cav_half_x, ya), (self.x_mid + 0.42 * self.cav_half_x, ya)

    def lowest_lung_z(self) -> float:
        """z of the lowest lung point (the posterior costophrenic recess)."""
        a, f, b = self.cavity(self.dome_r)
        grid = SliceGrid(np.linspace(self.x_mid - a, self.x_mid + a, 121), np.linspace(self.y0 - f, self.y0 + b, 121))
        inside = superellipse(grid, self.x_mid, self.y0, a, f, b, self.power) <= 1
        return float(self.diaphragm_surface(grid.x, grid.y)[inside].min())

    # ---- the heart: ventricles, right and left atrium as ellipsoids ------------------------------------
    def heart_parts(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(centre xyz, semi-axes abc, in-plane angle rad) of the ventricles, right atrium and left atrium."""
        l3 = self.levels[2]
        a, b = self.heart_axes
        top, bottom = l3 + 8.0, self.dome_l - 18.0
        _, front, _ = self.cavity(l3 - 30)
        y_la = self.left_atrium_y
        y_v = self.y0 - front + b + 4.0
        ventricles = (
            np.array([self.x_mid + 22 * self.size, y_v, (top + bottom) / 2]),
            np.array([a, b, (top - bottom) / 2]),
            self.heart_angle,
        )
        right_atrium = (
            np.array([self.x_mid - 32 * self.size, y_v + 0.2 * b, l3 - 28]),
            np.array([30.0, 27.0, 30.0]) * self.size,
            0.0,
        )
        left_atrium = (np.array([self.x_mid + 6.0, y_la, l3 - 5.0]), np.array([30.0, 16.0, 20.0]) * self.size, 0.0)
        return [ventricles, right_atrium, left_atrium]

    @property
    def left_atrium_y(self) -> float:
        y_vb, r_vb = self.spine(self.levels[2])
        return float(y_vb - r_vb - 2 * 7.5 - 4.0 - 16.0 * self.size)

    def mediastinum_half_width(self, y, z):
        """Half-width of the midline band between the lungs (mm), narrow in front, wide at the spine."""
        _, front, _ = self.cavity(z)
        y_vb, r_vb = self.spine(z)
        y = np.asarray(y, dtype=np.float64)
        y_front = self.y0 - front
        frac = np.clip((y - y_front) / np.maximum(y_vb - y_front, 1.0), 0.0, 1.0)
        width = 5.0 + 6.0 * np.sqrt(frac)
        return np.where(y > y_vb, np.maximum(width, r_vb + 8.0), width)


def _sample_levels(rng: np.random.Generator, shared: float) -> tuple[float, float, float, float, float]:
    """The five level positions (mm): the carina, then gaps above and below it that all lean the same way
    (`shared`, the patient's build, in 0..1 with some noise each); L4 lies midway between L3 and L5."""

    def gap(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(np.clip(shared + rng.normal(0, 0.15), 0, 1))

    carina = _q(rng.uniform(-360.0, 60.0))
    l1 = _q(carina + gap(25, 40))
    l3 = _q(carina - gap(30, 50))
    l5 = _q(l3 - gap(60, 110))
    return (l1, carina, l3, round((l3 + l5) / 2, 2), l5)


def _sample_trunk(rng: np.random.Generator, size: float, levels: tuple[float, ...]) -> dict[str, Any]:
    """The Anatomy fields of the lungs' extent and the trunk around them: apices, domes, cavity, muscle and fat."""
    dome_r = _q(levels[4] - 10.0)
    apex_r = levels[0] + rng.uniform(28, 50)
    half_x = 128.0 * size * rng.uniform(0.94, 1.06)
    return {
        "apex_r": apex_r,
        "apex_l": apex_r + rng.uniform(-6, 8),
        "dome_r": dome_r,
        "dome_l": dome_r - rng.uniform(8, 25),
        "x_mid": rng.uniform(-15, 15),
        "y0": rng.uniform(-40, 20),
        "cav_half_x": half_x,
        "cav_front": half_x * rng.uniform(0.55, 0.64),
        "cav_back": half_x * rng.uniform(0.64, 0.74),
        "rib_t": rng.uniform(9, 12),
        "muscle_lat": rng.uniform(6, 14),
        "muscle_front": rng.uniform(8, 18),
        "muscle_back": rng.uniform(40, 58),
        "fat": rng.uniform(5, 30),
        "power": rng.uniform(2.1, 2.5),
    }


def _sample_mediastinum(rng: np.random.Generator, size: float) -> dict[str, Any]:
    """The Anatomy fields of the airways, great vessels and heart."""
    return {
        "trachea_r": rng.uniform(8, 10.5),
        "trachea_wall": rng.uniform(1.8, 2.6),
        "bronchus_r": (rng.uniform(6.0, 7.5), rng.uniform(5.0, 6.5)),
        "bronchus_angle": (np.radians(rng.uniform(22, 32)), np.radians(rng.uniform(38, 50))),
        "bronchus_len": (rng.uniform(18, 26), rng.uniform(36, 48)),
        "aorta_r": (rng.uniform(13, 17), rng.uniform(12, 14), rng.uniform(10, 13)),
        "arch_height": rng.uniform(14, 24),
        "pa_r": rng.uniform(12, 15),
        "heart_axes": (rng.uniform(48, 58) * size, rng.uniform(34, 42) * size),
        "heart_angle": np.radians(rng.uniform(25, 45)),
        "pericardial_fat": rng.uniform(2, 7),
    }


def _sample_skeleton(rng: np.random.Generator) -> dict[str, Any]:
    """The Anatomy fields of the ribs, vertebrae, diaphragm domes and liver."""
    return {
        "rib_pitch": rng.uniform(26, 32),
        "rib_phase": rng.uniform(0, 30),
        "rib_drop": rng.uniform(55, 90),
        "vertebra_pitch": rng.uniform(24, 28),
        "vertebra_phase": rng.uniform(0, 28),
        "dome_drop": (rng.uniform(25, 45), rng.uniform(25, 45), rng.uniform(55, 80)),
        "liver_split": rng.uniform(10, 40),
    }


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """One random patient: sizes, landmark gaps and shapes (seeded). The helpers draw from `rng` in a fixed order
    (trunk, mediastinum, skeleton): reordering them would change every phantom of a seed."""
    size = float(np.clip(rng.normal(1.0, 0.08), 0.84, 1.18))
    levels = _sample_levels(rng, rng.normal(0.5, 0.18))
    return Anatomy(
        levels=levels,
        size=size,
        **_sample_trunk(rng, size, levels),
        **_sample_mediastinum(rng, size),
        **_sample_skeleton(rng),
    )


# ---- tubes of the mediastinum, neck and shoulders ------------------------------------------------------
def _bezier(p0, p1, p2, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


@dataclass(frozen=True)
class Mediastinum:
    """The tubes (as spheres, with tissue codes) and the hilum points where the lung vessel trees start."""

    tubes: Spheres  # drawn structures (blood, airway wall, lumen, bone, muscle)
    keep_out: Spheres  # grown copies: lungs stay out of these (mediastinal fat fills the margin)
    artery_roots: tuple[np.ndarray, np.ndarray]  # right, left hilum (x y z)
    vein_roots: tuple[np.ndarray, ...]  # ends of the four pulmonary veins in the hila
    landmarks: dict  # centrelines that define levels: arch, great_vessels, superior_veins, bronchi


@dataclass
class _Tubes:
    """The mediastinum's tubes as they are drawn, and grown copies of the organs the lungs must stay out of."""

    parts: list[Spheres] = field(default_factory=list)
    keep: list[Spheres] = field(default_factory=list)

    def add(self, points, radii, code: int, margin: float = 3.0) -> None:
        """An organ: drawn, and kept clear of lung by `margin` mm."""
        self.parts.append(tube(points, radii, code))
        self.keep.append(tube(points, np.asarray(radii) + margin, code))

    def draw(self, points, radii, code: int) -> None:
        """A structure inside an organ already added (a lumen) or outside the lungs' reach (bone)."""
        self.parts.append(tube(points, radii, code))


def _airways(an: Anatomy, tubes: _Tubes, z_top: float) -> list[np.ndarray]:
    """Trachea down to just above the carina and the two main bronchi, which start inside it and split exactly at
    z = carina: the bronchi's centrelines (right, left)."""
    zc = an.levels[1]
    xt, yt = an.trachea_xy
    rt, wall = an.trachea_r, an.trachea_wall
    split_h = 2.0 * rt
    tubes.add([[xt, yt, z_top], [xt, yt, zc + split_h]], rt + wall, WALL)
    tubes.draw([[xt, yt, z_top], [xt, yt, zc + split_h]], rt, LUMEN)
    bronchi = []
    for side, sign in ((0, -1.0), (1, 1.0)):
        rb, ang, length = an.bronchus_r[side], an.bronchus_angle[side], an.bronchus_len[side]
        offset = rb / np.cos(ang) + 0.4
        p0 = np.array([xt, yt, zc + split_h])
        p1 = np.array([xt + sign * offset, yt, zc])
        direction = np.array([sign * np.sin(ang), 0.12, -np.cos(ang)])
        p2 = p1 + length * direction / np.linalg.norm(direction)
        tubes.add([p0, p1, p2], [rt + wall, rb + wall, rb + wall], WALL)
        tubes.draw([p0, p1, p2], [rt, rb, rb], LUMEN)
        bronchi.append(np.array([p0, p1, p2]))
    return bronchi


def _aorta(an: Anatomy, tubes: _Tubes, z_bottom: float) -> tuple[np.ndarray, np.ndarray]:
    """Ascending aorta (front right), the arch over the left main bronchus passing left of the trachea, and the
    descending aorta: (the ascending aorta's x y, the arch's centreline)."""
    l1, zc, l3 = an.levels[0], an.levels[1], an.levels[2]
    xt, yt = an.trachea_xy
    r_asc, r_arch, r_desc = an.aorta_r
    y_vb, r_vb = an.spine(zc)
    asc = np.array([an.x_mid - 8.0, yt - 45.0])
    dx_desc = 20.0 + 0.2 * r_vb
    desc = np.array([an.x_mid + dx_desc, y_vb - np.sqrt(max((r_vb + r_desc + 4) ** 2 - dx_desc**2, 0.0))])
    z_arch_top = l1 - r_arch  # centreline top; its upper surface (vessel origins) at L1
    z_arch_base = z_arch_top - an.arch_height
    mid = np.array([xt + an.trachea_r + an.trachea_wall + r_arch + 6.0, yt - 4.0])
    ctrl = 2 * mid - (asc + desc) / 2
    path = _bezier(asc, ctrl, desc, 41)
    s = np.linspace(0, 1, 41)
    arch = np.column_stack([path, z_arch_base + an.arch_height * np.sin(np.pi * s)])
    root = [asc[0] + 4.0, asc[1] + 14.0, l3 - 22.0]
    aorta = np.vstack([[root, [asc[0], asc[1], z_arch_base - 10]], arch, [[desc[0] - 4, desc[1], z_bottom - 20]]])
    radii = np.concatenate([[r_asc, r_asc], np.interp(s, [0, 0.5, 1], [r_asc, r_arch, r_desc]), [r_desc]])
    tubes.add(aorta, radii, BLOOD, margin=4.0)
    return asc, arch


def _great_vessels(an: Anatomy, tubes: _Tubes, arch: np.ndarray, z_top: float) -> list[np.ndarray]:
    """Brachiocephalic trunk (with the right carotid and subclavian), left common carotid and left subclavian
    from the top of the arch: the three trunks' centrelines."""
    l1 = an.levels[0]
    xt, yt = an.trachea_xy
    rt = an.trachea_r
    top_i = int(np.argmax(arch[:, 2]))
    origins = [arch[top_i - 11], arch[top_i], arch[top_i + 9]]
    bct_end = np.array([xt - rt - 12.0, yt - 14.0, l1 + 38.0])
    shoulder = [[0.55 * an.cav_half_x, yt - 2.0, l1 + 48.0], [0.95 * an.cav_half_x, yt - 12.0, l1 + 52.0]]
    great_vessels = [
        np.array([origins[0], [origins[0][0] - 9, origins[0][1] - 2, l1 + 12], bct_end]),
        np.array([origins[1], [xt + rt + 6.0, yt - 10.0, l1 + 18], [xt + rt + 8.0, yt - 6.0, z_top]]),
        np.array(
            [origins[2], [xt + rt + 16.0, yt + 4.0, l1 + 26.0], *([an.x_mid + dx, y, z] for dx, y, z in shoulder)]
        ),
    ]
    tubes.add(great_vessels[0], [6.5, 6.5, 6.0], BLOOD)
    tubes.add([bct_end, [xt - rt - 14.0, yt - 8.0, z_top]], 4.0, BLOOD)  # right carotid
    tubes.add([bct_end, *([an.x_mid - dx, y, z] for dx, y, z in shoulder)], 4.5, BLOOD)  # right subclavian
    tubes.add(great_vessels[1], 4.0, BLOOD)  # left common carotid
    tubes.add(great_vessels[2], 5.0, BLOOD)  # left subclavian
    return great_vessels


def _systemic_veins(an: Anatomy, tubes: _Tubes, asc: np.ndarray, z_top: float) -> None:
    """Superior vena cava right of the ascending aorta; the left brachiocephalic vein crossing in front."""
    l1, l3 = an.levels[0], an.levels[2]
    yt = an.trachea_xy[1]
    svc_x, svc_y = asc[0] - an.aorta_r[0] - 11.0, asc[1] + 10.0
    tubes.add([[svc_x, svc_y, l3 - 20.0], [svc_x, svc_y, l1 + 20.0], [svc_x - 6, svc_y + 4, z_top]], 9.0, BLOOD)
    crossing = [
        [svc_x, svc_y, l1 + 20.0],
        [an.x_mid + 10.0, asc[1] - 12.0, l1 + 26.0],
        [an.x_mid + 45.0, yt - 20.0, l1 + 32.0],
        [an.x_mid + 50.0, yt - 14.0, z_top],
    ]
    tubes.add(crossing, 6.0, BLOOD)


def _pulmonary_arteries(an: Anatomy, tubes: _Tubes, asc: np.ndarray, bronchi: list[np.ndarray]) -> tuple:
    """Pulmonary trunk from the right ventricle up to its bifurcation below the carina, arteries to the hila: the
    (right, left) hilum points where the lung artery trees start."""
    zc, l3 = an.levels[1], an.levels[2]
    xt, yt = an.trachea_xy
    fork = np.array([an.x_mid + 12.0, yt - 24.0, zc - 14.0])
    trunk = [[an.x_mid + 24.0, asc[1] - 4.0, l3 - 10.0], [an.x_mid + 20.0, asc[1] + 4.0, zc - 22.0], fork]
    tubes.add(trunk, an.pa_r, BLOOD)
    right_end, left_end = (b[-1] for b in bronchi)
    hilum_r = right_end + np.array([-8.0, -14.0, -6.0])
    hilum_l = left_end + np.array([4.0, -12.0, 10.0])
    tubes.add([fork, [xt - 2.0, yt - 22.0, zc - 20.0], hilum_r], 0.75 * an.pa_r, BLOOD)
    tubes.add([fork, [left_end[0] - 6.0, left_end[1] - 14.0, left_end[2] + 14.0], hilum_l], 0.7 * an.pa_r, BLOOD)
    return hilum_r, hilum_l


def _pulmonary_veins(an: Anatomy, tubes: _Tubes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The superior pair joins the left atrium at L3 (the venous confluence), the inferior pair below: (the four
    veins' ends in the hila, the superior veins' centrelines)."""
    l3 = an.levels[2]
    la_x, la_y = an.x_mid + 6.0, an.left_atrium_y
    vein_roots, superior_veins = [], []
    for dz, dy in ((0.0, -2.0), (-13.0, 6.0)):
        for sign in (-1.0, 1.0):
            start = np.array([la_x + sign * 18.0 * an.size, la_y, l3 + dz])
            end = np.array([la_x + sign * (52.0 + 8 * (sign > 0)) * an.size, la_y + dy, l3 + dz + 1.0])
            tubes.add([start, end], 6.5 * an.size, BLOOD)
            vein_roots.append(end)
            if dz == 0.0:
                superior_veins.append(np.array([start, end]))
    return vein_roots, superior_veins


def _oesophagus_and_clavicles(an: Anatomy, tubes: _Tubes, z_top: float) -> None:
    """The oesophagus behind the trachea, then behind the left atrium to the hiatus; the clavicles from the
    manubrium out to the shoulders."""
    l1, zc, l3 = an.levels[0], an.levels[1], an.levels[2]
    xt, yt = an.trachea_xy
    la_x, la_y = an.x_mid + 6.0, an.left_atrium_y
    ye = yt + an.trachea_r + an.trachea_wall + 8.0
    path = [
        [xt + 3.0, ye, z_top],
        [xt + 4.0, ye, zc - 10],
        [la_x + 2.0, la_y + 16.0 * an.size + 10.0, l3 - 30],
        [an.x_mid + 18.0, la_y + 20.0, an.dome_l - 25.0],
    ]
    tubes.add(path, 7.0, MUSCLE, margin=2.0)
    _, front, _ = an.rib_outer(l1 + 30)
    for sign in (-1.0, 1.0):
        clavicle = [
            [an.x_mid + sign * 22.0, an.y0 - front + 2.0, l1 + 28.0],
            [an.x_mid + sign * 0.6 * an.cav_half_x, an.y0 - front - 4.0, l1 + 40.0],
            [an.x_mid + sign * 1.05 * an.cav_half_x, an.y0 - 0.3 * front, l1 + 52.0],
        ]
        tubes.draw(clavicle, 6.0, CORTEX)


def build_mediastinum(an: Anatomy, z_top: float, z_bottom: float) -> Mediastinum:
    """Trachea and main bronchi, aorta with arch and great vessels, pulmonary trunk and arteries,
    pulmonary veins, SVC and brachiocephalic veins, oesophagus and clavicles."""
    z_top += 20
    tubes = _Tubes()
    bronchi = _airways(an, tubes, z_top)
    asc, arch = _aorta(an, tubes, z_bottom)
    great_vessels = _great_vessels(an, tubes, arch, z_top)
    _systemic_veins(an, tubes, asc, z_top)
    artery_roots = _pulmonary_arteries(an, tubes, asc, bronchi)
    vein_roots, superior_veins = _pulmonary_veins(an, tubes)
    _oesophagus_and_clavicles(an, tubes, z_top)
    return Mediastinum(
        tubes=Spheres.concat(tubes.parts),
        keep_out=Spheres.concat(tubes.keep),
        artery_roots=artery_roots,
        vein_roots=tuple(vein_roots),
        landmarks={"arch": arch, "great_vessels": great_vessels, "superior_veins": superior_veins, "bronchi": bronchi},
    )
