"""One phantom patient: random anatomy, scan geometry and disease from a seed, drawn into a CT volume."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from sscjax.errors import ConfigError
from sscjax.io import Geometry, Scan
from sscjax.phantom.anatomy import Anatomy, build_mediastinum, sample_anatomy
from sscjax.phantom.disease import GG, RET, sample_disease
from sscjax.phantom.fields import SliceGrid
from sscjax.phantom.presets import Preset, get_preset
from sscjax.phantom.render import PatientModel, SliceDrawer, noisy
from sscjax.phantom.vessels import vessel_trees

REVERSED_SHARE = 0.3
LEVEL_EDGE_MARGIN = 0.05  # levels keep this far (in slices) from a half-slice boundary


@dataclass
class PhantomCase:
    """A generated scan with its exact ground truth."""

    scan_id: str
    scan: Scan  # HU, canonical orientation (z, y, x), float32 holding whole numbers
    lung_mask: np.ndarray  # uint8 (z, y, x) 0/1: both lungs, vessels and lesions included; no trachea/bronchi
    lesion_mask: np.ndarray  # uint8 (z, y, x) bits: 1 ground glass, 2 reticulation (3 both); only inside the lungs
    levels_mm: np.ndarray  # (5,) world z of L1..L5 (mm, L1 highest)
    level_slices: np.ndarray  # (5,) nearest canonical slice of each level
    exact_scores: np.ndarray  # (5, 3) TOT, GG, RET: exact % of the lung area on each level slice
    scores: np.ndarray  # (5, 3) int: exact rounded to 5 % (halves up), like a clinician's Goh score
    stored_reversed: bool  # written with a reversed z direction (read back canonical)
    params: dict = field(default_factory=dict)  # seed and every parameter of the patient (for phantom.json)


@dataclass(frozen=True)
class ScanLayout:
    """Where the scan lies: pixel grid, slice positions, noise."""

    pixel_mm: float
    slice_mm: float
    origin: tuple[float, float, float]
    n_slices: int
    noise_hu: float
    stored_reversed: bool

    def grid(self, matrix: int) -> SliceGrid:
        """The in-plane pixel grid (matrix x matrix)."""
        ax = np.arange(matrix) * self.pixel_mm
        return SliceGrid(self.origin[0] + ax, self.origin[1] + ax)

    def geometry(self) -> Geometry:
        """The canonical geometry (direction identity, slices feet to head)."""
        return Geometry((self.pixel_mm, self.pixel_mm, self.slice_mm), self.origin)


def round_half_up_5(percent: np.ndarray) -> np.ndarray:
    """Clinician-style scores: the exact percentage rounded to a multiple of 5 (halves go up)."""
    return (np.floor(np.asarray(percent) / 5.0 + 0.5) * 5).astype(int)


def area_scores(lung: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """TOT, GG, RET as % of the lung area of one slice (lesion bits counted inside the lung only)."""
    n = int(np.count_nonzero(lung))
    if n == 0:
        return np.zeros(3)
    inside = np.where(lung.astype(bool), lesion, 0)
    counts = [np.count_nonzero(inside), np.count_nonzero(inside & GG), np.count_nonzero(inside & RET)]
    return 100.0 * np.asarray(counts, dtype=np.float64) / n


def _table_y(an: Anatomy, z: np.ndarray) -> float:
    """Top of the table: the back rests on it (slightly flattened) over the scanned range."""
    return float(an.y0 + 0.97 * np.max(an.body(z)[2]))


def _layout(an: Anatomy, preset: Preset, rng: np.random.Generator) -> ScanLayout:
    """Slice spacing and z range (apex plus a few cm to below the lung base), a FOV that holds the body."""
    top = max(an.apex_r, an.apex_l) + rng.uniform(10, 50)
    bottom = an.lowest_lung_z() - rng.uniform(5, 30)
    z = np.linspace(bottom, top, 64)
    half_x, front, _ = an.body(z)
    table_y = _table_y(an, z)
    need = max(2 * (np.max(half_x) + 10), table_y + 12 - (an.y0 - np.max(front) - 12))
    lo = max(preset.pixel_mm[0], need / preset.matrix)
    pixel = float(np.ceil(rng.uniform(lo, max(lo, preset.pixel_mm[1])) * 1000) / 1000)
    fov = pixel * preset.matrix
    margin_x = max(fov - 2 * (np.max(half_x) + 10), 0) / 2
    y_lo, y_hi = an.y0 - np.max(front) - 12, table_y + 12
    margin_y = max(fov - (y_hi - y_lo), 0) / 2
    cx = an.x_mid + rng.uniform(-0.8, 0.8) * margin_x
    cy = (y_lo + y_hi) / 2 + rng.uniform(-0.8, 0.8) * margin_y
    half = (preset.matrix - 1) / 2 * pixel
    slice_mm = round(float(rng.uniform(*preset.slice_mm)), 2)
    n_slices = int(np.floor((top - bottom) / slice_mm)) + 1
    oz = round(bottom, 2)
    for _ in range(20):  # keep every level clear of a half-slice boundary
        frac = ((np.asarray(an.levels) - oz) / slice_mm) % 1.0
        if np.all(np.abs(frac - 0.5) > LEVEL_EDGE_MARGIN):
            break
        oz = round(oz + 0.13 * slice_mm, 2)
    return ScanLayout(
        pixel,
        slice_mm,
        (round(cx - half, 2), round(cy - half, 2), oz),
        n_slices,
        float(rng.uniform(*preset.noise_hu)),
        bool(rng.random() < REVERSED_SHARE),
    )


def build_patient(seed: int, preset: Preset) -> tuple[PatientModel, ScanLayout]:
    """The random patient model and scan layout of a seed (cheap: no voxels drawn yet).

    Anatomy, scan layout, vessel trees and disease draw from separate streams of the seed, so one seed
    gives the same anatomy and disease in every preset (only sampling, vessel detail and texture differ).
    """
    anatomy_rng, layout_rng, vessel_rng, disease_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    an = sample_anatomy(anatomy_rng)
    layout = _layout(an, preset, layout_rng)
    z_top = float(layout.geometry().z_of_index(layout.n_slices - 1))
    med = build_mediastinum(an, z_top, layout.origin[2])
    vessels = vessel_trees(an, med, vessel_rng, preset.vessel_leaves, (an.lowest_lung_z(), max(an.apex_r, an.apex_l)))
    disease = sample_disease(disease_rng, layout.pixel_mm)
    z = np.linspace(layout.origin[2], z_top, 64)
    table_x = an.x_mid + layout_rng.uniform(-10, 10)
    return PatientModel(an, med, vessels, disease, table_y=_table_y(an, z), table_x=table_x), layout


def _params(model: PatientModel, layout: ScanLayout, seed: int) -> dict:
    an, dis = model.anatomy, model.disease
    anatomy = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(an).items()}
    return {
        "seed": int(seed),
        "layout": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(layout).items()},
        "anatomy": anatomy,
        "disease": {
            "healthy": dis.healthy,
            "severity": dis.severity,
            "gg_weight": dis.gg_weight,
            "ret_weight": dis.ret_weight,
            "subpleural_mm": dis.subpleural_mm,
        },
    }


def level_truth(seed: int, preset: str = "small") -> tuple[np.ndarray, np.ndarray]:
    """Level slice indices and exact scores of a patient, drawing only the five level slices (fast)."""
    settings = get_preset(preset)
    with threadpool_limits(1, user_api="blas"):
        model, layout = build_patient(seed, settings)
        drawer = SliceDrawer(model, layout.grid(settings.matrix))
        slices = np.asarray(layout.geometry().nearest_slice(np.asarray(model.anatomy.levels), layout.n_slices))
        images = [drawer.draw(float(layout.geometry().z_of_index(k))) for k in slices]
    return slices, np.stack([area_scores(im.lung, im.lesion) for im in images])


def generate_patient(seed: int, preset: str = "small", scan_id: str = "phantom_000") -> PhantomCase:
    """A synthetic chest CT (canonical orientation, HU) with its lung and lesion masks, levels and scores.

    Deterministic: the same seed (a non-negative integer) and preset give the same patient, voxel for voxel.
    """
    settings = get_preset(preset)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer (got {seed!r})")
    with threadpool_limits(1, user_api="blas"):  # tiny matrix products: threads only contend
        return _generate(seed, settings, scan_id)


def _generate(seed: int, settings: Preset, scan_id: str) -> PhantomCase:
    model, layout = build_patient(seed, settings)
    drawer = SliceDrawer(model, layout.grid(settings.matrix))
    shape = (layout.n_slices, settings.matrix, settings.matrix)
    volume = np.empty(shape, np.float32)
    lung = np.empty(shape, np.uint8)
    lesion = np.empty(shape, np.uint8)
    blur_px = settings.blur_mm / layout.pixel_mm
    geometry = layout.geometry()
    for k in range(layout.n_slices):
        image = drawer.draw(float(geometry.z_of_index(k)))
        volume[k] = noisy(image.hu, np.random.default_rng([seed, k]), layout.noise_hu, blur_px)
        lung[k] = image.lung
        lesion[k] = image.lesion
    levels = np.asarray(model.anatomy.levels, dtype=np.float64)
    slices = np.asarray(geometry.nearest_slice(levels, layout.n_slices))
    exact = np.stack([area_scores(lung[k], lesion[k]) for k in slices])
    return PhantomCase(
        scan_id,
        Scan(volume, geometry, f"phantom:{settings.name}:{seed}"),
        lung,
        lesion,
        levels,
        slices,
        exact,
        round_half_up_5(exact),
        layout.stored_reversed,
        _params(model, layout, seed),
    )
