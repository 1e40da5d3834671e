"""Replacement heat maps of trained S-Nets on scans and run folders: the settings scaled to the S-Net's input size,
healthy textures from files, the slices of a scan or of a run's validation split, and the files written (maps on the
slice's own grid, segmentations, overlays, calibration). The algorithm itself is `sscjax.heatmaps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from sscjax import runs
from sscjax.configs.snet import AUTHORS_OCCLUSION, ExplainConfig, SNetConfig
from sscjax.domain import HEALTHY_PATTERN, LEVEL_NAMES, SCORES
from sscjax.errors import ConfigError, ModelError
from sscjax.heatmaps import (
    Calibration,
    HeatmapConfig,
    Predict,
    calibrate,
    derived_scores,
    derived_segmentation,
    heatmaps,
    make_delta_fn,
    threshold_candidates,
)
from sscjax.io import atomic_write, remove_partial_writes, write_json

EXPLAIN = "explain"  # the S-Net config's section of heat-map settings


def scaled_config(image_size: int, settings: ExplainConfig = ExplainConfig()) -> HeatmapConfig:
    """The heat-map settings (pixels of a `reference_size` image, the paper's patch 64 / stride 16 at 512 px) at
    the S-Net's input size, over the same field of view."""
    scale = image_size / settings.reference_size
    stride = max(1, round(settings.stride_px * scale))
    patch = stride * max(1, round(settings.patch_px / settings.stride_px))
    fade = max(1, patch * settings.fade_px // settings.patch_px)
    return HeatmapConfig(patch, stride, fade, settings.chunk, settings.occlusion, settings.constant)


def search_thresholds(settings: ExplainConfig) -> np.ndarray:
    """The thresholds (percentage points) a calibration tries."""
    return threshold_candidates(*settings.search, settings.search_step)


def explain_settings(config: SNetConfig, assignments: Sequence[str] = (), **options) -> ExplainConfig:
    """An S-Net run's heat-map settings (`config.explain`) changed by `explain.key=value` assignments, then by the
    `options` (ExplainConfig fields) that are not None."""
    from sscjax.networks import with_changes

    others = [a for a in assignments if not a.startswith(f"{EXPLAIN}.")]
    if others:
        raise ConfigError(
            f"--set {others[0]}: heat maps take {EXPLAIN}.* settings only (the rest is the trained run's)"
        )
    given = {key: value for key, value in options.items() if value is not None}
    return with_changes(config, assignments, {EXPLAIN: given}).explain


def healthy_texture(pattern: np.ndarray, pattern_mm: float, pixel_mm: float) -> np.ndarray:
    """A healthy-lung texture patch (window units) resampled from its own pixel size to the model's."""
    from scipy import ndimage

    factor = pattern_mm / pixel_mm
    if abs(factor - 1) < 1e-3:
        return np.asarray(pattern, np.float32)
    return ndimage.zoom(np.asarray(pattern, np.float32), factor, order=1, mode="mirror", grid_mode=True)


def ensemble_predict(predicts: list[Predict]) -> Predict:
    """The mean of several S-Nets' outputs, itself a jittable predict function."""
    if len(predicts) == 1:
        return predicts[0]
    return lambda x: cast(jax.Array, sum(p(x) for p in predicts)) / len(predicts)


@dataclass
class SliceExplanation:
    """One slice's heat maps at the model's input size, its S-Net scores and the scores derived from the maps."""

    maps: np.ndarray  # (S, S, 3) Delta P, percentage points
    lung: np.ndarray  # (S, S) bool
    scores: np.ndarray  # (3,) S-Net output in %
    derived: np.ndarray  # (3,) derived area scores in %
    segmentation: np.ndarray  # (S, S, 3) bool: lung pixels with Delta P below the threshold
    threshold: np.ndarray  # (3,)


def explain_slices(
    predict: Predict,
    images: np.ndarray,
    lungs: np.ndarray,
    texture: np.ndarray,
    cfg: HeatmapConfig,
    threshold: float | np.ndarray,
) -> list[SliceExplanation]:
    """Heat maps, S-Net scores and derived scores of (N, S, S) model-input slices (window units)."""
    thresholds = np.broadcast_to(np.asarray(threshold, np.float64), (len(SCORES),)).copy()
    delta_fn = make_delta_fn(predict, images.shape[1:], cfg)
    scores = np.asarray(jax.jit(predict)(jnp.asarray(images, jnp.float32)[..., None]))
    out = []
    for image, lung, score in zip(images, lungs, scores):
        maps = heatmaps(predict, image, lung, texture, cfg, delta_fn)
        out.append(
            SliceExplanation(
                maps,
                lung.astype(bool),
                score,
                derived_scores(maps, lung, thresholds),
                derived_segmentation(maps, lung, thresholds),
                thresholds,
            )
        )
    return out


def to_native(maps: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """(S, S, C) maps at the model's size -> (H, W, C) on the slice's own grid (same field of view)."""
    from scipy import ndimage

    if maps.shape[:2] == tuple(shape):
        return maps
    factors = (shape[0] / maps.shape[0], shape[1] / maps.shape[1], 1)
    return ndimage.zoom(maps, factors, order=order, mode="nearest", grid_mode=True)


def write_explanation(
    folder: str | Path,
    name: str,
    exp: SliceExplanation,
    image_hu: np.ndarray,
    lung: np.ndarray,
    geometry,
    scores: tuple[str, ...] = SCORES,
) -> dict:
    """Write one slice's explanation per score into `folder`: the Delta P map (`.mha` with the slice's
    geometry, and `.npy`), the derived segmentation (`.mha`), and a PNG overlay; returns the scores."""
    from sscjax import plots
    from sscjax.data.slices import window
    from sscjax.io import write_image

    folder = Path(folder)
    maps = to_native(exp.maps, image_hu.shape)
    segmentation = to_native(exp.segmentation.astype(np.uint8), image_hu.shape, order=0)
    spacing_yx = tuple(geometry.spacing[1::-1])
    summary = {}
    for p in scores:
        j = SCORES.index(p)
        stem = folder / f"{name}_{p}"
        write_image(f"{stem}_delta.mha", maps[..., j], geometry)
        with atomic_write(f"{stem}_delta.npy") as tmp:
            np.save(tmp, maps[..., j])
        write_image(f"{stem}_derived.mha", segmentation[..., j], geometry)
        title = (
            f"{name} {p}: S-Net {exp.scores[j]:.1f} %, derived {exp.derived[j]:.1f} % (ΔP < {exp.threshold[j]:.1f} pp)"
        )
        plots.heatmap_overlay(
            window(image_hu), maps[..., j], lung, spacing_yx, f"{stem}_overlay.png", title, segmentation[..., j] > 0
        )
        summary[p] = {
            "snet": round(float(exp.scores[j]), 3),
            "derived": round(float(exp.derived[j]), 3),
            "threshold": float(exp.threshold[j]),
        }
    return summary


@dataclass
class ScanExplanation:
    """Heat maps of chosen slices of one scan, with what is needed to write them on the scan's own grid."""

    scan_id: str
    names: list[str]  # "L1".."L5" or "slice<k>"
    slice_index: np.ndarray
    slices_hu: np.ndarray  # (N, H, W)
    lungs: np.ndarray  # (N, H, W)
    geometries: list
    explanations: list[SliceExplanation]
    config: HeatmapConfig
    dicom: dict | None = None  # the DICOM series' identity (`sscjax.io.DICOM_TAGS`), None for other input


def snet_predict(models, bounded: bool = True) -> tuple[Predict, int | None]:
    """The (ensemble) S-Net as one jittable function of model inputs (scores bounded to 0..100 unless not `bounded`:
    the authors' heat maps take the raw outputs), and its input size (None: each slice's own, the authors'
    conventions); ModelError when the runs take different sizes."""
    if not models.snets:
        raise ConfigError("no S-Net to explain: name a run with --snet")
    sizes = {m.input_size for m in models.snets}
    if len(sizes) > 1:
        raise ModelError(
            f"the S-Net runs {', '.join(models.snet_runs)} take different input sizes "
            f"{sorted(sizes, key=str)} (None: the slice's own); the heat maps of an ensemble need one"
        )
    predict = ensemble_predict([m.function(bounded) for m in models.snets])
    return predict, sizes.pop()


def cohort_healthy_pattern(models) -> Path:
    """The healthy-lung texture of the cohort the (first) S-Net was trained on: DATA/patterns/healthy.*."""
    from sscjax.data.cohort import load_cohort

    config = models.snets[0].config
    cohort = load_cohort(config.data_dir, check_scans=False, check_splits=False)
    if HEALTHY_PATTERN not in cohort.pattern_paths:
        raise ConfigError(
            f"{config.data_dir}: has no patterns/{HEALTHY_PATTERN} texture for the heat maps; give one with --healthy"
        )
    return cohort.pattern_paths[HEALTHY_PATTERN]


def read_texture(path: str | Path, pixel_mm: float | None) -> np.ndarray:
    """A healthy-lung texture file (HU, one slice) in window units at the model's pixel size (None: at its own, as
    the authors' code takes its seed)."""
    from sscjax.data.slices import window
    from sscjax.io import read_image

    pattern = read_image(path)
    texture = window(pattern.array[0])
    return texture if pixel_mm is None else healthy_texture(texture, pattern.geometry.spacing[0], pixel_mm)


def texture_pixel_mm(pixel_mm: float, settings: ExplainConfig) -> float | None:
    """The pixel size the healthy texture is resampled to: the model's, or None (its own) in the authors' mode."""
    return None if settings.occlusion == AUTHORS_OCCLUSION else pixel_mm


def saved_threshold(models, settings: ExplainConfig) -> np.ndarray:
    """The calibrated thresholds of the (first) S-Net run, or the settings' threshold before any calibration (the
    authors' mode: always the settings' one threshold, see `ExplainConfig.default_threshold`)."""
    import json

    if models.snet_runs and settings.occlusion != AUTHORS_OCCLUSION:
        path = runs.calibration_dir(models.snet_runs[0]) / runs.CALIBRATION_FILE
        if path.is_file():
            return np.asarray(json.loads(path.read_text(encoding="utf-8"))["thresholds"], np.float64)
    return np.full(len(SCORES), settings.default_threshold())


def explain_scan(
    scan,
    models,
    *,
    slice_index=None,
    levels_mm=None,
    healthy: str | Path | None = None,
    threshold=None,
    settings: ExplainConfig | None = None,
    lung: np.ndarray | None = None,
) -> ScanExplanation:
    """Heat maps of a scan's five cascade slices (or of `slice_index`), for the S-Net (ensemble) of `models`, with
    `settings` (default: the S-Net run's), `threshold` (default: the run's calibration, else the settings') and
    the scan's `lung` mask (default: computed, `sscjax.lung.lung_mask`)."""
    from sscjax import cascade
    from sscjax.data.slices import resize_slices
    from sscjax.io import scan_id
    from sscjax.lung import lung_mask
    from sscjax.snet import prepare_slices

    settings = settings or models.snets[0].config.explain
    predict, size = snet_predict(models, bounded=settings.occlusion != AUTHORS_OCCLUSION)
    if slice_index is None:
        result = cascade.run_cascade(scan, models, levels_mm, lung=lung)
        index, lungs, names = result.slice_index, result.lungs, list(LEVEL_NAMES)
    else:
        index = np.asarray(slice_index, int)
        bad = index[(index < 0) | (index >= scan.n_slices)]
        if bad.size:
            raise ConfigError(f"{scan.source}: slice index {bad.tolist()} outside 0..{scan.n_slices - 1}")
        lungs, names = (lung_mask(scan) if lung is None else lung)[index], [f"slice{k}" for k in index]
    slices_hu = scan.array[index]
    images = prepare_slices(slices_hu, size)[..., 0]
    width = images.shape[-1]
    pixel_mm = scan.geometry.spacing[0] * scan.shape[2] / width
    texture = read_texture(healthy or cohort_healthy_pattern(models), texture_pixel_mm(pixel_mm, settings))
    cfg = scaled_config(width, settings)
    lungs_model = lungs.astype(bool) if size is None else resize_slices(lungs.astype(np.float32), size, order=0) > 0.5
    threshold = saved_threshold(models, settings) if threshold is None else threshold
    explanations = explain_slices(predict, images, lungs_model, texture, cfg, threshold)
    return ScanExplanation(
        scan_id(scan.source),
        names,
        index,
        slices_hu,
        lungs,
        [scan.geometry.slice_geometry(int(k)) for k in index],
        explanations,
        cfg,
        scan.dicom,
    )


def write_scan_explanation(found: ScanExplanation, out_dir: str | Path, scores: tuple[str, ...] = SCORES) -> Path:
    """Write every slice's maps, segmentations and overlays into OUT/<scan_id>/explain/, and explain.json."""
    folder = Path(out_dir) / found.scan_id / "explain"
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(folder)
    slices: list[dict] = []
    summary = {"scan": found.scan_id, "dicom": found.dicom, "heatmap": vars(found.config), "slices": slices}
    for name, k, exp, image, lung, geometry in zip(
        found.names, found.slice_index, found.explanations, found.slices_hu, found.lungs, found.geometries
    ):
        written = write_explanation(folder, name, exp, image, lung, geometry, scores)
        slices.append({"name": name, "slice_index": int(k), "patterns": written})
    write_json(folder / "explain.json", summary)
    return folder


# ---------------------------------------------------------------- calibration on validation data


def _slice_maps(
    images: np.ndarray,
    lungs: np.ndarray,
    predict: Predict,
    texture: np.ndarray,
    cfg: HeatmapConfig,
    delta_fn: Callable,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """(N, H, W, 3) Delta P maps of the slices, one compiled `delta_fn` for all; `progress(done, N)` after each."""
    maps = []
    for i, (image, lung) in enumerate(zip(images, lungs)):
        maps.append(heatmaps(predict, image, lung, texture, cfg, delta_fn))
        if progress:
            progress(i + 1, len(images))
    return np.stack(maps)


def _write_calibration(
    run_dir: Path,
    split: str,
    patients: list[str],
    n_slices: int,
    result: Calibration,
    scores: np.ndarray,
    cfg: HeatmapConfig,
) -> Path:
    """The run's calibration folder with the scatter plot of derived against S-Net scores (the paper's Fig. 7)
    and calibration.json (the thresholds, their fit and the heat-map settings they hold for)."""
    from sscjax import plots

    folder = runs.calibration_dir(run_dir)
    plots.calibration_scatter(result.derived, scores, result.thresholds, result.r2, folder / "calibration.png")
    record = {
        "split": split,
        "patients": patients,
        "n_slices": n_slices,
        "thresholds": result.thresholds.tolist(),
        "mae": result.mae,
        "r2": result.r2,
        "patterns": list(SCORES),
        "heatmap": vars(cfg),
    }
    write_json(folder / runs.CALIBRATION_FILE, record)
    return folder


def calibrate_run(
    run_dir: str | Path,
    split: str = "valid",
    healthy: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    settings: ExplainConfig | None = None,
    patients: int | None = None,
) -> tuple[Calibration, Path]:
    """Choose an S-Net run's heat-map thresholds on its validation (or test) level slices, with `settings` (default:
    the run's), on the split's first `patients` patients (default: all; heat maps of a large network cost seconds a
    slice on a CPU); writes RUN/explain/calibration.json and the scatter plot of derived against S-Net scores (the
    paper's Fig. 7)."""
    from sscjax import cascade, snet
    from sscjax.data.slices import load_slices

    run_dir = Path(run_dir)
    models = cascade.load_models([], [run_dir])
    config = models.snets[0].config
    settings = settings or config.explain
    if settings.occlusion == AUTHORS_OCCLUSION:
        raise ConfigError(
            f"{run_dir}: the authors' heat maps take one threshold for all patterns (explain.threshold, their -0.6 pp); "
            "calibration chooses thresholds of the replace and constant maps"
        )
    predict, size = snet_predict(models)
    if size is None:
        raise ConfigError(
            f"{run_dir}: calibration needs slices of one size; this run scores each slice at its own size "
            '(data.conventions = "authors")'
        )
    cohort, ids = runs.split_scans(run_dir, split, config.data_dir)
    ids = ids[:patients] if patients is not None else ids
    if not ids:
        raise ConfigError(f"{run_dir}: its {split!r} split has no patients to calibrate on")
    slices = load_slices(
        cohort, snet.slices_cache(runs.run_workdir(run_dir)), image_size=size, neighbours=False, ids=ids
    )
    pixel_mm = float(np.mean(slices.spacing_yx[:, 1]))
    texture = read_texture(healthy or cohort_healthy_pattern(models), texture_pixel_mm(pixel_mm, settings))
    cfg = scaled_config(size, settings)
    delta_fn = make_delta_fn(predict, (size, size), cfg)
    scores = np.mean([m.score(slices.images, windowed=True) for m in models.snets], axis=0)
    maps = _slice_maps(slices.images, slices.lung, predict, texture, cfg, delta_fn, progress)
    result = calibrate(maps, slices.lung, scores, search_thresholds(settings))
    return result, _write_calibration(run_dir, split, ids, len(slices), result, scores, cfg)
